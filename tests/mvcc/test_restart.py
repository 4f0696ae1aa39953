"""A restart rebuilds the index from DB_KEY and answers exactly as before."""

from __future__ import annotations

import random

from raftkv.storage.mvcc import RangeResponse
from tests.mvcc.helpers import KV


def every_revision(kv: KV) -> list[RangeResponse]:
    first = max(kv.store.compacted_revision, 1)
    return [
        kv.get(b"\0", range_end=b"\0", revision=revision)
        for revision in range(first, kv.store.current_revision + 1)
    ]


def churn(kv: KV) -> None:
    kv.put(b"a", b"1", lease=7)
    kv.put(b"b", b"2")
    kv.put(b"a", b"3")
    kv.delete(b"b")
    kv.put(b"b", b"4")
    kv.delete(b"a", range_end=b"\0")
    kv.put(b"c", b"5")
    kv.put(b"c", b"6")


def test_empty_store_restarts_at_revision_1(kv: KV) -> None:
    kv.restart()
    assert (kv.store.current_revision, kv.store.compacted_revision) == (1, -1)


def test_restart_keeps_every_revision(kv: KV) -> None:
    churn(kv)
    before = every_revision(kv)
    kv.restart()
    assert kv.store.current_revision == 9
    assert every_revision(kv) == before


def test_restart_after_compaction_keeps_what_is_left(kv: KV) -> None:
    churn(kv)
    kv.compact(7)
    before = every_revision(kv)
    kv.restart()
    assert kv.store.compacted_revision == 7
    assert every_revision(kv) == before


def test_restart_when_only_a_tombstone_is_left(kv: KV) -> None:
    kv.put(b"a")
    kv.delete(b"a")
    kv.put(b"b")
    kv.delete(b"b")
    kv.compact(5)
    kv.restart()
    assert kv.store.current_revision == 5
    assert kv.stored_revisions() == [(5, True)]


def test_writes_continue_correctly_after_restart(kv: KV) -> None:
    churn(kv)
    kv.compact(8)
    kv.restart()
    kv.put(b"c", b"7")
    kv.put(b"a", b"8")
    (c,) = kv.get(b"c").kvs
    (a,) = kv.get(b"a").kvs
    assert (c.create_revision, c.mod_revision, c.version) == (8, 10, 3)
    assert (a.create_revision, a.mod_revision, a.version) == (11, 11, 1)


def test_restart_with_a_tombstone_only_key_then_recreate(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.delete(b"a")
    kv.compact(3)  # a is left as just its tombstone
    kv.restart()
    kv.put(b"a", b"2")
    assert kv.get(b"a").kvs[0].version == 1
    kv.compact(4)
    assert kv.stored_revisions() == [(4, False)]


def test_keys_with_leases_after_restart(kv: KV) -> None:
    kv.put(b"a", lease=7)
    kv.put(b"b", lease=8)
    kv.put(b"b")
    kv.restart()
    assert kv.store.keys_with_leases() == [(b"a", 7)]


def test_leases_found_by_the_restore_scan_equal_a_full_read(kv: KV) -> None:
    """The restart takes lease attachments from the index scan (each record's header);
    they must equal what reading every live key's value gives, through overwrites,
    deletes, lease changes and a compaction."""
    rng = random.Random(5)
    for _ in range(400):
        key = b"k%d" % rng.randrange(30)
        if rng.random() < 0.2:
            kv.delete(key)
        else:
            kv.put(key, b"v", lease=rng.choice([0, 0, 7, 8]))
    kv.compact(kv.store.current_revision - 50)
    kv.restart()
    from_scan = kv.store.keys_with_leases()
    from_values = kv.store.keys_with_leases()  # handed out once: this one reads values
    assert from_scan == from_values and len(from_scan) > 5
    kv.put(b"k0", b"v", lease=8)  # and after a write, a read of every value
    assert kv.store.keys_with_leases() == sorted({**dict(from_scan), b"k0": 8}.items())


def test_restore_reloads_a_replaced_backend(kv: KV) -> None:
    churn(kv)
    before = every_revision(kv)
    kv.store.restore()
    assert every_revision(kv) == before
