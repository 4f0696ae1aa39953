"""Values that cross the core's boundary: entries, hard state, snapshots, messages.

All of them are immutable slotted dataclasses. Identifiers and positions are
plain ints (``NodeId``, ``Term`` and ``Index`` are aliases that document
intent without a runtime call on the hot path).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TypeAlias

from raftkv.limits import RAFT_ENTRY_OVERHEAD_BYTES

NodeId: TypeAlias = int
Term: TypeAlias = int
Index: TypeAlias = int

NO_NODE: NodeId = 0
"""The id that means "nobody": no leader known, no vote cast."""


class EntryType(enum.Enum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: Index
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


def entry_size_bytes(entry: Entry) -> int:
    """Size used for message and inflight accounting."""
    return len(entry.data) + RAFT_ENTRY_OVERHEAD_BYTES


def payload_size_bytes(entries: list[Entry] | tuple[Entry, ...]) -> int:
    """Size used for the uncommitted-entries bound: payload bytes only."""
    return sum(len(entry.data) for entry in entries)


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it goes out."""

    term: Term = 0
    vote: NodeId = NO_NODE
    commit: Index = 0


EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: who votes and who only learns."""

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is both voter and learner"
        assert NO_NODE not in self.voters and NO_NODE not in self.learners

    def describe(self) -> str:
        voters = ",".join(str(node) for node in sorted(self.voters))
        learners = ",".join(str(node) for node in sorted(self.learners))
        return f"voters=({voters}) learners=({learners})"


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: Index = 0
    term: Term = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


class ConfChangeType(enum.Enum):
    ADD_NODE = 0  # add a voter, or promote a learner to voter
    REMOVE_NODE = 1
    ADD_LEARNER = 2  # add a learner, or demote a voter to learner


_CONF_CHANGE_HEADER = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change; raftkv changes one voter at a time (docs/raft.md)."""

    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        return _CONF_CHANGE_HEADER.pack(self.type.value, self.node_id) + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        if len(data) < _CONF_CHANGE_HEADER.size:
            raise ValueError(f"conf change record is {len(data)} bytes, too short")
        type_value, node_id = _CONF_CHANGE_HEADER.unpack_from(data)
        context = data[_CONF_CHANGE_HEADER.size :]
        return ConfChange(ConfChangeType(type_value), node_id, context)

    def describe(self) -> str:
        return f"{self.type.name.lower()} {self.node_id}"


class MessageType(enum.Enum):
    # Local messages: the node steps them into itself; they never cross the wire.
    HUP = "hup"
    BEAT = "beat"
    CHECK_QUORUM = "check_quorum"
    # Client requests, which followers forward to the leader.
    PROP = "prop"
    READ_INDEX = "read_index"
    READ_INDEX_RESP = "read_index_resp"
    TRANSFER_LEADER = "transfer_leader"
    # Replication.
    APP = "app"
    APP_RESP = "app_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    SNAP = "snap"
    # Elections.
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    TIMEOUT_NOW = "timeout_now"


LOCAL_MESSAGE_TYPES = frozenset({MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM})

RESPONSE_MESSAGE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.READ_INDEX_RESP,
    }
)


def vote_response_type(vote_type: MessageType) -> MessageType:
    if vote_type is MessageType.VOTE:
        return MessageType.VOTE_RESP
    assert vote_type is MessageType.PRE_VOTE, vote_type
    return MessageType.PRE_VOTE_RESP


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Which fields matter depends on ``type``."""

    type: MessageType
    to: NodeId = NO_NODE
    frm: NodeId = NO_NODE
    term: Term = 0
    log_term: Term = 0
    index: Index = 0
    entries: tuple[Entry, ...] = ()
    commit: Index = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: Index = 0
    context: bytes = b""

    def describe(self) -> str:
        """One line for transcripts and simulator traces."""
        parts = [f"{self.frm}->{self.to} {self.type.name} term={self.term}"]
        if self.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
            parts.append(f"log={self.log_term}/{self.index}")
        elif self.type in (MessageType.APP_RESP, MessageType.READ_INDEX_RESP):
            parts.append(f"index={self.index}")
        if self.commit:
            parts.append(f"commit={self.commit}")
        if self.entries:
            parts.append("entries=[" + " ".join(describe_entry(e) for e in self.entries) + "]")
        if self.snapshot is not None:
            meta = self.snapshot.metadata
            parts.append(f"snapshot={meta.term}/{meta.index} {meta.conf_state.describe()}")
        if self.reject:
            parts.append(f"rejected (hint: {self.reject_hint}/{self.log_term})")
        if self.context:
            parts.append(f"context={self.context!r}")
        return " ".join(parts)


def describe_entry(entry: Entry) -> str:
    if entry.type is EntryType.CONF_CHANGE:
        return f"{entry.term}/{entry.index} CONF({ConfChange.decode(entry.data).describe()})"
    if not entry.data:
        return f"{entry.term}/{entry.index} EMPTY"
    return f"{entry.term}/{entry.index} {entry.data.decode('utf-8', 'backslashreplace')}"
