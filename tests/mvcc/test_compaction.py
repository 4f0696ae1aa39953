"""Compaction: errors, what is kept, what is removed from disk and the index."""

from __future__ import annotations

import pytest

from raftkv.storage.errors import CompactedError, FutureRevisionError
from raftkv.storage.mvcc import KeyValue
from tests.mvcc.helpers import KV


def test_compact_answers_with_the_current_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    assert kv.compact(2).revision == 3
    assert kv.store.compacted_revision == 2


def test_never_compacted_store_reports_minus_one(kv: KV) -> None:
    assert kv.store.compacted_revision == -1


def test_compact_at_the_current_revision_is_allowed(kv: KV) -> None:
    kv.put(b"a")
    kv.compact(2)
    assert kv.pairs() == [(b"a", b"")]


def test_compact_past_the_current_revision_fails(kv: KV) -> None:
    kv.put(b"a")
    with pytest.raises(FutureRevisionError) as error:
        kv.compact(3)
    assert str(error.value) == "etcdserver: mvcc: required revision is a future revision"


def test_compact_at_or_below_the_last_compaction_fails(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.compact(2)
    for revision in (2, 1):
        with pytest.raises(CompactedError) as error:
            kv.compact(revision)
        assert str(error.value) == "etcdserver: mvcc: required revision has been compacted"


def test_compact_does_not_make_a_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.compact(2)
    assert kv.store.current_revision == 2


def test_superseded_revisions_leave_the_disk(kv: KV) -> None:
    for value in (b"1", b"2", b"3", b"4"):
        kv.put(b"a", value)
    kv.compact(4)
    assert kv.stored_revisions() == [(4, False), (5, False)]


def test_latest_value_at_the_compaction_stays_readable(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.put(b"a", b"3")
    kv.compact(3)
    assert kv.pairs(revision=3) == [(b"a", b"1"), (b"b", b"2")]
    assert kv.pairs() == [(b"a", b"3"), (b"b", b"2")]


def test_key_deleted_before_the_compaction_leaves_disk_and_index(kv: KV) -> None:
    kv.put(b"a")
    kv.delete(b"a")
    kv.put(b"b")
    kv.compact(4)
    assert kv.stored_revisions() == [(4, False)]
    assert kv.store._index.get(b"a") is None


def test_tombstone_at_the_compaction_revision_is_kept(kv: KV) -> None:
    # etcd 3.5.16+ keeps it so a watch from that revision still sees the delete.
    kv.put(b"a")
    kv.delete(b"a")
    kv.compact(3)
    assert kv.stored_revisions() == [(3, True)]
    assert kv.get(b"a", revision=3).kvs == ()


def test_that_tombstone_goes_at_the_next_compaction(kv: KV) -> None:
    kv.put(b"a")
    kv.delete(b"a")
    kv.compact(3)
    kv.put(b"b")
    kv.compact(4)
    assert kv.stored_revisions() == [(4, False)]
    assert kv.store._index.get(b"a") is None


def test_generation_alive_at_the_compaction_keeps_its_tombstone(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"a", b"2")
    kv.delete(b"a")
    kv.compact(3)
    assert kv.stored_revisions() == [(3, False), (4, True)]
    assert kv.get(b"a", revision=3).kvs[0].value == b"2"


def test_versions_continue_after_compaction(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.compact(3)
    kv.put(b"a")
    assert kv.get(b"a").kvs == (KeyValue(b"a", 2, 4, 3, b""),)


def test_compaction_is_persisted(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.compact(2)
    kv.restart()
    assert kv.store.compacted_revision == 2
    with pytest.raises(CompactedError):
        kv.get(b"a", revision=1)
