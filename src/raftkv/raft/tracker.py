"""The leader's view of each follower: Progress, Inflights and the tracker.

Progress state transitions live here as methods, not strewn through raft.py.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterator

from raftkv.raft import quorum
from raftkv.raft.messages import ConfState, Index, NodeId


class Inflights:
    """Append messages sent in the replicate state and not yet acknowledged.

    Bounded both by message count and by entry bytes.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        assert max_count >= 1 and max_bytes >= 1
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._queue: deque[tuple[Index, int]] = deque()  # (last index, bytes)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, last_index: Index, size_bytes: int) -> None:
        assert not self.full(), "adding to full inflights"
        if self._queue:
            assert last_index > self._queue[-1][0], "inflight indexes must increase"
        self._queue.append((last_index, size_bytes))
        self.bytes += size_bytes

    def free_le(self, index: Index) -> None:
        """Free every message whose last index is <= index."""
        queue = self._queue
        while queue and queue[0][0] <= index:
            self.bytes -= queue.popleft()[1]
        assert self.bytes >= 0

    def free_first_one(self) -> None:
        if self._queue:
            self.bytes -= self._queue.popleft()[1]

    def full(self) -> bool:
        return len(self._queue) >= self.max_count or self.bytes >= self.max_bytes

    def reset(self) -> None:
        self._queue.clear()
        self.bytes = 0


class ProgressState(enum.Enum):
    PROBE = "probe"  # one append at a time, until the follower's match is found
    REPLICATE = "replicate"  # optimistic pipelining, bounded by Inflights
    SNAPSHOT = "snapshot"  # a snapshot is on its way; appends pause


class Progress:
    """What the leader knows about one follower's log."""

    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "snapshot_elapsed_ticks",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
    )

    def __init__(self, next_index: Index, inflights: Inflights, is_learner: bool) -> None:
        self.match: Index = 0
        self.next: Index = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot: Index = 0
        self.snapshot_elapsed_ticks = 0
        self.recent_active = False
        self.probe_sent = False
        self.inflights = inflights
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed_ticks = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # The snapshot (if it arrived) covers everything up to it.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: Index) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: Index) -> bool:
        """An acknowledgement up to index arrived; False if it was stale."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: Index, size_bytes: int) -> None:
        """Record an append carrying entries up to last_index."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflights.add(last_index, size_bytes)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
        else:
            raise AssertionError(f"sending entries in state {self.state}")

    def maybe_decrease_to(self, rejected: Index, match_hint: Index) -> bool:
        """A rejection of the append at `rejected` arrived; False if it was stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know a larger match
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        learner = " learner" if self.is_learner else ""
        return f"{self.state.value} match={self.match} next={self.next}{learner}"


class ProgressTracker:
    """The configuration plus a Progress for every member, and vote tallying."""

    def __init__(self, max_inflight_msgs: int, max_inflight_bytes: int) -> None:
        self.voters: frozenset[NodeId] = frozenset()
        self.learners: frozenset[NodeId] = frozenset()
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.max_inflight_msgs = max_inflight_msgs
        self.max_inflight_bytes = max_inflight_bytes

    def conf_state(self) -> ConfState:
        return ConfState(voters=self.voters, learners=self.learners)

    def new_progress(self, next_index: Index, is_learner: bool) -> Progress:
        inflights = Inflights(self.max_inflight_msgs, self.max_inflight_bytes)
        return Progress(next_index, inflights, is_learner)

    def members(self) -> Iterator[NodeId]:
        return iter(sorted(self.progress))

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> Index:
        match = {node: pr.match for node, pr in self.progress.items()}
        return quorum.committed_index(self.voters, match)

    def has_quorum(self, nodes: Collection[NodeId]) -> bool:
        """Do these nodes include a majority of the voters?"""
        agreeing = dict.fromkeys(nodes, True)
        return quorum.vote_result(self.voters, agreeing) is quorum.VoteResult.WON

    def quorum_active(self) -> bool:
        return self.has_quorum([node for node, pr in self.progress.items() if pr.recent_active])

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def vote_result(self) -> quorum.VoteResult:
        return quorum.vote_result(self.voters, self.votes)
