"""etcd's protobuf messages <-> raftkv's request and response types.

Requests are converted strictly: an enum value the schema does not define is refused
(``InvalidSortOptionError`` for the range sort options, as etcd's message says, else
``UnknownEnumValueError``), and an empty ``RequestOp`` is etcd's "key not found".
Nothing else is checked here; the ``validate_*`` helpers of ``raftkv.storage.mvcc`` do
that before a request is proposed.

Responses follow what etcd puts on the wire: the top-level header is the member's
(cluster id, member id, revision, raft term); a txn's range, put and delete responses
carry a header with only the revision, and a nested txn's response an empty one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

from raftkv.api.errors import UnknownEnumValueError
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.server.interface import Header, Member
from raftkv.storage.errors import InvalidSortOptionError, KeyNotFoundError
from raftkv.storage.mvcc import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.mvcc.watchable import EventType, WatchEvent

_E = TypeVar("_E", bound=enum.IntEnum)

_EVENT_TYPES = {EventType.PUT: kv_pb2.Event.PUT, EventType.DELETE: kv_pb2.Event.DELETE}


def enum_value(kind: type[_E], value: int, field: str) -> _E:
    """``kind(value)``, or UnknownEnumValueError naming ``field``."""
    try:
        return kind(value)
    except ValueError:
        raise UnknownEnumValueError(field, value) from None


# --- Requests ------------------------------------------------------------------------


def range_request(message: rpc_pb2.RangeRequest) -> RangeRequest:
    try:
        sort_order = SortOrder(message.sort_order)
        sort_target = SortTarget(message.sort_target)
    except ValueError:
        raise InvalidSortOptionError() from None
    return RangeRequest(
        key=message.key,
        range_end=message.range_end,
        limit=message.limit,
        revision=message.revision,
        sort_order=sort_order,
        sort_target=sort_target,
        serializable=message.serializable,
        keys_only=message.keys_only,
        count_only=message.count_only,
        min_mod_revision=message.min_mod_revision,
        max_mod_revision=message.max_mod_revision,
        min_create_revision=message.min_create_revision,
        max_create_revision=message.max_create_revision,
    )


def put_request(message: rpc_pb2.PutRequest) -> PutRequest:
    return PutRequest(
        key=message.key,
        value=message.value,
        lease=message.lease,
        prev_kv=message.prev_kv,
        ignore_value=message.ignore_value,
        ignore_lease=message.ignore_lease,
    )


def delete_range_request(message: rpc_pb2.DeleteRangeRequest) -> DeleteRangeRequest:
    return DeleteRangeRequest(key=message.key, range_end=message.range_end, prev_kv=message.prev_kv)


def compare(message: rpc_pb2.Compare) -> Compare:
    # The operands not in ``target_union`` read as 0 / b"", which is what Compare
    # expects of the ones its target does not name.
    return Compare(
        result=enum_value(CompareResult, message.result, "compare result"),
        target=enum_value(CompareTarget, message.target, "compare target"),
        key=message.key,
        range_end=message.range_end,
        version=message.version,
        create_revision=message.create_revision,
        mod_revision=message.mod_revision,
        value=message.value,
        lease=message.lease,
    )


def request_op(message: rpc_pb2.RequestOp) -> RequestOp:
    match message.WhichOneof("request"):
        case "request_range":
            return range_request(message.request_range)
        case "request_put":
            return put_request(message.request_put)
        case "request_delete_range":
            return delete_range_request(message.request_delete_range)
        case "request_txn":
            return txn_request(message.request_txn)
    raise KeyNotFoundError()  # etcd's answer to an empty RequestOp


def txn_request(message: rpc_pb2.TxnRequest) -> TxnRequest:
    # Recursion is bounded by protobuf's parse depth limit (100 nested messages).
    return TxnRequest(
        compare=tuple(compare(item) for item in message.compare),
        success=tuple(request_op(item) for item in message.success),
        failure=tuple(request_op(item) for item in message.failure),
    )


def compaction_request(message: rpc_pb2.CompactionRequest) -> CompactionRequest:
    return CompactionRequest(revision=message.revision, physical=message.physical)


# --- Responses -----------------------------------------------------------------------


def header(value: Header) -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(
        cluster_id=value.cluster_id,
        member_id=value.member_id,
        revision=value.revision,
        raft_term=value.raft_term,
    )


def key_value(value: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=value.key,
        create_revision=value.create_revision,
        mod_revision=value.mod_revision,
        version=value.version,
        value=value.value,
        lease=value.lease,
    )


def key_values(values: Iterable[KeyValue]) -> list[kv_pb2.KeyValue]:
    return [key_value(value) for value in values]


def range_response(
    response: RangeResponse, response_header: rpc_pb2.ResponseHeader
) -> rpc_pb2.RangeResponse:
    return rpc_pb2.RangeResponse(
        header=response_header,
        kvs=key_values(response.kvs),
        more=response.more,
        count=response.count,
    )


def put_response(
    response: PutResponse, response_header: rpc_pb2.ResponseHeader
) -> rpc_pb2.PutResponse:
    message = rpc_pb2.PutResponse(header=response_header)
    if response.prev_kv is not None:
        message.prev_kv.CopyFrom(key_value(response.prev_kv))
    return message


def delete_range_response(
    response: DeleteRangeResponse, response_header: rpc_pb2.ResponseHeader
) -> rpc_pb2.DeleteRangeResponse:
    return rpc_pb2.DeleteRangeResponse(
        header=response_header,
        deleted=response.deleted,
        prev_kvs=key_values(response.prev_kvs),
    )


def txn_response(
    response: TxnResponse, response_header: rpc_pb2.ResponseHeader | None
) -> rpc_pb2.TxnResponse:
    message = rpc_pb2.TxnResponse(
        succeeded=response.succeeded,
        responses=[response_op(item) for item in response.responses],
    )
    if response_header is not None:
        message.header.CopyFrom(response_header)
    return message


def response_op(response: ResponseOp) -> rpc_pb2.ResponseOp:
    revision_only = rpc_pb2.ResponseHeader(revision=response.revision)
    match response:
        case RangeResponse():
            return rpc_pb2.ResponseOp(response_range=range_response(response, revision_only))
        case PutResponse():
            return rpc_pb2.ResponseOp(response_put=put_response(response, revision_only))
        case DeleteRangeResponse():
            return rpc_pb2.ResponseOp(
                response_delete_range=delete_range_response(response, revision_only)
            )
        case TxnResponse():
            # etcd sends a nested txn's header present but empty.
            empty = rpc_pb2.ResponseHeader()
            return rpc_pb2.ResponseOp(response_txn=txn_response(response, empty))
    raise AssertionError(f"not a txn response op: {response!r}")


def event(value: WatchEvent) -> kv_pb2.Event:
    message = kv_pb2.Event(type=_EVENT_TYPES[value.type], kv=key_value(value.kv))
    if value.prev_kv is not None:
        message.prev_kv.CopyFrom(key_value(value.prev_kv))
    return message


def member(value: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=value.id,
        name=value.name,
        peerURLs=list(value.peer_urls),
        clientURLs=list(value.client_urls),
        isLearner=value.is_learner,
    )
