"""Server-level errors with etcd's messages and gRPC codes (api/v3rpc/rpctypes/error.go).

They subclass ``RequestError`` so the API layer maps every refusal the same way:
``grpc_code`` names the ``grpc.StatusCode`` member and ``str(error)`` is the message.
"""

from __future__ import annotations

from raftkv.storage.errors import RequestError


class NoLeaderError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: no leader"


class NotLeaderError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: not leader"


class LeaderChangedError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: leader changed"


class StoppedError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: server stopped"


class RequestTimeoutError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: request timed out"


class TooManyRequestsError(RequestError):
    grpc_code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: too many requests"


class MemberIDExistsError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: member ID already exist"


class PeerURLExistsError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: Peer URLs already exists"


class NotEnoughStartedMembersError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: re-configuration failed due to not enough started members"


class MemberNotFoundError(RequestError):
    grpc_code = "NOT_FOUND"
    message = "etcdserver: member not found"


class InvalidPeerURLError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: given member URLs are invalid"


class MemberNotLearnerError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member"


class LearnerNotReadyError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member which is in sync with leader"


class TooManyLearnersError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: too many learner members in cluster"


class UnhealthyClusterError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: unhealthy cluster"


class BadLeaderTransfereeError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: bad leader transferee"


class LearnerNotSupportedError(RequestError):
    grpc_code = "UNAVAILABLE"
    message = "etcdserver: rpc not supported for learner"


class ClusterIDMismatchError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: cluster ID mismatch"
