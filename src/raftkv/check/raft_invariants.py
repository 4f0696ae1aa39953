"""Raft safety invariants, checked against every node after every step.

The checker sees what nodes persist, commit and apply, and keeps the
canonical facts (one leader per term, one entry per (index, term), one entry
per applied index). Any disagreement is an InvariantViolation.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.errors import CompactedError, UnavailableError
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import Entry, EntryType, Index, NodeId, Term


class InvariantViolation(AssertionError):
    """A safety property of Raft was broken. The message says which and where."""


@dataclass(frozen=True, slots=True)
class _EntryFact:
    type: EntryType
    data: bytes
    previous_term: Term | None  # None when the previous entry was compacted away


class RaftInvariantChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[Term, NodeId] = {}
        self.entry_facts: dict[tuple[Index, Term], _EntryFact] = {}
        self.committed_terms: dict[Index, Term] = {}
        self.applied_entries: dict[Index, Entry] = {}
        self.last_commit: dict[NodeId, Index] = {}
        self.persisted_commit: dict[NodeId, Index] = {}
        self.checks = 0

    # At most one leader per term (§5.2).
    def on_leader(self, node: NodeId, term: Term, log: RaftLog) -> None:
        self.checks += 1
        leader = self.leader_of_term.get(term)
        if leader is None:
            self.leader_of_term[term] = node
            self._check_leader_completeness(node, term, log)
        elif leader != node:
            raise InvariantViolation(f"two leaders in term {term}: {leader} and {node}")

    # Leader completeness (§5.4): a leader holds every entry committed before its term.
    def _check_leader_completeness(self, node: NodeId, term: Term, log: RaftLog) -> None:
        first = log.first_index()
        for index, committed_term in self.committed_terms.items():
            if index < first or committed_term >= term:
                continue
            try:
                held_term = log.term(index)
            except (CompactedError, UnavailableError):
                held_term = 0
            if held_term != committed_term:
                raise InvariantViolation(
                    f"leader completeness: leader {node} of term {term} has term {held_term} "
                    f"at committed index {index} (committed term {committed_term})"
                )

    # Log matching (§5.3): one (index, term) names one entry, and the same prefix.
    def on_persist(
        self, node: NodeId, entries: list[Entry], previous_terms: list[Term | None]
    ) -> None:
        self.checks += 1
        for entry, previous_term in zip(entries, previous_terms, strict=True):
            fact = _EntryFact(entry.type, entry.data, previous_term)
            known = self.entry_facts.setdefault((entry.index, entry.term), fact)
            if known.type != fact.type or known.data != fact.data:
                raise InvariantViolation(
                    f"log matching: node {node} persisted a different entry at "
                    f"{entry.term}/{entry.index}: {fact.data!r} vs {known.data!r}"
                )
            if (
                known.previous_term is not None
                and previous_term is not None
                and known.previous_term != previous_term
            ):
                raise InvariantViolation(
                    f"log matching: entry {entry.term}/{entry.index} on node {node} follows "
                    f"term {previous_term}, elsewhere term {known.previous_term}"
                )

    # The commit index never regresses, in memory or on disk.
    def on_commit(self, node: NodeId, commit: Index, log: RaftLog) -> None:
        self.checks += 1
        previous = self.last_commit.get(node, 0)
        if commit < previous:
            raise InvariantViolation(f"node {node} commit index went back: {previous} -> {commit}")
        self.last_commit[node] = commit
        for index in range(max(previous + 1, log.first_index()), commit + 1):
            term = log.term(index)
            known = self.committed_terms.setdefault(index, term)
            if known != term:
                raise InvariantViolation(
                    f"node {node} committed term {term} at {index}, another node term {known}"
                )

    def on_restart(self, node: NodeId, persisted_commit: Index) -> None:
        """A restarted node's in-memory commit starts again from its durable commit."""
        previous = self.persisted_commit.get(node, 0)
        if persisted_commit < previous:
            raise InvariantViolation(
                f"node {node} durable commit index went back: {previous} -> {persisted_commit}"
            )
        self.last_commit[node] = persisted_commit

    def on_persist_commit(self, node: NodeId, commit: Index) -> None:
        previous = self.persisted_commit.get(node, 0)
        if commit < previous:
            raise InvariantViolation(
                f"node {node} durable commit index went back: {previous} -> {commit}"
            )
        self.persisted_commit[node] = commit

    # State machine safety (§5.4.3): no two nodes apply different entries at one index.
    def on_apply(self, node: NodeId, entry: Entry) -> None:
        self.checks += 1
        known = self.applied_entries.setdefault(entry.index, entry)
        if known != entry:
            raise InvariantViolation(
                f"state machine safety: node {node} applied {entry.term}/{entry.index} "
                f"{entry.data!r}, another node applied {known.term}/{known.index} {known.data!r}"
            )
