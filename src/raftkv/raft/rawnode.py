"""RawNode: the sans-I/O interface of the consensus core.

Input is method calls (``tick``, ``step``, ``propose``, ``read_index``, ...).
Output is a ``Ready``. The caller must handle each Ready in this order:

  1. persist ``snapshot``, then ``entries``, then ``hard_state`` (fsync once);
  2. send ``messages`` (these may also go out before step 1);
  3. send ``persisted_messages`` (only after step 1 is durable);
  4. apply ``snapshot`` and ``committed_entries`` to the state machine, and
     serve ``read_states`` once applied;
  5. call ``advance(ready)``.

A new Ready is available only after the previous one was advanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv import limits
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import (
    ProposalDropped,
    ReadIndexDropped,
    StepLocalMessage,
    StepPeerNotFound,
)
from raftkv.raft.messages import (
    LOCAL_MESSAGE_TYPES,
    NO_NODE,
    RESPONSE_MESSAGE_TYPES,
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
)
from raftkv.raft.raft import Raft, ReadState, StateType
from raftkv.raft.storage import LogStorage


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state, reported when it changes; never persisted."""

    lead: NodeId
    state: StateType


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    # Whether persisting this Ready needs an fsync before its persisted_messages go out:
    # new entries, a snapshot, or a new term or vote (etcd's MustSync). A hard state that
    # only moves the commit index is written but not synced: a commit index lost in a
    # crash is learned again from the leader, and it only names entries that are already
    # durable on a quorum. The next synced Ready makes it durable too.
    must_sync: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    term: Term
    vote: NodeId
    commit: Index
    applied: Index
    lead: NodeId
    state: StateType
    conf_state: ConfState
    progress: dict[NodeId, str]


class RawNode:
    def __init__(self, config: RaftConfig, storage: LogStorage) -> None:
        self.raft = Raft(config, storage)
        self._prev_soft_state = self._soft_state()
        self._prev_hard_state = self.raft.hard_state()
        self._outstanding: Ready | None = None

    # -- Input ------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (tests, and operators forcing an election)."""
        self.raft.step(Message(MessageType.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose one entry; raises ProposalDropped if it cannot be appended or forwarded."""
        self.propose_batch([data])

    def propose_batch(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        if len(payloads) > limits.RAFT_MAX_ENTRIES_PER_PROPOSAL:
            raise ProposalDropped(
                f"{len(payloads)} entries exceed the per-proposal limit "
                f"{limits.RAFT_MAX_ENTRIES_PER_PROPOSAL}"
            )
        normal = EntryType.NORMAL
        entries = tuple([Entry(0, 0, normal, payload) for payload in payloads])
        self.raft.step(Message(MessageType.PROP, frm=self.raft.id, entries=entries))

    def propose_conf_change(self, change: ConfChange) -> None:
        entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=change.encode())
        self.raft.step(Message(MessageType.PROP, frm=self.raft.id, entries=(entry,)))

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Call when a committed CONF_CHANGE entry is applied; returns the new membership."""
        return self.raft.apply_conf_change(change)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; the answer arrives as a ReadState with this context."""
        if not context or len(context) > limits.RAFT_MAX_READ_CONTEXT_BYTES:
            raise ReadIndexDropped(
                f"context must be 1..{limits.RAFT_MAX_READ_CONTEXT_BYTES} bytes"
            )
        self.raft.step(Message(MessageType.READ_INDEX, frm=self.raft.id, context=context))

    def transfer_leader(self, transferee: NodeId) -> None:
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def step(self, message: Message) -> None:
        """Hand a message received from a peer to the core."""
        if message.type in LOCAL_MESSAGE_TYPES:
            raise StepLocalMessage(f"{message.type.name} is local; it never crosses the wire")
        if (
            message.type in RESPONSE_MESSAGE_TYPES
            and message.frm not in self.raft.tracker.progress
            and self.raft.state is StateType.LEADER
        ):
            # A response from a node outside the configuration is meaningless.
            raise StepPeerNotFound(f"response from unknown node {message.frm}")
        assert message.to == self.raft.id or message.to == NO_NODE, message
        self.raft.step(message)

    def report_unreachable(self, node: NodeId) -> None:
        self.raft.report_unreachable(node)

    def report_snapshot(self, node: NodeId, failed: bool) -> None:
        self.raft.report_snapshot(node, failed)

    # -- Output -----------------------------------------------------------------

    def _soft_state(self) -> SoftState:
        return SoftState(lead=self.raft.lead, state=self.raft.state)

    def has_ready(self) -> bool:
        assert self._outstanding is None, "advance the previous Ready first"
        raft = self.raft
        return bool(
            raft.msgs
            or raft.msgs_after_append
            or raft.read_states
            or raft.log.unstable.entries
            or raft.log.unstable.snapshot is not None
            or raft.log.has_next_committed_entries()
            or self._soft_state() != self._prev_soft_state
            or raft.hard_state() != self._prev_hard_state
        )

    def ready(self) -> Ready:
        assert self._outstanding is None, "advance the previous Ready first"
        raft = self.raft
        soft_state = self._soft_state()
        hard_state = raft.hard_state()
        previous = self._prev_hard_state
        entries = raft.log.unstable_entries()
        snapshot = raft.log.unstable.snapshot
        ready = Ready(
            soft_state=soft_state if soft_state != self._prev_soft_state else None,
            hard_state=hard_state if hard_state != previous else None,
            snapshot=snapshot,
            entries=entries,
            committed_entries=raft.log.next_committed_entries(),
            messages=raft.msgs,
            persisted_messages=raft.msgs_after_append,
            read_states=raft.read_states,
            must_sync=bool(entries)
            or snapshot is not None
            or hard_state.term != previous.term
            or hard_state.vote != previous.vote,
        )
        raft.msgs = []
        raft.msgs_after_append = []
        raft.read_states = []
        if ready.soft_state is not None:
            self._prev_soft_state = ready.soft_state
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The caller has persisted, sent and applied everything in ready."""
        assert ready is self._outstanding, "advance must be given the last Ready"
        self._outstanding = None
        raft = self.raft
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.snapshot is not None:
            raft.log.stable_snapshot_to(ready.snapshot.metadata.index)
            if ready.snapshot.metadata.index > raft.log.applied:
                raft.log.applied_to(ready.snapshot.metadata.index)
        if ready.entries:
            last = ready.entries[-1]
            raft.on_persisted(last.index, last.term)
        if ready.committed_entries:
            raft.reduce_uncommitted_size(ready.committed_entries)
            raft.on_applied(ready.committed_entries[-1].index)

    # -- Inspection -------------------------------------------------------------

    def status(self) -> Status:
        raft = self.raft
        progress = {}
        if raft.state is StateType.LEADER:
            progress = {node: pr.describe() for node, pr in sorted(raft.tracker.progress.items())}
        return Status(
            id=raft.id,
            term=raft.term,
            vote=raft.vote,
            commit=raft.log.committed,
            applied=raft.log.applied,
            lead=raft.lead,
            state=raft.state,
            conf_state=raft.tracker.conf_state(),
            progress=progress,
        )
