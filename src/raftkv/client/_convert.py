"""Conversions between the client's dataclasses and etcd's protobuf messages."""

from __future__ import annotations

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2
from raftkv.client.models import (
    Alarm,
    AlarmType,
    Compare,
    CompareTarget,
    DeleteOp,
    DeleteResult,
    Event,
    EventType,
    GetOp,
    KeyValue,
    LeaderKey,
    Member,
    PutOp,
    PutResult,
    RangeResult,
    RequestOp,
    ResponseHeader,
    Status,
    TxnOp,
    TxnResult,
    WatchResponse,
)

# --- Requests ----------------------------------------------------------------------


def range_request(op: GetOp) -> rpc_pb2.RangeRequest:
    return rpc_pb2.RangeRequest(
        key=op.key,
        range_end=op.range_end,
        limit=op.limit,
        revision=op.revision,
        sort_order=op.sort_order.name,
        sort_target=op.sort_target.name,
        serializable=op.serializable,
        keys_only=op.keys_only,
        count_only=op.count_only,
        min_mod_revision=op.min_mod_revision,
        max_mod_revision=op.max_mod_revision,
        min_create_revision=op.min_create_revision,
        max_create_revision=op.max_create_revision,
    )


def put_request(op: PutOp) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(
        key=op.key,
        value=op.value,
        lease=op.lease,
        prev_kv=op.prev_kv,
        ignore_value=op.ignore_value,
        ignore_lease=op.ignore_lease,
    )


def delete_request(op: DeleteOp) -> rpc_pb2.DeleteRangeRequest:
    return rpc_pb2.DeleteRangeRequest(key=op.key, range_end=op.range_end, prev_kv=op.prev_kv)


def compare_message(compare: Compare) -> rpc_pb2.Compare:
    message = rpc_pb2.Compare(
        result=compare.result.name,
        target=compare.target.name,
        key=compare.key,
        range_end=compare.range_end,
    )
    operand = compare.operand
    if compare.target is CompareTarget.VALUE:
        assert isinstance(operand, bytes)
        message.value = operand
        return message
    assert isinstance(operand, int)
    if compare.target is CompareTarget.VERSION:
        message.version = operand
    elif compare.target is CompareTarget.CREATE:
        message.create_revision = operand
    elif compare.target is CompareTarget.MOD:
        message.mod_revision = operand
    else:
        message.lease = operand
    return message


def txn_request(op: TxnOp) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(
        compare=[compare_message(compare) for compare in op.compare],
        success=[request_op(inner) for inner in op.success],
        failure=[request_op(inner) for inner in op.failure],
    )


def request_op(op: RequestOp) -> rpc_pb2.RequestOp:
    if isinstance(op, GetOp):
        return rpc_pb2.RequestOp(request_range=range_request(op))
    if isinstance(op, PutOp):
        return rpc_pb2.RequestOp(request_put=put_request(op))
    if isinstance(op, DeleteOp):
        return rpc_pb2.RequestOp(request_delete_range=delete_request(op))
    return rpc_pb2.RequestOp(request_txn=txn_request(op))


# --- Responses ---------------------------------------------------------------------


def header(message: rpc_pb2.ResponseHeader) -> ResponseHeader:
    return ResponseHeader(
        cluster_id=message.cluster_id,
        member_id=message.member_id,
        revision=message.revision,
        raft_term=message.raft_term,
    )


def key_value(message: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        key=message.key,
        value=message.value,
        create_revision=message.create_revision,
        mod_revision=message.mod_revision,
        version=message.version,
        lease=message.lease,
    )


def optional_key_value(parent: object, field: str) -> KeyValue | None:
    """The KeyValue in `parent.field`, or None if the field is unset."""
    assert hasattr(parent, "HasField")
    if not parent.HasField(field):
        return None
    message = getattr(parent, field)
    assert isinstance(message, kv_pb2.KeyValue)
    return key_value(message)


def range_result(message: rpc_pb2.RangeResponse) -> RangeResult:
    return RangeResult(
        header=header(message.header),
        kvs=tuple(key_value(kv) for kv in message.kvs),
        more=message.more,
        count=message.count,
    )


def put_result(message: rpc_pb2.PutResponse) -> PutResult:
    return PutResult(header(message.header), optional_key_value(message, "prev_kv"))


def delete_result(message: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(
        header=header(message.header),
        deleted=message.deleted,
        prev_kvs=tuple(key_value(kv) for kv in message.prev_kvs),
    )


def txn_result(message: rpc_pb2.TxnResponse) -> TxnResult:
    return TxnResult(
        header=header(message.header),
        succeeded=message.succeeded,
        responses=tuple(response_op(response) for response in message.responses),
    )


def response_op(message: rpc_pb2.ResponseOp) -> RangeResult | PutResult | DeleteResult | TxnResult:
    kind = message.WhichOneof("response")
    if kind == "response_range":
        return range_result(message.response_range)
    if kind == "response_put":
        return put_result(message.response_put)
    if kind == "response_delete_range":
        return delete_result(message.response_delete_range)
    assert kind == "response_txn", f"unknown txn response op {kind!r}"
    return txn_result(message.response_txn)


def event(message: kv_pb2.Event) -> Event:
    return Event(
        type=EventType(message.type),
        kv=key_value(message.kv),
        prev_kv=optional_key_value(message, "prev_kv"),
    )


def watch_response(message: rpc_pb2.WatchResponse) -> WatchResponse:
    return WatchResponse(
        header=header(message.header),
        events=tuple(event(item) for item in message.events),
        compact_revision=message.compact_revision,
    )


def member(message: rpc_pb2.Member) -> Member:
    return Member(
        id=message.ID,
        name=message.name,
        peer_urls=tuple(message.peerURLs),
        client_urls=tuple(message.clientURLs),
        is_learner=message.isLearner,
    )


def status(message: rpc_pb2.StatusResponse) -> Status:
    return Status(
        header=header(message.header),
        version=message.version,
        db_size=message.dbSize,
        leader=message.leader,
        raft_index=message.raftIndex,
        raft_term=message.raftTerm,
        raft_applied_index=message.raftAppliedIndex,
        errors=tuple(message.errors),
        db_size_in_use=message.dbSizeInUse,
        is_learner=message.isLearner,
    )


def alarm(message: rpc_pb2.AlarmMember) -> Alarm:
    return Alarm(member_id=message.memberID, alarm=AlarmType(message.alarm))


def leader_key(message: v3election_pb2.LeaderKey) -> LeaderKey:
    return LeaderKey(name=message.name, key=message.key, rev=message.rev, lease=message.lease)


def leader_key_message(leader: LeaderKey) -> v3election_pb2.LeaderKey:
    return v3election_pb2.LeaderKey(
        name=leader.name, key=leader.key, rev=leader.rev, lease=leader.lease
    )
