"""The Raft log: persisted entries (storage) followed by unstable ones.

Invariants (checked at the gateways, never silently repaired):
  first_index - 1 <= applied <= committed <= last_index
  committed never decreases.
"""

from __future__ import annotations

from raftkv.raft.errors import CompactedError, UnavailableError
from raftkv.raft.log_unstable import Unstable
from raftkv.raft.messages import Entry, Index, Snapshot, Term
from raftkv.raft.storage import LogStorage, limit_size


class RaftLog:
    def __init__(self, storage: LogStorage, max_committed_size_per_ready_bytes: int) -> None:
        self.storage = storage
        first_index = storage.first_index()
        last_index = storage.last_index()
        self.unstable = Unstable(offset=last_index + 1)
        # Everything at or below the snapshot is committed and applied.
        self.committed: Index = first_index - 1
        self.applied: Index = first_index - 1
        self.max_committed_size_per_ready_bytes = max_committed_size_per_ready_bytes

    # -- Positions ----------------------------------------------------------

    def first_index(self) -> Index:
        index = self.unstable.maybe_first_index()
        if index is not None:
            return index
        return self.storage.first_index()

    def last_index(self) -> Index:
        index = self.unstable.maybe_last_index()
        if index is not None:
            return index
        return self.storage.last_index()

    def last_term(self) -> Term:
        return self.term(self.last_index())

    def term(self, index: Index) -> Term:
        """Term at index; raises CompactedError / UnavailableError outside the log."""
        dummy_index = self.first_index() - 1
        if index < dummy_index:
            raise CompactedError(f"index {index} is compacted (first index {dummy_index + 1})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond last index {self.last_index()}")
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        return self.storage.term(index)

    def term_or_zero(self, index: Index) -> Term:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: Index, term: Term) -> bool:
        if index > self.last_index():
            return False  # the common case on a follower: a new entry; no exception
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: Index, term: Term) -> bool:
        """Raft §5.4.1: is a log ending at (term, last_index) at least as new as ours?"""
        our_last_term = self.last_term()
        return term > our_last_term or (term == our_last_term and last_index >= self.last_index())

    # -- Appending ----------------------------------------------------------

    def maybe_append(
        self, index: Index, log_term: Term, committed: Index, entries: tuple[Entry, ...]
    ) -> Index | None:
        """Follower side of AppendEntries. Returns the last new index, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new_index = index + len(entries)
        conflict_index = self.find_conflict(entries)
        if conflict_index != 0:
            assert conflict_index > self.committed, (
                f"entry {conflict_index} conflicts with a committed entry "
                f"(committed {self.committed})"
            )
            self.append(list(entries[conflict_index - (index + 1) :]))
        self.commit_to(min(committed, last_new_index))
        return last_new_index

    def append(self, entries: list[Entry]) -> Index:
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        assert after >= self.committed, f"append after {after} is below committed {self.committed}"
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> Index:
        """Index of the first entry that is new or conflicts; 0 if all are present."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: Index, term: Term) -> tuple[Index, Term]:
        """Largest (i, t) with i <= index and t <= term in this log: fast backtracking.

        Entries after the returned index cannot match a log whose entry at
        ``index`` has ``term``, so the leader may skip probing them.
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except CompactedError:
                return index, 0
            except UnavailableError:
                index = min(index, self.last_index())
                continue
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # -- Reading ------------------------------------------------------------

    def entries_from(self, low: Index, max_size_bytes: int) -> list[Entry]:
        last = self.last_index()
        if low > last:
            return []
        return self.slice(low, last + 1, max_size_bytes)

    def slice(self, low: Index, high: Index, max_size_bytes: int) -> list[Entry]:
        """Entries in [low, high), limited in size but never empty if any exist."""
        assert low <= high, (low, high)
        first = self.first_index()
        if low < first:
            raise CompactedError(f"index {low} is compacted (first index {first})")
        assert high <= self.last_index() + 1, (high, self.last_index())
        if low == high:
            return []
        entries: list[Entry] = []
        unstable_offset = self.unstable.offset
        if low < unstable_offset:
            entries = self.storage.entries(low, min(high, unstable_offset), max_size_bytes)
            if len(entries) < min(high, unstable_offset) - low:
                return entries  # storage hit the size limit
        if high > unstable_offset:
            unstable = self.unstable.slice(max(low, unstable_offset), high)
            entries = entries + unstable if entries else unstable
        return limit_size(entries, max_size_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_committed_entries(self) -> list[Entry]:
        low = max(self.applied + 1, self.first_index())
        if self.committed < low:
            return []
        return self.slice(low, self.committed + 1, self.max_committed_size_per_ready_bytes)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- Moving the indexes -------------------------------------------------

    def commit_to(self, index: Index) -> None:
        if index <= self.committed:
            return  # the commit index never moves backwards
        assert index <= self.last_index(), (
            f"commit {index} is out of range [last index {self.last_index()}]"
        )
        self.committed = index

    def maybe_commit(self, index: Index, term: Term) -> bool:
        """Raft §5.4.2: only an entry of the current term is committed by counting."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: Index) -> None:
        if index == 0:
            return
        assert self.applied <= index <= self.committed, (
            f"applied {index} out of range [{self.applied}, {self.committed}]"
        )
        self.applied = index

    def stable_to(self, index: Index, term: Term) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: Index) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)
