"""KeyIndex: the revisions of one key (etcd ``server/storage/mvcc/key_index.go``).

etcd keeps a key's revisions in *generations*: a generation starts with the
put that creates the key and ends with the tombstone that deletes it; the
last generation is the current one (empty while the key is deleted). For
example put(1) put(2) delete(3) put(4) gives generations {1, 2, 3t} {4}.

We store the same information flat, to keep memory per key small (the index
holds every key in memory): ``entries`` lists every revision of the key,
oldest first, each as ``packed_revision << 1 | is_tombstone``. A tombstone
entry ends a generation, so the generations are the runs between tombstones.
Entries are sorted because revisions only grow. ``created`` and ``version``
describe the newest put of a live key (its generation's create revision and
the version it wrote), which is all a new put needs; reads take create
revision and version from the stored KeyValue, as etcd does.

A key that was put once costs one KeyIndex (3 slots), a one-element list and
two ints.
"""

from __future__ import annotations

from bisect import bisect_left

from raftkv.storage.mvcc.revision import SUB_BITS, main_of, sub_of

# Shift from an entry to its main revision: the tombstone bit, then the sub bits.
_MAIN_SHIFT = SUB_BITS + 1

# (the KeyIndex itself, its entries, created, version) before a change.
KeyIndexSnapshot = tuple["KeyIndex", list[int], int, int]


def make_entry(packed: int, tombstone: bool) -> int:
    return packed << 1 | tombstone


def entry_revision(entry: int) -> int:
    """The packed revision of an entry."""
    return entry >> 1


def entry_is_tombstone(entry: int) -> bool:
    return bool(entry & 1)


def _entries_through(entries: list[int], at_main: int) -> int:
    """How many entries have a main revision <= at_main."""
    return bisect_left(entries, (at_main + 1) << _MAIN_SHIFT)


class KeyIndex:
    __slots__ = ("entries", "created", "version")

    def __init__(self, entries: list[int], created: int, version: int) -> None:
        assert entries, "a KeyIndex holds at least one revision"
        self.entries = entries
        # Meaningful only while the key is live (its last entry is a put).
        self.created = created
        self.version = version

    @classmethod
    def created_by(cls, packed: int) -> KeyIndex:
        """A new key: its first put starts generation 1 at version 1."""
        return cls([packed << 1], main_of(packed), 1)

    def is_live(self) -> bool:
        """Whether the key exists now (its last change is a put)."""
        return not self.entries[-1] & 1

    def latest(self) -> tuple[int, int, int] | None:
        """(packed revision, create revision, version) of the live key, else None."""
        last = self.entries[-1]
        if last & 1:
            return None
        return last >> 1, self.created, self.version

    def revision_at(self, at_main: int) -> int | None:
        """The packed revision holding the key's value as of main revision
        ``at_main``; None if the key did not exist then (etcd's keyIndex.get)."""
        entries = self.entries
        entry = entries[-1]
        if entry >> _MAIN_SHIFT > at_main:  # not the newest: search
            count = _entries_through(entries, at_main)
            if count == 0:
                return None
            entry = entries[count - 1]
        return None if entry & 1 else entry >> 1

    def put(self, packed: int) -> None:
        last = self.entries[-1]
        assert packed > last >> 1, "revisions of a key only grow"
        if last & 1:  # the key was deleted: this put starts a new generation
            self.created = main_of(packed)
            self.version = 1
        else:
            self.version += 1
        self.entries.append(packed << 1)

    def tombstone(self, packed: int) -> None:
        last = self.entries[-1]
        assert not last & 1, "tombstone of a deleted key"
        assert packed > last >> 1, "revisions of a key only grow"
        self.entries.append(packed << 1 | 1)
        self.created = 0
        self.version = 0

    def compaction_cut(self, at_main: int) -> int:
        """How many of the oldest entries a compaction at ``at_main`` drops.

        Kept: the newest revision at or before ``at_main`` (the value a read at
        ``at_main`` returns) and everything after. That newest revision is
        dropped too when it is a tombstone older than ``at_main``: its
        generation ended before the compaction point. A tombstone exactly at
        ``at_main`` stays, as in etcd 3.5.16+, so that a watcher resuming at
        ``at_main`` still sees the delete (etcd-io/etcd#18089).
        """
        entries = self.entries
        if entries[0] >> _MAIN_SHIFT > at_main:
            return 0
        count = _entries_through(entries, at_main)
        newest = entries[count - 1]
        return count if newest & 1 and newest >> _MAIN_SHIFT < at_main else count - 1

    def drop_oldest(self, cut: int, removed: list[int]) -> None:
        """Remove the ``cut`` oldest entries, appending them to ``removed``.
        All of them leaving means the key leaves the index (the caller's job)."""
        assert 0 < cut <= len(self.entries)
        removed.extend(self.entries[:cut])
        del self.entries[:cut]

    def keep(self, at_main: int) -> int | None:
        """The packed revision a compaction at ``at_main`` would keep for this key
        and that hash_kv includes: the newest at or before ``at_main`` if it is a
        put (etcd's keyIndex.keep never keeps a tombstone)."""
        count = _entries_through(self.entries, at_main)
        if count == 0:
            return None
        entry = self.entries[count - 1]
        return None if entry & 1 else entry >> 1

    def snapshot(self) -> KeyIndexSnapshot:
        return (self, list(self.entries), self.created, self.version)

    def __repr__(self) -> str:
        shown = [
            f"{main_of(entry >> 1)}.{sub_of(entry >> 1)}{'t' if entry & 1 else ''}"
            for entry in self.entries
        ]
        return f"KeyIndex({' '.join(shown)}; created={self.created} version={self.version})"
