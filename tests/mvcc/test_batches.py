"""Many requests per write batch, and batches that fail: memory must follow LMDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.storage.backend import DB_KEY, WriteBatch
from raftkv.storage.errors import DiskError, KeyNotFoundError
from raftkv.storage.mvcc import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest
from tests.mvcc.helpers import KV, MIB, open_backend


class Boom(Exception):
    pass


def snapshot(kv: KV) -> tuple[object, ...]:
    """Everything a client can observe, at every readable revision."""
    store = kv.store
    first = max(store.compacted_revision, 1)
    ranges = [
        kv.get(b"\0", range_end=b"\0", revision=revision)
        for revision in range(first, store.current_revision + 1)
    ]
    return store.current_revision, store.compacted_revision, ranges, kv.stored_revisions()


def some_history(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.put(b"a", b"3")
    kv.delete(b"b")


def test_requests_in_one_batch_see_each_other(kv: KV) -> None:
    with kv.backend.write() as batch:
        first = kv.store.put(batch, PutRequest(b"a", b"1"))
        second = kv.store.put(batch, PutRequest(b"a", b"2", prev_kv=True))
        deleted = kv.store.delete_range(batch, DeleteRangeRequest(b"a"))
    assert (first.revision, second.revision, deleted.revision) == (2, 3, 4)
    assert second.prev_kv is not None and second.prev_kv.value == b"1"
    assert kv.get(b"a", revision=3).kvs[0].version == 2


def test_request_error_in_a_batch_leaves_the_others(kv: KV) -> None:
    with kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"a"))
        with pytest.raises(KeyNotFoundError):
            kv.store.put(batch, PutRequest(b"missing", ignore_value=True))
        kv.store.put(batch, PutRequest(b"b"))
    assert kv.pairs() == [(b"a", b""), (b"b", b"")]
    assert kv.store.current_revision == 3


def test_batch_that_raises_is_rolled_back(kv: KV) -> None:
    some_history(kv)
    before = snapshot(kv)
    with pytest.raises(Boom), kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"a", b"new"))
        kv.store.put(batch, PutRequest(b"c", b"new"))
        kv.store.delete_range(batch, DeleteRangeRequest(b"a", range_end=b"\0"))
        kv.store.compact(batch, 4)
        raise Boom()
    assert snapshot(kv) == before


def test_rolled_back_store_takes_new_writes(kv: KV) -> None:
    some_history(kv)
    with pytest.raises(Boom), kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"c"))
        raise Boom()
    assert kv.put(b"c", b"x").revision == 6
    kv.restart()
    assert kv.pairs() == [(b"a", b"3"), (b"c", b"x")]


def test_failure_in_the_middle_of_a_write_dooms_the_batch(
    kv: KV, monkeypatch: pytest.MonkeyPatch
) -> None:
    some_history(kv)
    before = snapshot(kv)
    real_put = WriteBatch.put
    calls = {"count": 0}

    def flaky_put(self: WriteBatch, db: bytes, key: bytes, value: bytes) -> None:
        calls["count"] += 1
        if calls["count"] == 3:
            raise Boom()  # e.g. the disk, halfway through a txn
        real_put(self, db, key, value)

    monkeypatch.setattr(WriteBatch, "put", flaky_put)
    with pytest.raises(DiskError), kv.backend.write() as batch:
        request = TxnRequest(success=(PutRequest(b"x"), PutRequest(b"y"), PutRequest(b"z")))
        with pytest.raises(Boom):
            kv.store.txn(batch, request)
        # The caller swallowed the error; the batch must still not commit.
    monkeypatch.undo()
    assert snapshot(kv) == before


def test_failed_commit_rolls_back(tmp_path: Path) -> None:
    kv = KV(open_backend(str(tmp_path / "small"), map_size_bytes=1 * MIB))
    kv.put(b"seed", b"0")
    big = b"v" * 4096
    committed = 0
    with pytest.raises(DiskError):
        for batch_number in range(1000):
            with kv.backend.write() as batch:
                for i in range(20):
                    kv.store.put(batch, PutRequest(b"k%d-%d" % (batch_number, i), big))
            committed = batch_number + 1
    assert kv.store.current_revision == 2 + committed * 20
    assert kv.get(b"k", range_end=b"l", count_only=True).count == committed * 20
    kv.restart()
    assert kv.store.current_revision == 2 + committed * 20
    kv.backend.close()


def test_consistent_index_commits_with_the_data(kv: KV) -> None:
    with kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"a"))
        batch.set_consistent_index(5, 2)
    assert (kv.backend.consistent_index().index, kv.store.current_revision) == (5, 2)
    with pytest.raises(Boom), kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"b"))
        batch.set_consistent_index(6, 2)
        raise Boom()
    assert (kv.backend.consistent_index().index, kv.store.current_revision) == (5, 2)
    kv.restart()
    assert (kv.backend.consistent_index().index, kv.store.current_revision) == (5, 2)


def test_reads_inside_an_open_batch_are_refused(kv: KV) -> None:
    with kv.backend.write() as batch:
        kv.store.put(batch, PutRequest(b"a"))
        with pytest.raises(AssertionError):
            kv.store.range(RangeRequest(b"a"))


def test_records_on_disk_match_the_index(kv: KV) -> None:
    some_history(kv)
    kv.compact(3)
    with kv.backend.read() as txn:
        records = txn.stat(kv.backend.db(DB_KEY))["entries"]
    in_index = sum(len(key_index.entries) for _key, key_index in kv.store._index.items())
    assert records == in_index
