"""Requests and responses of the KV API, as plain dataclasses.

They mirror etcd's protobuf messages (``api/etcdserverpb/rpc.proto`` and
``api/mvccpb/kv.proto``) field for field, minus the response header: a
response carries only the header's ``revision``, which is what the KV store
decides; the API layer adds cluster id, member id and raft term.

Field defaults are the protobuf zero values, so an absent field and a zero
field mean the same thing, as on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    """mvccpb.KeyValue. ``version`` is 0 only in a tombstone (a delete's change)."""

    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """etcd RangeRequest.

    ``range_end``: empty = the single ``key``; ``b"\\0"`` = every key >= ``key``;
    otherwise the half-open range [key, range_end). ``revision`` <= 0 = latest.
    ``serializable`` is for the API layer (read locally, without ReadIndex); the
    store ignores it.
    """

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """``count`` is the number of keys in the range at the revision, ignoring
    ``limit`` and the min/max filters; ``revision`` is the store's revision."""

    kvs: tuple[KeyValue, ...]
    more: bool
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    """``range_end`` as in RangeRequest."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeResponse:
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(frozen=True, slots=True)
class Compare:
    """etcd Compare. Of the five operands only the one ``target`` names is read
    (protobuf's ``target_union`` holds exactly one); an unset one is 0 / b"".
    With ``range_end`` every key in the range must satisfy the comparison."""

    result: CompareResult
    target: CompareTarget
    key: bytes
    range_end: bytes = b""
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """``revision`` is 0 in a nested txn's response, as in etcd (only the top-level
    header is filled in)."""

    revision: int
    succeeded: bool
    responses: tuple[ResponseOp, ...] = ()


@dataclass(frozen=True, slots=True)
class CompactionRequest:
    """``physical`` (wait until the compaction is on disk) is for the API layer:
    this store compacts synchronously, so it is always physical."""

    revision: int
    physical: bool = False


@dataclass(frozen=True, slots=True)
class CompactionResponse:
    revision: int


# etcd's RequestOp / ResponseOp oneofs.
RequestOp = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest
ResponseOp = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse
