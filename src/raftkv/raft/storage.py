"""The read side of durable Raft state, and an in-memory implementation.

The core only *reads* storage. Writes happen in the caller's Ready loop:
it persists ``Ready.snapshot``, ``Ready.entries`` and ``Ready.hard_state``
and only then calls ``RawNode.advance``. ``MemoryStorage`` holds exactly what
has been persisted, which is what the simulator keeps across a crash.
"""

from __future__ import annotations

from typing import Protocol

from raftkv.raft.errors import (
    CompactedError,
    SnapshotOutOfDate,
    UnavailableError,
)
from raftkv.raft.messages import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Index,
    Snapshot,
    SnapshotMetadata,
    Term,
    entry_size_bytes,
)


class LogStorage(Protocol):
    """What the core may ask of durable storage. All methods are synchronous."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, low: Index, high: Index, max_size_bytes: int) -> list[Entry]:
        """Entries in [low, high); at least one if any, at most max_size_bytes otherwise.

        Raises CompactedError if low <= the snapshot index, UnavailableError if
        high > last_index() + 1.
        """
        ...

    def term(self, index: Index) -> Term:
        """Term of the entry at index; valid for snapshot index <= index <= last_index()."""
        ...

    def first_index(self) -> Index: ...

    def last_index(self) -> Index: ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot; may raise SnapshotTemporarilyUnavailable."""
        ...


def limit_size(entries: list[Entry], max_size_bytes: int) -> list[Entry]:
    """The longest prefix within max_size_bytes, but never empty if entries is not."""
    if not entries:
        return entries
    total_bytes = entry_size_bytes(entries[0])
    for count in range(1, len(entries)):
        total_bytes += entry_size_bytes(entries[count])
        if total_bytes > max_size_bytes:
            return entries[:count]
    return entries


class MemoryStorage:
    """Persisted Raft state held in memory.

    ``_entries[0]`` is a dummy entry whose index and term are those of the
    latest snapshot, so ``term(snapshot index)`` is always answerable.
    """

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot: Snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- LogStorage ---------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, low: Index, high: Index, max_size_bytes: int) -> list[Entry]:
        offset = self._entries[0].index
        if low <= offset:
            raise CompactedError(f"index {low} is compacted (snapshot at {offset})")
        if high > self.last_index() + 1:
            raise UnavailableError(f"index {high - 1} is beyond last index {self.last_index()}")
        return limit_size(self._entries[low - offset : high - offset], max_size_bytes)

    def term(self, index: Index) -> Term:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} is beyond last index {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> Index:
        return self._entries[0].index + 1

    def last_index(self) -> Index:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- Writes, done by the caller's Ready loop ----------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with a snapshot received from the leader."""
        index = snapshot.metadata.index
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {index} is not newer than {self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.metadata.term, index=index)]

    def create_snapshot(
        self, index: Index, conf_state: ConfState, data: bytes
    ) -> Snapshot:
        """Record a snapshot of the applied state at index (index <= last)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {index} is not newer than {self._snapshot.metadata.index}"
            )
        assert index <= self.last_index(), (index, self.last_index())
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata=metadata, data=data)
        return self._snapshot

    def compact(self, compact_index: Index) -> None:
        """Discard entries before compact_index; it must be covered by a snapshot."""
        offset = self._entries[0].index
        if compact_index <= offset:
            raise CompactedError(f"index {compact_index} is already compacted")
        assert compact_index <= self._snapshot.metadata.index, "compacting beyond snapshot"
        assert compact_index <= self.last_index()
        keep = self._entries[compact_index - offset :]
        self._entries = [Entry(term=keep[0].term, index=keep[0].index)] + keep[1:]

    def append(self, entries: list[Entry]) -> None:
        """Append, overwriting any conflicting suffix."""
        if not entries:
            return
        first_new = entries[0].index
        first = self.first_index()
        if first_new + len(entries) - 1 < first:
            return  # wholly compacted: already covered by the snapshot
        if first > first_new:
            entries = entries[first - first_new :]
            first_new = first
        offset = self._entries[0].index
        assert first_new - offset <= len(self._entries), "gap in appended entries"
        del self._entries[first_new - offset :]
        self._entries.extend(entries)


BOOTSTRAP_INDEX: Index = 1
BOOTSTRAP_TERM: Term = 1


def bootstrap_storage(storage: MemoryStorage, conf_state: ConfState, data: bytes = b"") -> None:
    """Start a new cluster: an initial snapshot at index 1 carries the first configuration.

    A member added later starts with empty storage and receives that (or a
    later) snapshot from the leader, so it always learns the full membership.
    """
    assert storage.last_index() == 0, "bootstrap only empty storage"
    metadata = SnapshotMetadata(index=BOOTSTRAP_INDEX, term=BOOTSTRAP_TERM, conf_state=conf_state)
    storage.apply_snapshot(Snapshot(metadata=metadata, data=data))
    storage.set_hard_state(HardState(term=BOOTSTRAP_TERM, commit=BOOTSTRAP_INDEX))
