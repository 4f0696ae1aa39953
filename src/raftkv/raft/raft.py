"""The Raft state machine: one entry point (``step``), then dispatch by role.

This is the etcd-io/raft design in Python. ``Raft`` never performs I/O: it
queues outgoing messages in ``msgs`` (send now) and ``msgs_after_append``
(send only after this node's entries and hard state are durable), and it
reads the log through ``RaftLog``. ``RawNode`` turns that into ``Ready``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from raftkv.limits import RAFT_SNAPSHOT_TIMEOUT_ELECTIONS
from raftkv.raft import confchange
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import (
    CompactedError,
    ConfChangeInvalid,
    ProposalDropped,
    ReadIndexDropped,
    SnapshotTemporarilyUnavailable,
)
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import (
    NO_NODE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    Term,
    entry_size_bytes,
    payload_size_bytes,
    vote_response_type,
)
from raftkv.raft.quorum import VoteResult
from raftkv.raft.read_only import ReadOnly
from raftkv.raft.storage import LogStorage
from raftkv.raft.tracker import ProgressState, ProgressTracker

# Context of a vote request sent because of a leader transfer: it must win
# even though voters have heard from the current leader recently.
CAMPAIGN_TRANSFER = b"campaign-transfer"

M = MessageType


class StateType(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex result: reads for `context` may be served once applied >= index."""

    index: Index
    context: bytes


# Messages that may go out only after the sender's log and hard state are
# durable: they promise something about that state (thesis §3.8). A vote
# request carries the candidate's vote for itself, which must not be lost.
_AFTER_APPEND_TYPES = frozenset({M.APP_RESP, M.VOTE_RESP, M.PRE_VOTE_RESP, M.VOTE})


