"""The terms of the WAL's log, without its entries.

The writer must know whether a snapshot marker (m, t) matches its log (entry m
has term t: a local snapshot) or not (a leader's snapshot that replaced the
log), and records that in the marker. A log's terms form a few runs of equal
terms, so (first index, term) per run is enough: its size is the number of
term changes since the last snapshot, not the number of entries.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from raftkv.raft.messages import Entry, Index, Term


class TermRuns:
    def __init__(self, snapshot_index: Index, snapshot_term: Term) -> None:
        self._base_index = snapshot_index
        self._base_term = snapshot_term
        self._starts: list[Index] = []  # first index of each run, increasing
        self._terms: list[Term] = []  # term of each run, non-decreasing
        self.last_index = snapshot_index

    def append(self, entries: Sequence[Entry]) -> None:
        """Entries continue the log at entries[0].index, dropping what follows."""
        if not entries:
            return
        first = entries[0].index
        assert self._base_index < first <= self.last_index + 1, (first, self.last_index)
        cut = bisect.bisect_left(self._starts, first)
        del self._starts[cut:]
        del self._terms[cut:]
        for entry in entries:
            if not self._terms or self._terms[-1] != entry.term:
                assert not self._terms or self._terms[-1] < entry.term, "terms decrease"
                self._starts.append(entry.index)
                self._terms.append(entry.term)
        self.last_index = entries[-1].index

    def term_at(self, index: Index) -> Term | None:
        if index == self._base_index:
            return self._base_term
        if not self._base_index < index <= self.last_index:
            return None
        run = bisect.bisect_right(self._starts, index) - 1
        assert run >= 0, (index, self._starts)
        return self._terms[run]

    def snapshot(self, index: Index, term: Term) -> bool:
        """Apply a snapshot marker; True if it replaces the log (a leader's snapshot)."""
        assert index > self._base_index, (index, self._base_index)
        replaces_log = self.term_at(index) != term
        if replaces_log:
            self._starts.clear()
            self._terms.clear()
            self.last_index = index
        else:
            self._drop_through(index)
        self._base_index = index
        self._base_term = term
        return replaces_log

    def _drop_through(self, index: Index) -> None:
        """Forget runs wholly at or below index; the run holding index now starts after it."""
        keep = bisect.bisect_right(self._starts, index) - 1
        del self._starts[: max(keep, 0)]
        del self._terms[: max(keep, 0)]
        if self._starts and self._starts[0] <= index:
            if index + 1 <= self.last_index:
                self._starts[0] = index + 1
            else:
                self._starts.clear()
                self._terms.clear()
