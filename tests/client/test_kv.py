"""KV, txn, compaction and range options of the client, against a real etcd."""

from __future__ import annotations

import pytest

from raftkv.client import Client, Compare, Op, SortOrder, SortTarget
from raftkv.client.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    KeyNotFoundError,
    UnavailableError,
)
from raftkv.client.models import (
    DeleteResult,
    PutResult,
    RangeResult,
    TxnResult,
    prefix_range_end,
)
from tests.etcd_process import EtcdProcess, free_port


async def test_put_get_roundtrip_with_str_and_bytes(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        put = await client.put(prefix + "a", "one")
        await client.put((prefix + "b").encode(), b"\x00\xfftwo")
        got = await client.get(prefix + "a")
        assert got.count == 1 and not got.more
        (kv,) = got.kvs
        assert (kv.key, kv.value) == ((prefix + "a").encode(), b"one")
        assert kv.create_revision == kv.mod_revision == put.header.revision
        assert kv.version == 1 and kv.lease == 0
        assert (await client.get(prefix + "b")).kvs[0].value == b"\x00\xfftwo"
        assert (await client.get(prefix + "missing")).kvs == ()
        assert got.header.cluster_id != 0 and got.header.member_id != 0


async def test_versions_revisions_and_prev_kv(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        first = await client.put(prefix + "k", "v1")
        assert first.prev_kv is None
        second = await client.put(prefix + "k", "v2", prev_kv=True)
        assert second.header.revision == first.header.revision + 1
        assert second.prev_kv is not None and second.prev_kv.value == b"v1"
        (kv,) = (await client.get(prefix + "k")).kvs
        assert kv.version == 2 and kv.create_revision == first.header.revision
        assert kv.mod_revision == second.header.revision
        old = await client.get(prefix + "k", revision=first.header.revision)
        assert old.kvs[0].value == b"v1"


async def test_prefix_range_limit_sort_and_count(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        for name, value in (("c", "1"), ("a", "3"), ("b", "2")):
            await client.put(prefix + name, value)
        await client.put(prefix[:-1] + "0", "outside")  # sorts after the prefix's keys
        everything = await client.get_prefix(prefix)
        assert [kv.key for kv in everything.kvs] == [(prefix + n).encode() for n in "abc"]
        limited = await client.get(prefix, prefix=True, limit=2)
        assert len(limited.kvs) == 2 and limited.more and limited.count == 3
        by_value = await client.get_prefix(
            prefix, sort_order=SortOrder.DESCEND, sort_target=SortTarget.VALUE
        )
        assert [kv.value for kv in by_value.kvs] == [b"3", b"2", b"1"]
        by_creation = await client.get_prefix(
            prefix, sort_target=SortTarget.CREATE, sort_order=SortOrder.ASCEND
        )
        assert [kv.key[-1:] for kv in by_creation.kvs] == [b"c", b"a", b"b"]
        counted = await client.get(prefix, prefix=True, count_only=True)
        assert counted.count == 3 and counted.kvs == ()
        keys = await client.get(prefix, prefix=True, keys_only=True)
        assert len(keys.kvs) == 3 and all(kv.value == b"" for kv in keys.kvs)
        half_open = await client.get(prefix + "a", range_end=prefix + "c")
        assert [kv.key[-1:] for kv in half_open.kvs] == [b"a", b"b"]
        stale_ok = await client.get(prefix + "a", serializable=True)
        assert stale_ok.kvs[0].value == b"3"


async def test_revision_filters(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        revisions = [(await client.put(prefix + n, n)).header.revision for n in "xyz"]
        older = await client.get_prefix(prefix)
        assert [kv.create_revision for kv in older.kvs] == revisions
        before_z = await client.get(prefix, prefix=True, max_create_revision=revisions[2] - 1)
        assert [kv.key[-1:] for kv in before_z.kvs] == [b"x", b"y"]
        after_x = await client.get(prefix, prefix=True, min_mod_revision=revisions[1])
        assert [kv.key[-1:] for kv in after_x.kvs] == [b"y", b"z"]


async def test_delete_single_range_and_prefix(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        for name in "abcd":
            await client.put(prefix + name, name)
        one = await client.delete(prefix + "a", prev_kv=True)
        assert one.deleted == 1 and [kv.value for kv in one.prev_kvs] == [b"a"]
        ranged = await client.delete(prefix + "b", range_end=prefix + "d")
        assert ranged.deleted == 2 and ranged.prev_kvs == ()
        assert [kv.key[-1:] for kv in (await client.get_prefix(prefix)).kvs] == [b"d"]
        rest = await client.delete(prefix, prefix=True)
        assert rest.deleted == 1
        assert (await client.delete(prefix + "a")).deleted == 0
        assert (await client.get_prefix(prefix)).count == 0


async def test_txn_compare_and_swap(etcd: EtcdProcess, prefix: str) -> None:
    key = prefix + "cas"
    async with Client([etcd.endpoint]) as client:
        created = await client.txn(
            compare=[Compare.create_revision(key) == 0],
            success=[Op.put(key, "v1"), Op.get(key)],
            failure=[Op.get(key)],
        )
        assert created.succeeded
        put_result, get_result = created.responses
        assert isinstance(put_result, PutResult) and isinstance(get_result, RangeResult)
        assert get_result.kvs[0].value == b"v1"
        assert put_result.header.revision == created.header.revision

        again = await client.txn(
            compare=[Compare.create_revision(key) == 0],
            success=[Op.put(key, "never")],
            failure=[Op.get(key)],
        )
        assert not again.succeeded
        (current,) = again.responses
        assert isinstance(current, RangeResult) and current.kvs[0].value == b"v1"

        swapped = await client.txn(
            compare=[
                Compare.value(key) == "v1",
                Compare.version(key) > 0,
                Compare.mod_revision(key) < created.header.revision + 1,
                Compare.lease(key) == 0,
                Compare.value(key) != "other",
            ],
            success=[Op.put(key, "v2", prev_kv=True), Op.delete(prefix + "nothing")],
        )
        assert swapped.succeeded
        put_swap, delete_nothing = swapped.responses
        assert isinstance(put_swap, PutResult) and put_swap.prev_kv is not None
        assert put_swap.prev_kv.value == b"v1"
        assert isinstance(delete_nothing, DeleteResult) and delete_nothing.deleted == 0
        failed = await client.txn(compare=[Compare.mod_revision(key) < created.header.revision])
        assert not failed.succeeded and failed.responses == ()


async def test_nested_txn_and_range_compare(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        await client.put(prefix + "a", "1")
        await client.put(prefix + "b", "1")
        end = prefix_range_end(prefix.encode())
        all_ones = await client.txn(
            compare=[Compare.value(prefix, range_end=end) == "1"],
            success=[Op.txn([Compare.version(prefix + "a") == 1], [Op.put(prefix + "c", "3")])],
        )
        assert all_ones.succeeded
        (inner,) = all_ones.responses
        assert isinstance(inner, TxnResult) and inner.succeeded
        assert (await client.get(prefix + "c")).kvs[0].value == b"3"
        not_all = await client.txn(compare=[Compare.value(prefix, range_end=end) == "1"])
        assert not not_all.succeeded  # "c" is "3"


async def test_typed_errors(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        with pytest.raises(EmptyKeyError):
            await client.put("", "v")
        with pytest.raises(KeyNotFoundError):
            await client.put(prefix + "absent", "", ignore_value=True)
        with pytest.raises(DuplicateKeyError):
            await client.txn(success=[Op.put(prefix + "d", "1"), Op.put(prefix + "d", "2")])
        now = (await client.get(prefix)).header.revision
        with pytest.raises(FutureRevisionError):
            await client.get(prefix, revision=now + 1000)


def test_compare_builders_reject_wrong_operand_types() -> None:
    with pytest.raises(TypeError):
        _ = Compare.value("k") == 5
    with pytest.raises(TypeError):
        _ = Compare.version("k") > "1"
    with pytest.raises(ValueError):
        Op.get("k", prefix=True, range_end="z")
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


async def test_compact_then_old_revisions_are_gone(fresh_etcd: EtcdProcess) -> None:
    async with Client([fresh_etcd.endpoint]) as client:
        first = await client.put("k", "1")
        await client.put("k", "2")
        third = await client.put("k", "3")
        await client.compact(third.header.revision, physical=True)
        with pytest.raises(CompactedError):
            await client.get("k", revision=first.header.revision)
        at_compaction = await client.get("k", revision=third.header.revision)
        assert at_compaction.kvs[0].value == b"3"
        with pytest.raises(CompactedError):
            await client.compact(first.header.revision)


async def test_no_endpoint_accepts() -> None:
    client = Client([f"127.0.0.1:{free_port()}"], connect_timeout_s=1.0)
    with pytest.raises(UnavailableError):
        await client.connect()
    await client.close()
