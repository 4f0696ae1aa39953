"""The in-memory index: key -> KeyIndex, plus the keys in order for ranges.

etcd keeps a B-tree of keyIndex (``server/storage/mvcc/index.go``). We keep a
dict for point lookups (most requests name one key) and a SortedList of the
same keys for ranges. The index is rebuilt from DB_KEY at startup
(``restore``) and is never persisted.

Batches and rollback: while a journal is open (``begin_journal``), the first
change to each key records that key's previous state. ``rollback_journal``
puts every recorded key back, so a write batch that fails to commit leaves
the index exactly as the backend is; ``commit_journal`` forgets the records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

from raftkv.storage.mvcc.key_index import KeyIndex, KeyIndexSnapshot
from raftkv.storage.mvcc.revision import main_of

# A compaction that empties more than this fraction of the keys rebuilds the
# SortedList instead of removing the keys one by one.
_REBUILD_FRACTION = 8


class Index:
    __slots__ = ("_keys", "_sorted", "_journal")

    def __init__(self) -> None:
        self._keys: dict[bytes, KeyIndex] = {}
        self._sorted = SortedList()
        # key -> state before the open batch first changed it (None: absent).
        self._journal: dict[bytes, KeyIndexSnapshot | None] | None = None

    def __len__(self) -> int:
        """Keys in the index, deleted ones whose tombstone is not compacted included."""
        return len(self._keys)

    def get(self, key: bytes) -> KeyIndex | None:
        return self._keys.get(key)

    def latest(self, key: bytes) -> tuple[int, int, int] | None:
        """(packed revision, create revision, version) of a live key, else None."""
        key_index = self._keys.get(key)
        return None if key_index is None else key_index.latest()

    # --- Reads -------------------------------------------------------------------

    def revisions(
        self, key: bytes, end: bytes | None, at_main: int, limit: int
    ) -> tuple[list[int], int]:
        """Packed revisions of the keys in the range at ``at_main``, in key order,
        at most ``limit`` of them (<= 0: all); and how many keys there are in all.

        ``end``: None = just ``key``; b"" = every key >= ``key``; else [key, end).
        """
        if end is None:
            revision = self._revision_of(key, at_main)
            return ([], 0) if revision is None else ([revision], 1)
        revisions: list[int] = []
        total = 0
        keys = self._keys
        for candidate in self._keys_in(key, end):
            revision = keys[candidate].revision_at(at_main)
            if revision is not None:
                if limit <= 0 or len(revisions) < limit:
                    revisions.append(revision)
                total += 1
        return revisions, total

    def count(self, key: bytes, end: bytes | None, at_main: int) -> int:
        """How many keys of the range exist at ``at_main``."""
        if end is None:
            return 0 if self._revision_of(key, at_main) is None else 1
        keys = self._keys
        return sum(
            1
            for candidate in self._keys_in(key, end)
            if keys[candidate].revision_at(at_main) is not None
        )

    def live_keys(self, key: bytes, end: bytes | None, at_main: int) -> list[bytes]:
        """The keys of the range that exist at ``at_main``, in order."""
        if end is None:
            return [] if self._revision_of(key, at_main) is None else [key]
        keys = self._keys
        return [
            candidate
            for candidate in self._keys_in(key, end)
            if keys[candidate].revision_at(at_main) is not None
        ]

    def keep(self, at_main: int) -> set[int]:
        """The packed revisions a compaction at ``at_main`` keeps at or before it
        (etcd's treeIndex.Keep; hash_kv uses it)."""
        kept: set[int] = set()
        for key_index in self._keys.values():
            revision = key_index.keep(at_main)
            if revision is not None:
                kept.add(revision)
        return kept

    def items(self) -> Iterator[tuple[bytes, KeyIndex]]:
        """Every key and its KeyIndex, in key order."""
        keys = self._keys
        for key in self._sorted:
            yield key, keys[key]

    def _revision_of(self, key: bytes, at_main: int) -> int | None:
        key_index = self._keys.get(key)
        return None if key_index is None else key_index.revision_at(at_main)

    def _keys_in(self, key: bytes, end: bytes) -> Iterator[bytes]:
        if end == b"":
            return iter(self._sorted.irange(minimum=key))
        if end <= key:
            return iter(())
        return iter(self._sorted.irange(key, end, inclusive=(True, False)))

    # --- Changes -----------------------------------------------------------------

    def put(self, key: bytes, packed: int) -> None:
        key_index = self._keys.get(key)
        self._record(key, key_index)
        if key_index is None:
            self._keys[key] = KeyIndex.created_by(packed)
            self._sorted.add(key)
        else:
            key_index.put(packed)

    def tombstone(self, key: bytes, packed: int) -> None:
        key_index = self._keys.get(key)
        assert key_index is not None, f"tombstone of unknown key {key!r}"
        self._record(key, key_index)
        key_index.tombstone(packed)

    def compact(self, at_main: int) -> list[int]:
        """Compact every key at ``at_main``; returns the entries removed (see
        key_index.entry_revision / entry_is_tombstone), which the caller
        deletes from DB_KEY. Keys left without revisions leave the index."""
        removed: list[int] = []
        emptied: list[bytes] = []
        for key, key_index in self._keys.items():
            cut = key_index.compaction_cut(at_main)
            if cut == 0:
                continue
            self._record(key, key_index)
            key_index.drop_oldest(cut, removed)
            if not key_index.entries:
                emptied.append(key)
        for key in emptied:
            del self._keys[key]
        if len(emptied) * _REBUILD_FRACTION > len(self._keys):
            self._sorted = SortedList(self._keys)
        else:
            for key in emptied:
                self._sorted.remove(key)
        assert len(self._sorted) == len(self._keys)
        return removed

    def restore(self, records: Iterable[tuple[bytes, int, bool, int, int]]) -> None:
        """Load DB_KEY into an empty index, in revision order. A record is
        (key, packed revision, is tombstone, create revision, version) as stored."""
        assert not self._keys and self._journal is None, "restore into a used index"
        keys = self._keys
        for key, packed, tombstone, created, version in records:
            key_index = keys.get(key)
            if key_index is None:
                # The oldest revision left after compactions: its stored KeyValue
                # gives the generation's create revision and version.
                entry = packed << 1 | tombstone
                keys[key] = KeyIndex([entry], created, version)
            elif tombstone:
                key_index.tombstone(packed)
            else:
                key_index.put(packed)
                assert (key_index.created, key_index.version) == (created, version), (
                    f"key {key!r} at {main_of(packed)}: stored create revision/version "
                    f"{created}/{version}, index says {key_index.created}/{key_index.version}"
                )
        self._sorted = SortedList(keys)

    # --- Journal -----------------------------------------------------------------

    def begin_journal(self) -> None:
        assert self._journal is None, "a journal is already open"
        self._journal = {}

    def commit_journal(self) -> None:
        assert self._journal is not None, "no journal open"
        self._journal = None

    def rollback_journal(self) -> None:
        """Undo every change since begin_journal."""
        journal = self._journal
        assert journal is not None, "no journal open"
        self._journal = None
        for key, saved in journal.items():
            present = key in self._keys
            if saved is None:
                if present:
                    del self._keys[key]
                    self._sorted.remove(key)
                continue
            key_index, entries, created, version = saved
            key_index.entries = entries
            key_index.created = created
            key_index.version = version
            self._keys[key] = key_index
            if not present:
                self._sorted.add(key)
        assert len(self._sorted) == len(self._keys)

    def _record(self, key: bytes, key_index: KeyIndex | None) -> None:
        journal = self._journal
        if journal is not None and key not in journal:
            journal[key] = None if key_index is None else key_index.snapshot()
