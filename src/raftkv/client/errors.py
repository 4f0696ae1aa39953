"""Typed client errors, mapped from etcd's gRPC status messages, and the retry rule.

Callers catch a class (`except LeaseNotFoundError`) instead of parsing strings. Every
error raised by the client is a `ClientError`, which keeps the gRPC status code and the
server's message.

The retry rule (see `RetryVerdict`): a failed call is retried on another endpoint when
the error is `NOT_APPLIED` (the request provably never reached a state machine: the
connection was refused, or the member answered "no leader" / "too many requests" before
proposing), whatever the call. It is retried when the error is `AMBIGUOUS` (the endpoint
went away or timed out mid-call, so a write may or may not have been applied) only if
the call is safe to repeat. Everything else is `FINAL` and raised at once.
"""

from __future__ import annotations

import enum

import grpc


class ClientError(Exception):
    """Base of every client error: the gRPC status code (None if no RPC) and the message."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- Availability ------------------------------------------------------------------


class UnavailableError(ClientError):
    """No endpoint could serve the call (connection failures, no leader, retries used up)."""


class ConnectError(UnavailableError):
    """The endpoint did not accept a connection; nothing was sent to it."""


class NoLeaderError(UnavailableError):
    """The member has no Raft leader ("etcdserver: no leader")."""


class LeaderChangedError(UnavailableError):
    """The leader changed while the request waited ("etcdserver: leader changed")."""


class RequestTimeoutError(ClientError):
    """The request timed out, on the server or at the client's deadline. A write may have
    been applied."""


class TooManyRequestsError(ClientError):
    """The member refused the request because its apply queue is full."""


class NotLeaderError(ClientError):
    """The request must go to the leader ("etcdserver: not leader"), e.g. MoveLeader."""


# --- KV ----------------------------------------------------------------------------


class CompactedError(ClientError):
    """The requested revision has been compacted away."""


class FutureRevisionError(ClientError):
    """The requested revision is newer than the store's revision."""


class KeyNotFoundError(ClientError):
    """A put with ignore_value / ignore_lease named a key that does not exist."""


class EmptyKeyError(ClientError):
    """The request named no key."""


class TooManyOpsError(ClientError):
    """A txn has more operations than the server allows (--max-txn-ops)."""


class DuplicateKeyError(ClientError):
    """A txn writes the same key twice."""


class RequestTooLargeError(ClientError):
    """The request is larger than the server's --max-request-bytes."""


class NoSpaceError(ClientError):
    """The backend quota is exhausted (NOSPACE alarm): only reads and deletes are accepted
    until compaction, defragmentation and `alarm_disarm`. The write may have been applied."""


# --- Leases ------------------------------------------------------------------------


class LeaseNotFoundError(ClientError):
    """The lease does not exist (never granted, revoked or expired)."""


class LeaseExistsError(ClientError):
    """A grant asked for a lease id that is already in use."""


class LeaseTTLTooLargeError(ClientError):
    """A grant asked for a TTL above the server's maximum."""


# --- Cluster -----------------------------------------------------------------------


class MemberNotFoundError(ClientError):
    """No member has the given id."""


class MemberExistsError(ClientError):
    """A member with this id or these peer URLs already exists."""


class MemberNotLearnerError(ClientError):
    """Only a learner can be promoted."""


class LearnerNotReadyError(ClientError):
    """The learner is not yet in sync with the leader, so it cannot be promoted."""


class TooManyLearnersError(ClientError):
    """The cluster already has the maximum number of learners."""


class UnhealthyClusterError(ClientError):
    """A membership change would leave too few started members."""


class BadLeaderTransfereeError(ClientError):
    """MoveLeader named a member that cannot become leader (e.g. a learner)."""


class PermissionDeniedError(ClientError):
    """The authenticated user may not do this."""


# --- Watch -------------------------------------------------------------------------


