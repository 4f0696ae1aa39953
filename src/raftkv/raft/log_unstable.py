"""Entries and a snapshot that the core has accepted but the caller has not yet persisted."""

from __future__ import annotations

from raftkv.raft.messages import Entry, Index, Snapshot, Term


class Unstable:
    """``entries[i]`` has index ``offset + i``; ``snapshot`` precedes them."""

    def __init__(self, offset: Index) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset: Index = offset

    def maybe_first_index(self) -> Index | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> Index | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: Index) -> Term | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == index:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: Index, term: Term) -> None:
        """Entries up to index (of term) are now persisted; forget them."""
        stored_term = self.maybe_term(index)
        if stored_term is None or stored_term != term or index < self.offset:
            return  # overwritten by a newer append since the Ready was made
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: Index) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first_new = entries[0].index
        if first_new == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first_new <= self.offset:
            # Replaces everything unstable; the storage suffix is overwritten
            # when these entries are persisted.
            self.offset = first_new
            self.entries = list(entries)
        else:
            del self.entries[first_new - self.offset :]
            self.entries.extend(entries)

    def slice(self, low: Index, high: Index) -> list[Entry]:
        assert self.offset <= low <= high <= self.offset + len(self.entries), (
            low,
            high,
            self.offset,
            len(self.entries),
        )
        return self.entries[low - self.offset : high - self.offset]
