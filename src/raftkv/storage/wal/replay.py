"""Rebuilding Raft's durable state from WAL records, in the order they were written.

The rules, which mirror what the Ready loop did to ``MemoryStorage``:

- An entry at index i replaces the entry at i and drops everything after it
  (a new leader overwrote a conflicting suffix).
- A snapshot marker (m, t) of a local snapshot drops the entries up to m; the
  log continues after m. A marker of a leader's snapshot drops the whole log
  (the core installs one only when its log does *not* hold (m, t),
  ``Raft.restore``). The writer records which one it is, so replay never needs
  entries that ``release_to`` may have removed.
- The last hard state wins.

A segment removed by ``WAL.release_to`` leaves a gap before the first retained
entry; that is fine as long as the final marker covers it. At the end the
entries after the final marker must be contiguous, or records were lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.messages import (
    EMPTY_HARD_STATE,
    Entry,
    HardState,
    Index,
    Snapshot,
    Term,
)
from raftkv.raft.storage import MemoryStorage
from raftkv.storage.errors import CorruptionError, StorageError


@dataclass(frozen=True, slots=True)
class SnapshotMarker:
    """The (index, term) of a snapshot that is durable in the snapshot directory."""

    index: Index = 0
    term: Term = 0


NO_MARKER = SnapshotMarker()


@dataclass(frozen=True, slots=True)
class Replay:
    """What the WAL holds: the latest marker, hard state, and the entries after the marker."""

    marker: SnapshotMarker
    hard_state: HardState
    entries: list[Entry]

    @property
    def last_index(self) -> Index:
        return self.entries[-1].index if self.entries else self.marker.index


class ReplayBuilder:
    """Consumes records in WAL order; every method raises CorruptionError with the location."""

    def __init__(self) -> None:
        self.marker = NO_MARKER
        self.hard_state = EMPTY_HARD_STATE
        # The entries after the marker form one contiguous run; it may start
        # later than marker + 1 only while a released prefix is being skipped.
        self._run: list[Entry] = []
        self._run_start: Index = 1
        self._run_location = ("", 0)

    def add_entry(self, entry: Entry, path: str, offset: int) -> None:
        if entry.index <= self.marker.index:
            return  # covered by the snapshot (MemoryStorage.append ignores it too)
        run_end = self._run_start + len(self._run)
        if self._run and self._run_start <= entry.index <= run_end:
            del self._run[entry.index - self._run_start :]
        else:
            # The first entry after the marker, or the first one after a released gap.
            self._run = []
            self._run_start = entry.index
            self._run_location = (path, offset)
        previous_term = 0
        if self._run:
            previous_term = self._run[-1].term
        elif entry.index == self.marker.index + 1:
            previous_term = self.marker.term
        if entry.term < previous_term:
            detail = f"entry {entry.index} has term {entry.term} < previous term {previous_term}"
            raise CorruptionError(path, offset, detail)
        self._run.append(entry)

    def add_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def add_marker(
        self, marker: SnapshotMarker, replaces_log: bool, path: str, offset: int
    ) -> None:
        if marker == self.marker:
            return  # the copy at the head of each segment
        if marker.index <= self.marker.index:
            detail = f"snapshot marker {marker} does not follow {self.marker}"
            raise CorruptionError(path, offset, detail)
        if replaces_log:
            self._run = []
        elif self._run_start <= marker.index:
            self._check_local_marker(marker, path, offset)
            del self._run[: marker.index - self._run_start + 1]
        # Otherwise the run starts above the marker, after removed segments: keep it.
        if not self._run or self._run_start <= marker.index:
            self._run_start = marker.index + 1
        self.marker = marker

    def _check_local_marker(self, marker: SnapshotMarker, path: str, offset: int) -> None:
        # Entry m may be absent (its segment was released, or an earlier marker
        # covered it); if present it must be the one the snapshot was taken at.
        term = self._term_at(marker.index)
        if term is not None and term != marker.term:
            detail = f"local snapshot marker {marker} but entry {marker.index} has term {term}"
            raise CorruptionError(path, offset, detail)

    def finish(self, directory: str) -> Replay:
        if self._run and self._run_start != self.marker.index + 1:
            path, offset = self._run_location
            detail = (
                f"entries resume at index {self._run_start} after the snapshot marker at "
                f"{self.marker.index}: records are missing"
            )
            raise CorruptionError(path, offset, detail)
        replay = Replay(self.marker, self.hard_state, list(self._run))
        if self.hard_state.commit > replay.last_index:
            detail = f"hard state commit {self.hard_state.commit} > last index {replay.last_index}"
            raise CorruptionError(directory, 0, detail)
        return replay

    def _term_at(self, index: Index) -> Term | None:
        if self._run_start <= index < self._run_start + len(self._run):
            return self._run[index - self._run_start].term
        return None


class SnapshotMismatchError(StorageError):
    """The snapshot file does not match the WAL's latest snapshot marker."""


def build_memory_storage(replay: Replay, snapshot: Snapshot | None) -> MemoryStorage:
    """The MemoryStorage that the Ready loop had persisted before the restart.

    ``snapshot`` must be the one the WAL's marker names (``Snapshotter.load``
    of ``replay.marker``), or None when the marker is empty. A newer snapshot
    file without a marker (a crash between the two writes) must not be used:
    the WAL entries continue from the marker, not from that file.
    """
    storage = MemoryStorage()
    marker = replay.marker
    if marker.index == 0:
        if snapshot is not None and not snapshot.is_empty:
            raise SnapshotMismatchError(
                f"snapshot at {snapshot.metadata.index} given but the WAL has no snapshot marker"
            )
    else:
        if snapshot is None:
            raise SnapshotMismatchError(f"the WAL needs the snapshot at {marker}, none given")
        meta = snapshot.metadata
        if (meta.index, meta.term) != (marker.index, marker.term):
            raise SnapshotMismatchError(
                f"snapshot {meta.term}/{meta.index} does not match WAL marker "
                f"{marker.term}/{marker.index}"
            )
        storage.apply_snapshot(snapshot)
    storage.append(replay.entries)
    storage.set_hard_state(replay.hard_state)
    assert storage.last_index() == replay.last_index, (storage.last_index(), replay.last_index)
    return storage
