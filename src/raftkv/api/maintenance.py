"""etcd's Maintenance service (``v3rpc/maintenance.go``).

Status, hashes and alarm listing read this member; alarm changes are proposed;
Snapshot streams the node's consistent backend copy followed, as etcd does, by one last
message holding the SHA-256 of everything before it (``etcdutl snapshot restore``
checks it). Downgrade is not supported (raftkv has a single version).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from raftkv.api import convert
from raftkv.api.convert import enum_value
from raftkv.api.errors import Context, NotSupportedError, stream, unary
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.apply import AlarmResponse
from raftkv.server.interface import NodeAPI
from raftkv.server.requests import AlarmAction, AlarmRequest
from raftkv.storage.alarm import AlarmMember, AlarmType

_ALARM_TYPES = {
    AlarmType.NONE: rpc_pb2.NONE,
    AlarmType.NOSPACE: rpc_pb2.NOSPACE,
    AlarmType.CORRUPT: rpc_pb2.CORRUPT,
}
DOWNGRADE_NOT_SUPPORTED = "raftkv: downgrade is not supported (raftkv has a single version)"


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, node: NodeAPI) -> None:
        self._node = node

    @property
    def node(self) -> NodeAPI:
        return self._node

    @unary
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: Context) -> rpc_pb2.AlarmResponse:
        alarm = enum_value(AlarmType, request.alarm, "alarm type")
        if request.action == rpc_pb2.AlarmRequest.GET:
            # etcd lists the alarms of the given type; NONE lists all of them.
            members = self._node.alarms.get(alarm)
        else:
            action = enum_value(AlarmAction, request.action, "alarm action")
            response = await self._node.propose(AlarmRequest(action, request.memberID, alarm))
            assert isinstance(response, AlarmResponse), f"an alarm answered {response!r}"
            members = list(response.alarms)
        return rpc_pb2.AlarmResponse(header=self._header(), alarms=_alarm_members(members))

    @unary
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: Context
    ) -> rpc_pb2.StatusResponse:
        status = self._node.status()
        return rpc_pb2.StatusResponse(
            header=self._header(),
            version=status.version,
            dbSize=status.db_size_bytes,
            leader=status.leader_id,
            raftIndex=status.raft_index,
            raftTerm=status.raft_term,
            raftAppliedIndex=status.raft_applied_index,
            errors=list(status.errors),
            dbSizeInUse=status.db_size_in_use_bytes,
            isLearner=status.is_learner,
            dbSizeQuota=status.db_size_quota_bytes,
        )

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: Context
    ) -> rpc_pb2.DefragmentResponse:
        await self._node.defragment()
        return rpc_pb2.DefragmentResponse(header=self._header())

    @unary
    async def Hash(self, request: rpc_pb2.HashRequest, context: Context) -> rpc_pb2.HashResponse:
        # etcd hashes its local backend without a barrier ("for testing only").
        return rpc_pb2.HashResponse(header=self._header(), hash=self._node.kv.hash())

    @unary
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: Context
    ) -> rpc_pb2.HashKVResponse:
        answer = self._node.kv.hash_kv(request.revision)
        # etcd's header carries the current revision, not the hashed one.
        return rpc_pb2.HashKVResponse(
            header=self._header(),
            hash=answer.hash,
            compact_revision=answer.compact_revision,
            hash_revision=answer.hash_revision,
        )

    @stream
    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: Context
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        digest = hashlib.sha256()
        async for chunk, remaining_bytes in self._node.snapshot_chunks():
            assert remaining_bytes >= 0
            digest.update(chunk)
            yield rpc_pb2.SnapshotResponse(remaining_bytes=remaining_bytes, blob=chunk)
        yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=digest.digest())

    @unary
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: Context
    ) -> rpc_pb2.MoveLeaderResponse:
        await self._node.move_leader(request.targetID)
        return rpc_pb2.MoveLeaderResponse(header=self._header())

    @unary
    async def Downgrade(
        self, request: rpc_pb2.DowngradeRequest, context: Context
    ) -> rpc_pb2.DowngradeResponse:
        raise NotSupportedError(DOWNGRADE_NOT_SUPPORTED)

    def _header(self) -> rpc_pb2.ResponseHeader:
        return convert.header(self._node.header())


def _alarm_members(members: list[AlarmMember]) -> list[rpc_pb2.AlarmMember]:
    return [
        rpc_pb2.AlarmMember(memberID=member.member_id, alarm=_ALARM_TYPES[member.alarm])
        for member in members
    ]
