"""Typed storage errors. Messages reproduce etcd's where etcd defines one."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage error."""


class CorruptionError(StorageError):
    """Durable data failed its checksum before the tail: the node must stop.

    The message names the file and the byte offset; nothing is skipped.
    """

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__(f"corrupt data in {path} at offset {offset}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class DiskError(StorageError):
    """A write, sync or rename failed (disk full, I/O error). Fatal for the node."""


# --- Request errors with etcd's messages (api/v3rpc/rpctypes/error.go) --------


class RequestError(StorageError):
    """A request the storage layer refuses; the API maps it to a gRPC status."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid request"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class CompactedError(RequestError):
    grpc_code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevisionError(RequestError):
    grpc_code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision is a future revision"


class KeyNotFoundError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: key not found"


class EmptyKeyError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: key is not provided"


class ValueProvidedError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: value is provided"


class LeaseProvidedError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: lease is provided"


class TooManyOpsError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: too many operations in txn request"


class DuplicateKeyError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: duplicate key given in txn request"


class InvalidSortOptionError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid sort option"


class NoSpaceError(RequestError):
    grpc_code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: mvcc: database space exceeded"


class LeaseNotFoundError(RequestError):
    grpc_code = "NOT_FOUND"
    message = "etcdserver: requested lease not found"


class LeaseExistsError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(RequestError):
    grpc_code = "OUT_OF_RANGE"
    message = "etcdserver: too large lease TTL"


class RequestTooLargeError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: request is too large"


class TooManyChangesError(RequestError):
    """raftkv only: a request would change more keys than one revision can hold
    (limits.MVCC_MAX_CHANGES_PER_REVISION). etcd has no such bound."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: mvcc: too many keys changed in one revision"