class Raft:
    def __init__(self, config: RaftConfig, storage: LogStorage) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self.rng = config.rng
        self.log = RaftLog(storage, config.max_committed_size_per_ready_bytes)
        hard_state, conf_state = storage.initial_state()
        self.tracker = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        self.read_only = ReadOnly()
        self.msgs: list[Message] = []
        self.msgs_after_append: list[Message] = []
        self.read_states: list[ReadState] = []
        self.pending_read_index_messages: list[Message] = []
        self.term: Term = 0
        self.vote: NodeId = NO_NODE
        self.lead: NodeId = NO_NODE
        self.state = StateType.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee: NodeId = NO_NODE
        self.campaign_after_apply = False  # a TimeoutNow waits for pending conf changes
        self.pending_conf_index: Index = 0
        self.uncommitted_size_bytes = 0
        self._install_conf_state(conf_state)
        if hard_state.term or hard_state.vote or hard_state.commit:
            self._load_hard_state(hard_state)
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NO_NODE)

    def _load_hard_state(self, hard_state: HardState) -> None:
        # A crash between persisting a snapshot and the hard state leaves the
        # durable commit below the snapshot; the snapshot itself proves its
        # index committed, so the larger of the two stands.
        committed = max(hard_state.commit, self.log.committed)
        last = self.log.last_index()
        assert committed <= last, f"hard state commit {committed} beyond last index {last}"
        self.log.committed = committed
        self.term = hard_state.term
        self.vote = hard_state.vote

    # -- Small queries ------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def promotable(self) -> bool:
        """Can this node campaign? Only voters that hold no pending snapshot can."""
        return self.id in self.tracker.voters and self.log.unstable.snapshot is None

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    # -- Sending ------------------------------------------------------------

    def send(self, message: Message) -> None:
        assert message.frm == self.id and message.to != NO_NODE, message
        if message.type in _AFTER_APPEND_TYPES:
            self.msgs_after_append.append(message)
        else:
            self.msgs.append(message)

    def _message(self, type_: MessageType, to: NodeId, **fields: object) -> Message:
        return Message(type_, to=to, frm=self.id, term=self.term, **fields)  # type: ignore[arg-type]

    def send_append(self, to: NodeId) -> None:
        self.maybe_send_append(to, send_if_empty=True)

    def maybe_send_append(self, to: NodeId, send_if_empty: bool) -> bool:
        """Send entries from pr.next to `to`; a snapshot if they are compacted."""
        progress = self.tracker.progress[to]
        if progress.is_paused():
            return False
        prev_index = progress.next - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries_from(prev_index + 1, self.config.max_size_per_msg_bytes)
        except CompactedError:
            return self.maybe_send_snapshot(to)
        if not entries and not send_if_empty:
            return False
        if entries:
            size_bytes = sum(entry_size_bytes(entry) for entry in entries)
            progress.sent_entries(entries[-1].index, size_bytes)
        else:
            progress.sent_entries(prev_index, 0)
        message = self._message(
            M.APP,
            to,
            index=prev_index,
            log_term=prev_term,
            entries=tuple(entries),
            commit=self.log.committed,
        )
        self.send(message)
        return True

    def maybe_send_snapshot(self, to: NodeId) -> bool:
        progress = self.tracker.progress[to]
        if not progress.recent_active:
            return False  # it may be down; do not spend a snapshot on it
        try:
            snapshot = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        assert not snapshot.is_empty, "need a non-empty snapshot to send"
        progress.become_snapshot(snapshot.metadata.index)
        self.send(self._message(M.SNAP, to, snapshot=snapshot))
        return True

    def send_heartbeat(self, to: NodeId, context: bytes) -> None:
        # Never tell a follower to commit beyond what it is known to hold.
        commit = min(self.tracker.progress[to].match, self.log.committed)
        self.send(self._message(M.HEARTBEAT, to, commit=commit, context=context))

    def bcast_append(self) -> None:
        for node in self.tracker.members():
            if node != self.id:
                self.send_append(node)

    def bcast_heartbeat(self, context: bytes = b"") -> None:
        for node in self.tracker.members():
            if node != self.id:
                self.send_heartbeat(node, context)

    # -- Role transitions ---------------------------------------------------

    def reset(self, term: Term) -> None:
        if self.term != term:
            self.term = term
            self.vote = NO_NODE
        self.lead = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_ticks + self.rng.randrange(
            self.config.election_ticks
        )
        self.lead_transferee = NO_NODE
        self.campaign_after_apply = False
        self.tracker.reset_votes()
        # Entries below the unstable offset are durable here (and agree with
        # the log); the leader counts only those for itself.
        persisted_last = self.log.unstable.offset - 1
        for node, progress in list(self.tracker.progress.items()):
            fresh = self.tracker.new_progress(self.log.last_index() + 1, progress.is_learner)
            if node == self.id:
                fresh.match = persisted_last
                fresh.recent_active = True
            self.tracker.progress[node] = fresh
        self.pending_conf_index = 0
        self.uncommitted_size_bytes = 0
        self.read_only.reset()
        self.pending_read_index_messages = []

    def become_follower(self, term: Term, lead: NodeId) -> None:
        self.reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_pre_candidate(self) -> None:
        assert self.state is not StateType.LEADER, "invalid transition [leader -> pre-candidate]"
        # Pre-vote changes neither term nor vote: a partitioned node that
        # keeps pre-campaigning cannot inflate the cluster's term.
        self.tracker.reset_votes()
        self.lead = NO_NODE
        self.state = StateType.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.state is not StateType.LEADER, "invalid transition [leader -> candidate]"
        self.reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def become_leader(self) -> None:
        assert self.state is StateType.CANDIDATE, (
            f"invalid transition [{self.state.value} -> leader]"
        )
        self.reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        self.tracker.progress[self.id].become_replicate()
        # No membership change until this term's first entry is committed
        # and everything before it applied (see docs/raft.md).
        self.pending_conf_index = self.log.last_index()
        appended = self.append_entries([Entry(term=0, index=0)])
        assert appended, "the empty entry of a new term must always fit"

    # -- Appending as leader ------------------------------------------------

    def append_entries(self, entries: list[Entry]) -> bool:
        """Assign term and index and append; False if the uncommitted bound is hit."""
        size_bytes = payload_size_bytes(entries)
        if (
            self.uncommitted_size_bytes > 0
            and size_bytes > 0
            and self.uncommitted_size_bytes + size_bytes > self.config.max_uncommitted_entries_bytes
        ):
            return False
        self.uncommitted_size_bytes += size_bytes
        term = self.term
        stamped = [
            Entry(term, index, entry.type, entry.data)
            for index, entry in enumerate(entries, self.log.last_index() + 1)
        ]
        self.log.append(stamped)
        return True

    def reduce_uncommitted_size(self, entries: list[Entry]) -> None:
        if self.state is StateType.LEADER:
            released = payload_size_bytes(entries)
            self.uncommitted_size_bytes = max(0, self.uncommitted_size_bytes - released)

    def maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.tracker.committed(), self.term)

    def on_applied(self, index: Index) -> None:
        self.log.applied_to(index)
        if self.campaign_after_apply and not self.has_unapplied_conf_change():
            self.campaign_after_apply = False
            self.hup(transfer=True)

    def on_persisted(self, index: Index, term: Term) -> None:
        """Entries up to (index, term) are durable here: the leader counts itself now."""
        self.log.stable_to(index, term)
        if self.state is not StateType.LEADER or not self.log.match_term(index, term):
            return
        progress = self.tracker.progress.get(self.id)
        if progress is None:
            return  # a leader removed from the configuration does not count itself
        if progress.maybe_update(index) and self.maybe_commit():
            self.after_commit_advanced()

    def after_commit_advanced(self) -> None:
        self.release_pending_read_index_messages()
        self.bcast_append()

    # -- Ticks --------------------------------------------------------------

    def tick(self) -> None:
        if self.state is StateType.LEADER:
            self.tick_heartbeat()
        else:
            self.tick_election()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(M.HUP, frm=self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        self.tick_snapshot_timeouts()
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                self.step(Message(M.CHECK_QUORUM, frm=self.id))
            if self.state is StateType.LEADER and self.lead_transferee != NO_NODE:
                self.lead_transferee = NO_NODE  # the transfer took too long; resume
        if self.state is not StateType.LEADER:
            return
        if self.id not in self.tracker.voters:
            self.transfer_after_removal()  # retry until some voter takes over
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(M.BEAT, frm=self.id))

    def tick_snapshot_timeouts(self) -> None:
        timeout_ticks = RAFT_SNAPSHOT_TIMEOUT_ELECTIONS * self.config.election_ticks
        for progress in self.tracker.progress.values():
            if progress.state is ProgressState.SNAPSHOT:
                progress.snapshot_elapsed_ticks += 1
                if progress.snapshot_elapsed_ticks >= timeout_ticks:
                    progress.pending_snapshot = 0  # assume the snapshot was lost
                    progress.become_probe()

    # -- Step: the one entry point -------------------------------------------

    def step(self, m: Message) -> None:
        if not self.step_term(m):
            return
        if m.reject and (m.type is M.VOTE_RESP or m.type is M.PRE_VOTE_RESP):
            self.learn_commit_from_rejection(m)  # safe in every role
        if m.type is M.HUP:
            self.hup(transfer=False)
        elif m.type is M.VOTE or m.type is M.PRE_VOTE:
            self.handle_vote_request(m)
        elif self.state is StateType.LEADER:
            self.step_leader(m)
        elif self.state is StateType.FOLLOWER:
            self.step_follower(m)
        else:
            self.step_candidate(m)

    def step_term(self, m: Message) -> bool:
        """Compare terms once for every message. False means: drop it."""
        if m.term == 0 or m.term == self.term:
            return True
        if m.term > self.term:
            if m.type is M.VOTE or m.type is M.PRE_VOTE:
                in_lease = (
                    self.config.check_quorum
                    and self.lead != NO_NODE
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    return False  # we heard from a live leader: do not disrupt it
            if m.type is M.PRE_VOTE or (m.type is M.PRE_VOTE_RESP and not m.reject):
                return True  # a pre-vote never changes our term
            lead = m.frm if m.type in (M.APP, M.HEARTBEAT, M.SNAP) else NO_NODE
            self.become_follower(m.term, lead)
            return True
        # m.term < self.term: a stale sender. Answer with our term (Raft §5.1)
        # so it catches up: a stale leader steps down, a stale candidate stops
        # campaigning in a dead term. Without this a learner, which never
        # campaigns, could wait forever for a leader of its own term.
        if m.type in (M.APP, M.HEARTBEAT):
            self.send(self._message(M.APP_RESP, m.frm))
        elif m.type is M.PRE_VOTE or m.type is M.VOTE:
            self.reject_vote(m)
        return False

    # -- Elections -----------------------------------------------------------

    def hup(self, transfer: bool) -> None:
        if self.state is StateType.LEADER or not self.promotable():
            return
        if self.has_unapplied_conf_change():
            # Our configuration may be about to change; apply it first. A
            # transfer request is honoured once the change is applied.
            self.campaign_after_apply = self.campaign_after_apply or transfer
            return
        if self.config.pre_vote and not transfer:
            self.campaign(M.PRE_VOTE, transfer=False)
        else:
            self.campaign(M.VOTE, transfer=transfer)

    def has_unapplied_conf_change(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        low = max(self.log.applied + 1, self.log.first_index())
        entries = self.log.slice(low, self.log.committed + 1, 1 << 62)
        return any(entry.type is EntryType.CONF_CHANGE for entry in entries)

    def campaign(self, vote_type: MessageType, transfer: bool) -> None:
        if vote_type is M.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        # Our own vote is recorded now, but the vote requests wait in
        # msgs_after_append until the candidate's hard state is durable.
        if self.poll(self.id, True) is VoteResult.WON:
            self.on_election_won(vote_type)
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        for node in sorted(self.tracker.voters):
            if node == self.id:
                continue
            self.send(
                Message(
                    vote_type,
                    to=node,
                    frm=self.id,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=context,
                )
            )

    def on_election_won(self, vote_type: MessageType) -> None:
        assert self.promotable(), "a node that cannot campaign won an election"
        if vote_type is M.PRE_VOTE:
            self.campaign(M.VOTE, transfer=False)
        else:
            self.become_leader()
            self.bcast_append()

    def poll(self, node: NodeId, granted: bool) -> VoteResult:
        self.tracker.record_vote(node, granted)
        return self.tracker.vote_result()

    def can_grant_vote(self, m: Message) -> bool:
        """Raft §5.2/§5.4.1: one vote per term, only for an up-to-date log."""
        can_vote = (
            self.vote == m.frm
            or (self.vote == NO_NODE and self.lead == NO_NODE)
            or (m.type is M.PRE_VOTE and m.term > self.term)
        )
        return can_vote and self.log.is_up_to_date(m.index, m.log_term)

    def handle_vote_request(self, m: Message) -> None:
        response_type = vote_response_type(m.type)
        if self.can_grant_vote(m):
            # A granted response carries the candidate's term, so the
            # candidate counts it; for a pre-vote that term is in the future.
            self.send(Message(response_type, to=m.frm, frm=self.id, term=m.term))
            if m.type is M.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.reject_vote(m)

    def reject_vote(self, m: Message) -> None:
        # The rejection carries our commit index and its term. A candidate
        # whose log holds the same entry may commit up to it (log matching
        # makes its prefix identical to our committed one). Without this, a
        # voter that never learned that its configuration changed could wait
        # forever for the vote of a node that has left the voter set.
        committed = self.log.committed
        self.send(
            self._message(
                vote_response_type(m.type),
                m.frm,
                reject=True,
                commit=committed,
                log_term=self.log.term_or_zero(committed),
            )
        )

    def learn_commit_from_rejection(self, m: Message) -> None:
        if m.commit > self.log.committed and self.log.match_term(m.commit, m.log_term):
            self.log.commit_to(m.commit)

    # -- Leader ---------------------------------------------------------------

    def step_leader(self, m: Message) -> None:
        if m.type is M.BEAT:
            self.bcast_heartbeat(self.read_only.last_pending_context())
        elif m.type is M.CHECK_QUORUM:
            self.check_quorum()
        elif m.type is M.PROP:
            self.leader_propose(m)
        elif m.type is M.READ_INDEX:
            self.leader_read_index(m)
        elif m.frm in self.tracker.progress:
            self.step_leader_from_member(m)

    def check_quorum(self) -> None:
        if not self.tracker.quorum_active():
            self.become_follower(self.term, NO_NODE)  # we lost contact with a quorum
            return
        for node, progress in self.tracker.progress.items():
            if node != self.id:
                progress.recent_active = False

    def leader_propose(self, m: Message) -> None:
        assert m.entries, "proposal without entries"
        local = m.frm == self.id
        if self.id not in self.tracker.progress:
            self.drop_proposal(local, "this node was removed from the cluster")
            return
        if self.lead_transferee != NO_NODE:
            self.drop_proposal(local, "leadership is being transferred")
            return
        entries = list(m.entries)
        conf_change_position = -1
        for position, entry in enumerate(entries):
            if entry.type is not EntryType.CONF_CHANGE:
                continue
            if conf_change_position >= 0:
                entries[position] = self.refuse_conf_change(local, "one change per batch")
                continue
            refusal = self.conf_change_refusal(ConfChange.decode(entry.data))
            if refusal is None:
                conf_change_position = position
            else:
                entries[position] = self.refuse_conf_change(local, refusal)
        first_index = self.log.last_index() + 1
        if not self.append_entries(entries):
            self.drop_proposal(local, "too many uncommitted entries")
            return
        if conf_change_position >= 0:
            self.pending_conf_index = first_index + conf_change_position
        self.bcast_append()

    def drop_proposal(self, local: bool, reason: str) -> None:
        if local:
            raise ProposalDropped(reason)

    def refuse_conf_change(self, local: bool, reason: str) -> Entry:
        """Refuse a conf change that breaks one-at-a-time (docs/raft.md)."""
        if local:
            raise ProposalDropped(reason)
        return Entry(term=0, index=0)  # keep the batch's shape, drop the change

    def conf_change_refusal(self, change: ConfChange) -> str | None:
        if self.pending_conf_index > self.log.applied:
            return "a configuration change is still pending"
        if not self.committed_entry_in_current_term():
            return "the leader has not committed an entry in its term yet"
        try:
            confchange.apply_change(self.tracker.conf_state(), change)
        except ConfChangeInvalid as error:
            return str(error)
        return None

    def leader_read_index(self, m: Message) -> None:
        if not self.committed_entry_in_current_term():
            # Our commit index may lag the true one until this term commits.
            if len(self.pending_read_index_messages) >= self.config.max_pending_read_index:
                self.drop_read(m, "too many pending reads")
                return
            self.pending_read_index_messages.append(m)
            return
        self.start_read_index(m)

    def start_read_index(self, m: Message) -> None:
        if self.tracker.is_singleton() and self.id in self.tracker.voters:
            self.respond_to_read_index(m, self.log.committed)
            return
        if len(self.read_only) >= self.config.max_pending_read_index:
            self.drop_read(m, "too many pending reads")
            return
        if not self.read_only.add_request(self.log.committed, m):
            return  # the same context is already waiting
        self.read_only.recv_ack(self.id, m.context)
        self.bcast_heartbeat(m.context)

    def drop_read(self, m: Message, reason: str) -> None:
        if m.frm == self.id:
            raise ReadIndexDropped(reason)

    def release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages or not self.committed_entry_in_current_term():
            return
        pending = self.pending_read_index_messages
        self.pending_read_index_messages = []
        for m in pending:
            self.start_read_index(m)

    def respond_to_read_index(self, m: Message, index: Index) -> None:
        if m.frm == self.id or m.frm == NO_NODE:
            self.read_states.append(ReadState(index=index, context=m.context))
        else:
            self.send(self._message(M.READ_INDEX_RESP, m.frm, index=index, context=m.context))

    def step_leader_from_member(self, m: Message) -> None:
        progress = self.tracker.progress[m.frm]
        if m.type is M.APP_RESP:
            progress.recent_active = True
            if m.reject:
                self.handle_append_rejection(m)
            else:
                self.handle_append_success(m)
        elif m.type is M.HEARTBEAT_RESP:
            self.handle_heartbeat_response(m)
        elif m.type is M.TRANSFER_LEADER:
            self.handle_transfer_leader(m)

    def handle_append_rejection(self, m: Message) -> None:
        progress = self.tracker.progress[m.frm]
        next_probe_index = m.reject_hint
        if m.log_term > 0:
            # Fast backtracking: skip every index whose term is above the
            # follower's term at reject_hint; none of them can match.
            next_probe_index = self.log.find_conflict_by_term(m.reject_hint, m.log_term)[0]
        if progress.maybe_decrease_to(m.index, next_probe_index):
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()
            self.send_append(m.frm)

    def handle_append_success(self, m: Message) -> None:
        progress = self.tracker.progress[m.frm]
        was_paused = progress.is_paused()
        updated = progress.maybe_update(m.index)
        if not updated and not (
            progress.state is ProgressState.PROBE and progress.match == m.index
        ):
            return  # a stale acknowledgement
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif (
            progress.state is ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot
        ):
            progress.become_probe()
            progress.become_replicate()
        elif progress.state is ProgressState.REPLICATE:
            progress.inflights.free_le(m.index)
        if self.maybe_commit():
            self.after_commit_advanced()
        elif was_paused:
            self.send_append(m.frm)
        while self.maybe_send_append(m.frm, send_if_empty=False):
            pass  # pipeline as far as flow control allows
        if m.frm == self.lead_transferee and progress.match == self.log.last_index():
            self.send(self._message(M.TIMEOUT_NOW, m.frm))

    def handle_heartbeat_response(self, m: Message) -> None:
        progress = self.tracker.progress[m.frm]
        progress.recent_active = True
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.inflights.full():
            progress.inflights.free_first_one()
        if progress.match < self.log.last_index():
            self.send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None:
            return
        if not self.tracker.has_quorum(acks):
            return
        for status in self.read_only.advance(m.context):
            self.respond_to_read_index(status.request, status.index)

    def handle_transfer_leader(self, m: Message) -> None:
        transferee = m.frm
        progress = self.tracker.progress[transferee]
        if progress.is_learner or transferee == self.id:
            return
        if self.lead_transferee == transferee:
            return  # already in progress
        self.start_transfer(transferee)

    def start_transfer(self, transferee: NodeId) -> None:
        progress = self.tracker.progress[transferee]
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if progress.match == self.log.last_index():
            self.send(self._message(M.TIMEOUT_NOW, transferee))
        else:
            self.send_append(transferee)

    # -- Candidate and follower ----------------------------------------------

    def step_candidate(self, m: Message) -> None:
        my_response_type = M.PRE_VOTE_RESP if self.state is StateType.PRE_CANDIDATE else M.VOTE_RESP
        if m.type is M.PROP:
            self.drop_proposal(m.frm == self.id, "no leader")
        elif m.type is M.READ_INDEX:
            self.drop_read(m, "no leader")
        elif m.type in (M.APP, M.HEARTBEAT, M.SNAP):
            self.become_follower(m.term, m.frm)  # a leader exists for our term
            self.step_follower(m)
        elif m.type is my_response_type:
            result = self.poll(m.frm, not m.reject)
            if result is VoteResult.WON:
                self.on_election_won(M.PRE_VOTE if m.type is M.PRE_VOTE_RESP else M.VOTE)
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NO_NODE)

    def step_follower(self, m: Message) -> None:
        if m.type is M.PROP:
            if self.lead == NO_NODE:
                self.drop_proposal(m.frm == self.id, "no leader")
                return
            self.send(Message(M.PROP, to=self.lead, frm=self.id, entries=m.entries))
        elif m.type is M.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append(m)
        elif m.type is M.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif m.type is M.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif m.type is M.TRANSFER_LEADER:
            if self.lead != NO_NODE:
                # Forwarded unchanged: `frm` names the transferee, not this node,
                # so it bypasses send()'s frm == self.id check.
                self.msgs.append(Message(M.TRANSFER_LEADER, to=self.lead, frm=m.frm))
        elif m.type is M.TIMEOUT_NOW:
            self.hup(transfer=True)
        elif m.type is M.READ_INDEX:
            if self.lead == NO_NODE:
                self.drop_read(m, "no leader")
                return
            self.send(Message(M.READ_INDEX, to=self.lead, frm=self.id, context=m.context))
        elif m.type is M.READ_INDEX_RESP:
            self.read_states.append(ReadState(index=m.index, context=m.context))

    def handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self.send(self._message(M.APP_RESP, m.frm, index=self.log.committed))
            return
        last_new_index = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new_index is not None:
            self.send(self._message(M.APP_RESP, m.frm, index=last_new_index))
            return
        # Reject, with a hint that lets the leader skip a whole conflicting term.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            self._message(
                M.APP_RESP,
                m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self.send(self._message(M.HEARTBEAT_RESP, m.frm, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self.restore(m.snapshot):
            self.send(self._message(M.APP_RESP, m.frm, index=self.log.last_index()))
        else:
            self.send(self._message(M.APP_RESP, m.frm, index=self.log.committed))

    def restore(self, snapshot: Snapshot) -> bool:
        """Install a leader's snapshot; False if we already have what it covers."""
        meta = snapshot.metadata
        if meta.index <= self.log.committed:
            return False
        assert self.state is StateType.FOLLOWER, "only a follower restores a snapshot"
        if self.log.match_term(meta.index, meta.term):
            # We hold the entries already; only the commit index moves.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self._install_conf_state(meta.conf_state)
        return True

    # -- Configuration ----------------------------------------------------------

    def _install_conf_state(self, conf_state: ConfState) -> None:
        tracker = self.tracker
        next_index = self.log.last_index() + 1
        members = conf_state.voters | conf_state.learners
        for node in list(tracker.progress):
            if node not in members:
                del tracker.progress[node]
        for node in members:
            is_learner = node in conf_state.learners
            progress = tracker.progress.get(node)
            if progress is None:
                progress = tracker.new_progress(next_index, is_learner)
                progress.recent_active = True  # give a new member a full timeout
                tracker.progress[node] = progress
            progress.is_learner = is_learner
        tracker.voters = conf_state.voters
        tracker.learners = conf_state.learners

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Install a committed conf change; the application calls this when applying it."""
        conf_state = confchange.apply_change(self.tracker.conf_state(), change)
        self._install_conf_state(conf_state)
        if self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE) and not self.promotable():
            # Removed or demoted mid-campaign: votes still in flight must not
            # make a non-voter leader (found by the simulator, seed 10425).
            self.become_follower(self.term, NO_NODE)
        if self.state is not StateType.LEADER:
            return conf_state
        if self.id not in conf_state.voters:
            # Removed or demoted. Stepping down at once could strand a voter
            # that has not yet learned this change is committed: its old
            # configuration still needs our vote, which our longer log denies.
            # So keep leading (our own ack no longer counts), freeze the log,
            # and hand leadership to the most caught-up voter.
            self.transfer_after_removal()
            return conf_state
        if self.lead_transferee != NO_NODE and self.lead_transferee not in conf_state.voters:
            self.lead_transferee = NO_NODE
        if self.maybe_commit():
            self.after_commit_advanced()
        else:
            self.bcast_append()  # new members learn about the log at once
        return conf_state

    def transfer_after_removal(self) -> None:
        if self.lead_transferee != NO_NODE:
            return
        voters = [node for node in sorted(self.tracker.voters) if node != self.id]
        if not voters:
            return
        best = max(voters, key=lambda node: self.tracker.progress[node].match)
        self.start_transfer(best)

    # -- Local-origin requests ---------------------------------------------------

    def report_snapshot(self, node: NodeId, failed: bool) -> None:
        progress = self.tracker.progress.get(node)
        if self.state is not StateType.LEADER or progress is None:
            return
        if progress.state is not ProgressState.SNAPSHOT:
            return
        if failed:
            progress.pending_snapshot = 0
        progress.become_probe()
        progress.probe_sent = True  # wait for a heartbeat before probing again

    def report_unreachable(self, node: NodeId) -> None:
        progress = self.tracker.progress.get(node)
        if self.state is not StateType.LEADER or progress is None:
            return
        if progress.state is ProgressState.REPLICATE:
            progress.become_probe()
