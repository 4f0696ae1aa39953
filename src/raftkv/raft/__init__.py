"""raftkv.raft: a pure (sans-I/O) Raft consensus core in the shape of etcd-io/raft.

Input is method calls on ``RawNode``; output is a ``Ready`` the caller
persists, sends and applies before calling ``advance``. Nothing here does
I/O, reads a clock or uses global randomness: time is ticks, and the only
randomness is the ``random.Random`` passed in ``RaftConfig.rng``.
"""

from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import (
    CompactedError,
    ConfChangeInvalid,
    ConfigInvalid,
    ProposalDropped,
    RaftError,
    ReadIndexDropped,
    StepLocalMessage,
    StepPeerNotFound,
    UnavailableError,
)
from raftkv.raft.messages import (
    NO_NODE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from raftkv.raft.raft import ReadState, StateType
from raftkv.raft.rawnode import RawNode, Ready, SoftState, Status
from raftkv.raft.storage import LogStorage, MemoryStorage, bootstrap_storage

__all__ = [
    "NO_NODE",
    "CompactedError",
    "ConfChange",
    "ConfChangeInvalid",
    "ConfChangeType",
    "ConfState",
    "ConfigInvalid",
    "Entry",
    "EntryType",
    "HardState",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RawNode",
    "ReadIndexDropped",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMessage",
    "StepPeerNotFound",
    "UnavailableError",
    "bootstrap_storage",
]
