"""Typed errors of the consensus core.

Operating errors (a proposal refused, a log position compacted away) are
exceptions the caller handles. Programming errors inside the core are
``assert`` statements, which stay on in production.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error the consensus core raises."""


class ProposalDropped(RaftError):
    """The proposal was not appended; retrying later, elsewhere, may succeed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"proposal dropped: {reason}")
        self.reason = reason


class ReadIndexDropped(RaftError):
    """The read could not be started; retrying later, elsewhere, may succeed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"read index dropped: {reason}")
        self.reason = reason


class ConfigInvalid(RaftError):
    """The node configuration violates a documented constraint."""


class ConfChangeInvalid(RaftError):
    """A membership change would break a configuration invariant."""


class StepLocalMessage(RaftError):
    """A local-only message type was handed to ``RawNode.step``."""


class StepPeerNotFound(RaftError):
    """A response arrived from a node that is not in the configuration."""


class CompactedError(RaftError):
    """The requested log position is below the first index (compacted)."""


class UnavailableError(RaftError):
    """The requested log position is beyond the last index."""


class SnapshotTemporarilyUnavailable(RaftError):
    """Storage cannot produce a snapshot right now; the leader retries later."""


class SnapshotOutOfDate(RaftError):
    """A snapshot older than the current one was offered to storage."""