class WatchCompactedError(CompactedError):
    """The watch's next revision was compacted before it could be delivered: events were
    lost. Re-read the state and watch again from `compact_revision` (or later)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"watch revision compacted; oldest available revision is {compact_revision}",
            grpc.StatusCode.OUT_OF_RANGE,
        )
        self.compact_revision = compact_revision


class WatchCanceledError(ClientError):
    """The server canceled the watch for a reason other than compaction."""


# --- Recipes (etcd's concurrency package) -------------------------------------------


class SessionExpiredError(ClientError):
    """The session lease behind a lock or a campaign expired or was revoked."""


class LockNotHeldError(ClientError):
    """release() on a lock that this Lock object does not hold."""


class ElectionNotLeaderError(ClientError):
    """proclaim() or resign() by a candidate that is not the leader."""


class ElectionNoLeaderError(ClientError):
    """The election has no leader."""


# --- Mapping from the server's message ---------------------------------------------

# etcd's error strings (api/v3rpc/rpctypes), without the "etcdserver: " prefix, to the
# class raised for them; each is matched as a substring of the status details.
_MESSAGE_TO_ERROR: tuple[tuple[str, type[ClientError]], ...] = (
    # The election service's own messages first: they contain "no leader" / "not leader".
    ("election: not leader", ElectionNotLeaderError),
    ("election: no leader", ElectionNoLeaderError),
    ("mvcc: required revision has been compacted", CompactedError),
    ("mvcc: required revision is a future revision", FutureRevisionError),
    ("mvcc: database space exceeded", NoSpaceError),
    ("requested lease not found", LeaseNotFoundError),
    ("lease already exists", LeaseExistsError),
    ("too large lease TTL", LeaseTTLTooLargeError),
    ("key is not provided", EmptyKeyError),
    ("key not found", KeyNotFoundError),
    ("too many operations in txn request", TooManyOpsError),
    ("duplicate key given in txn request", DuplicateKeyError),
    ("request is too large", RequestTooLargeError),
    ("too many requests", TooManyRequestsError),
    ("no leader", NoLeaderError),
    ("not leader", NotLeaderError),
    ("leader changed", LeaderChangedError),
    ("request timed out", RequestTimeoutError),
    ("member not found", MemberNotFoundError),
    ("member ID already exist", MemberExistsError),
    ("Peer URLs already exists", MemberExistsError),
    ("can only promote a learner member which is in sync", LearnerNotReadyError),
    ("can only promote a learner member", MemberNotLearnerError),
    ("too many learner members", TooManyLearnersError),
    ("not enough started members", UnhealthyClusterError),
    ("unhealthy cluster", UnhealthyClusterError),
    ("bad leader transferee", BadLeaderTransfereeError),
    ("permission denied", PermissionDeniedError),
    ("session expired", SessionExpiredError),
)

_CODE_TO_ERROR: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RequestTimeoutError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def error_from_status(code: grpc.StatusCode, details: str) -> ClientError:
    """The typed error for a gRPC status (most specific message first, then the code)."""
    for fragment, error_class in _MESSAGE_TO_ERROR:
        if fragment in details:
            return error_class(details, code)
    return _CODE_TO_ERROR.get(code, ClientError)(details, code)


def error_from_rpc(rpc_error: grpc.aio.AioRpcError) -> ClientError:
    return error_from_status(rpc_error.code(), rpc_error.details() or "")


class RetryVerdict(enum.Enum):
    NOT_APPLIED = "not applied"  # provably never reached a state machine: retry any call
    AMBIGUOUS = "ambiguous"  # may have been applied: retry only calls safe to repeat
    FINAL = "final"  # a definite answer: never retry


# Status details proving the request never left the client or was refused before the
# member proposed it (gRPC's words for a failed connect; etcd's checks done up front).
_NOT_APPLIED_MARKERS = (
    "failed to connect to all addresses",
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "rpc not supported for learner",
)


def retry_verdict(code: grpc.StatusCode, details: str) -> RetryVerdict:
    if any(marker in details for marker in _NOT_APPLIED_MARKERS):
        return RetryVerdict.NOT_APPLIED
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RetryVerdict.AMBIGUOUS
    if code is grpc.StatusCode.CANCELLED and "client" not in details.lower():
        # The channel under the call was closed (a fail-over elsewhere retired it).
        return RetryVerdict.AMBIGUOUS
    return RetryVerdict.FINAL
