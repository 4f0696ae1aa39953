"""KeyIndex and Index units, with etcd's key_index.go examples."""

from __future__ import annotations

from raftkv.storage.mvcc.index import Index
from raftkv.storage.mvcc.key_index import KeyIndex, entry_is_tombstone, entry_revision
from raftkv.storage.mvcc.revision import main_of, pack


def foo() -> KeyIndex:
    """etcd's example: put(1.0) put(2.0) tombstone(3.0) put(4.0) tombstone(5.0)."""
    key_index = KeyIndex.created_by(pack(1, 0))
    key_index.put(pack(2, 0))
    key_index.tombstone(pack(3, 0))
    key_index.put(pack(4, 0))
    key_index.tombstone(pack(5, 0))
    return key_index


def mains(key_index: KeyIndex) -> list[str]:
    return [
        f"{main_of(entry_revision(e))}{'t' if entry_is_tombstone(e) else ''}"
        for e in key_index.entries
    ]


def compacted(at_main: int) -> tuple[list[str], list[str]]:
    key_index = foo()
    removed: list[int] = []
    cut = key_index.compaction_cut(at_main)
    if cut:
        key_index.drop_oldest(cut, removed)
    return mains(key_index), [f"{main_of(entry_revision(e))}" for e in removed]


def test_revision_at_each_point() -> None:
    key_index = foo()
    found = {at: key_index.revision_at(at) for at in range(0, 7)}
    assert {at: None if rev is None else main_of(rev) for at, rev in found.items()} == {
        0: None,
        1: 1,
        2: 2,
        3: None,
        4: 4,
        5: None,
        6: None,
    }


def test_compact_as_in_etcds_examples() -> None:
    assert compacted(1) == (["1", "2", "3t", "4", "5t"], [])
    assert compacted(2) == (["2", "3t", "4", "5t"], ["1"])
    assert compacted(3) == (["3t", "4", "5t"], ["1", "2"])  # tombstone at the compaction stays
    assert compacted(4) == (["4", "5t"], ["1", "2", "3"])
    assert compacted(5) == (["5t"], ["1", "2", "3", "4"])
    assert compacted(6) == ([], ["1", "2", "3", "4", "5"])  # the key leaves the index


def test_keep_never_keeps_a_tombstone() -> None:
    key_index = foo()
    kept = {at: key_index.keep(at) for at in range(0, 7)}
    assert {at: None if rev is None else main_of(rev) for at, rev in kept.items()} == {
        0: None,
        1: 1,
        2: 2,
        3: None,
        4: 4,
        5: None,
        6: None,
    }


def test_put_after_tombstone_starts_a_generation() -> None:
    key_index = KeyIndex.created_by(pack(2, 0))
    key_index.put(pack(3, 0))
    assert key_index.latest() == (pack(3, 0), 2, 2)
    key_index.tombstone(pack(4, 0))
    assert key_index.latest() is None
    key_index.put(pack(5, 1))
    assert key_index.latest() == (pack(5, 1), 5, 1)


def test_sub_revisions_order_within_a_main_revision() -> None:
    key_index = KeyIndex.created_by(pack(2, 0))
    key_index.tombstone(pack(2, 1))
    key_index.put(pack(2, 2))
    assert key_index.revision_at(2) == pack(2, 2)
    assert key_index.revision_at(1) is None


def test_index_journal_rolls_back_puts_tombstones_and_compactions() -> None:
    index = Index()
    index.put(b"a", pack(2, 0))
    index.put(b"b", pack(3, 0))
    index.tombstone(b"b", pack(4, 0))
    before = [(key, list(ki.entries), ki.created, ki.version) for key, ki in index.items()]
    index.begin_journal()
    index.put(b"a", pack(5, 0))
    index.put(b"c", pack(5, 1))
    index.compact(5)  # b leaves the index
    index.put(b"b", pack(6, 0))  # and comes back
    index.rollback_journal()
    after = [(key, list(ki.entries), ki.created, ki.version) for key, ki in index.items()]
    assert after == before
    assert len(index) == 2


def test_index_ranges() -> None:
    index = Index()
    for main, key in enumerate((b"a", b"b", b"c", b"d"), start=2):
        index.put(key, pack(main, 0))
    index.tombstone(b"c", pack(6, 0))
    assert index.revisions(b"a", b"", 6, 0) == ([pack(2, 0), pack(3, 0), pack(5, 0)], 3)
    assert index.revisions(b"a", b"", 6, 2) == ([pack(2, 0), pack(3, 0)], 3)
    assert index.count(b"b", b"d", 4) == 2
    assert index.live_keys(b"a", b"", 6) == [b"a", b"b", b"d"]
    assert index.revisions(b"c", None, 5, 0) == ([pack(4, 0)], 1)
