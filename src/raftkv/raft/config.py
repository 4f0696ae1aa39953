"""Configuration of one Raft node. Time is in ticks; randomness is injected."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftkv import limits
from raftkv.raft.errors import ConfigInvalid
from raftkv.raft.messages import NO_NODE, Index, NodeId


@dataclass(slots=True)
class RaftConfig:
    id: NodeId
    # Followers campaign after a random timeout in [election_ticks, 2 * election_ticks).
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    # The index the application has already applied (0 for a fresh state machine).
    applied: Index = 0
    check_quorum: bool = True
    pre_vote: bool = True
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    max_size_per_msg_bytes: int = limits.RAFT_MAX_SIZE_PER_MSG_BYTES
    max_inflight_msgs: int = limits.RAFT_MAX_INFLIGHT_MSGS
    max_inflight_bytes: int = limits.RAFT_MAX_INFLIGHT_BYTES
    max_uncommitted_entries_bytes: int = limits.RAFT_MAX_UNCOMMITTED_ENTRIES_BYTES
    max_committed_size_per_ready_bytes: int = limits.RAFT_MAX_COMMITTED_SIZE_PER_READY_BYTES
    max_pending_read_index: int = limits.RAFT_MAX_PENDING_READ_INDEX

    def validate(self) -> None:
        """Raise ConfigInvalid naming the first setting that is out of range."""
        if self.id == NO_NODE:
            raise ConfigInvalid("id: 0 is reserved for 'no node'")
        if self.heartbeat_ticks <= 0:
            raise ConfigInvalid("heartbeat_ticks must be greater than 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigInvalid("election_ticks must be greater than heartbeat_ticks")
        if self.applied < 0:
            raise ConfigInvalid("applied must not be negative")
        if self.max_inflight_msgs <= 0:
            raise ConfigInvalid("max_inflight_msgs must be greater than 0")
        if self.max_inflight_bytes < self.max_size_per_msg_bytes:
            raise ConfigInvalid("max_inflight_bytes must be >= max_size_per_msg_bytes")
        if self.max_uncommitted_entries_bytes <= 0:
            raise ConfigInvalid("max_uncommitted_entries_bytes must be greater than 0")
        if self.max_committed_size_per_ready_bytes <= 0:
            raise ConfigInvalid("max_committed_size_per_ready_bytes must be greater than 0")
        if self.max_pending_read_index <= 0:
            raise ConfigInvalid("max_pending_read_index must be greater than 0")
