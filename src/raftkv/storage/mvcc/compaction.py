"""Compaction (etcd ``server/storage/mvcc/kvstore_compaction.go``).

etcd compacts the index at once and deletes the superseded revisions from the
backend in the background, 1000 at a time. We do both in the caller's write
batch, so a compaction is atomic with the compacted revision recorded in
DB_META: there is no half-done compaction to resume after a crash.

The revisions in DB_KEY are exactly those in the index (restore builds the
index from all of DB_KEY, and every write and compaction changes both), so
the revisions to delete are the ones the index compaction drops.
"""

from __future__ import annotations

from raftkv.storage.backend import DB_KEY, WriteBatch
from raftkv.storage.mvcc.index import Index
from raftkv.storage.mvcc.key_index import entry_is_tombstone, entry_revision
from raftkv.storage.mvcc.revision import revision_key


def compact(index: Index, batch: WriteBatch, at_main: int) -> int:
    """Drop what a compaction at ``at_main`` supersedes from the index and DB_KEY;
    returns how many revisions were removed."""
    removed = index.compact(at_main)
    for entry in removed:
        key = revision_key(entry_revision(entry), entry_is_tombstone(entry))
        deleted = batch.delete(DB_KEY, key)
        assert deleted, f"index revision {key.hex()} missing from DB_KEY"
    return len(removed)
