"""hash_kv (etcd HashKV) and hash (etcd Hash) across replicas."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.storage.backend import DB_KEY
from raftkv.storage.errors import CompactedError, FutureRevisionError
from raftkv.storage.mvcc import DeleteRangeRequest, PutRequest
from raftkv.storage.mvcc import hash as kv_hash
from raftkv.storage.mvcc.revision import pack, revision_key
from tests.mvcc.helpers import KV, open_backend

History = Callable[[KV], None]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[[], KV]]:
    opened: list[KV] = []

    def new() -> KV:
        opened.append(KV(open_backend(str(tmp_path / f"replica{len(opened)}"))))
        return opened[-1]

    yield new
    for replica in opened:
        replica.backend.close()


def history(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.delete(b"a")
    kv.put(b"a", b"3")
    kv.put(b"b", b"4")


def test_same_history_same_hash_kv(replicas: Callable[[], KV]) -> None:
    first, second = replicas(), replicas()
    history(first)
    history(second)
    for revision in range(1, 7):
        assert first.store.hash_kv(revision) == second.store.hash_kv(revision)


def test_different_value_different_hash_kv(replicas: Callable[[], KV]) -> None:
    first, second = replicas(), replicas()
    first.put(b"a", b"1")
    second.put(b"a", b"2")
    assert first.store.hash_kv().hash != second.store.hash_kv().hash


def test_hash_kv_reports_its_revisions(kv: KV) -> None:
    history(kv)
    kv.compact(3)
    result = kv.store.hash_kv()
    assert (result.compact_revision, result.hash_revision) == (3, 6)
    assert kv.store.hash_kv(4).hash_revision == 4


def test_hash_kv_is_independent_of_batching(replicas: Callable[[], KV]) -> None:
    one_by_one, batched = replicas(), replicas()
    history(one_by_one)
    with batched.backend.write() as batch:
        store = batched.store
        store.put(batch, PutRequest(b"a", b"1"))
        store.put(batch, PutRequest(b"b", b"2"))
        store.delete_range(batch, DeleteRangeRequest(b"a"))
        store.put(batch, PutRequest(b"a", b"3"))
        store.put(batch, PutRequest(b"b", b"4"))
    assert one_by_one.store.hash_kv() == batched.store.hash_kv()
    assert one_by_one.store.hash() == batched.store.hash()


def test_hash_kv_agrees_whenever_the_same_compaction_ran(replicas: Callable[[], KV]) -> None:
    early, late = replicas(), replicas()
    early.put(b"a", b"1")
    early.put(b"b", b"2")
    early.delete(b"a")
    early.compact(4)  # as soon as revision 4 exists
    early.put(b"a", b"3")
    early.put(b"b", b"4")
    history(late)
    late.compact(4)  # two revisions later
    for revision in (4, 5, 6):
        assert early.store.hash_kv(revision) == late.store.hash_kv(revision)


def test_hash_kv_survives_restart(kv: KV) -> None:
    history(kv)
    kv.compact(3)
    before = [kv.store.hash_kv(revision) for revision in range(3, 7)]
    kv.restart()
    assert [kv.store.hash_kv(revision) for revision in range(3, 7)] == before


def test_hash_kv_below_the_compaction_fails(kv: KV) -> None:
    history(kv)
    kv.compact(4)
    kv.store.hash_kv(4)  # at the compaction is fine
    with pytest.raises(CompactedError):
        kv.store.hash_kv(3)


def test_hash_kv_past_the_current_revision_fails(kv: KV) -> None:
    with pytest.raises(FutureRevisionError):
        kv.store.hash_kv(2)


def test_backend_hash_ignores_the_consistent_index(replicas: Callable[[], KV]) -> None:
    first, second = replicas(), replicas()
    for replica, index in ((first, 10), (second, 99)):
        with replica.backend.write() as batch:
            replica.store.put(batch, PutRequest(b"a"))
            batch.set_consistent_index(index, 1)
    assert first.store.hash() == second.store.hash()


def test_backend_hash_sees_every_change(kv: KV) -> None:
    before = kv.store.hash()
    kv.put(b"a")
    assert kv.store.hash() != before


def test_hash_kv_is_the_same_before_and_after_the_physical_compaction(
    replicas: Callable[[], KV],
) -> None:
    # etcd deletes compacted revisions in the background; HashKV must not
    # depend on how far that got. Hash the uncompacted replica as if the
    # compaction at 4 were recorded but nothing deleted yet.
    compacted, uncompacted = replicas(), replicas()
    for replica in (compacted, uncompacted):
        history(replica)
        replica.put(b"c", b"5")
    compacted.compact(4)
    for revision in (5, 6, 7):
        store = uncompacted.store
        with uncompacted.backend.read() as txn:
            keep = store._index.keep(revision)
            pending = kv_hash.hash_kv(txn, uncompacted.backend.db(DB_KEY), 4, revision, keep)
        assert pending == compacted.store.hash_kv(revision)


def test_hash_kv_skips_a_tombstone_at_the_compacted_revision(kv: KV) -> None:
    # etcd <= 3.5.15 deleted that tombstone when compacting, newer versions keep
    # it; the hash leaves it out so that both agree. (With no live key, etcd's
    # keep set is empty and filters nothing, so only this rule drops it.)
    kv.put(b"a")
    kv.delete(b"a")
    kv.compact(3)
    before = kv.store.hash_kv()
    with kv.backend.write() as batch:
        assert batch.delete(DB_KEY, revision_key(pack(3, 0), tombstone=True))
    assert kv.store.hash_kv() == before
