"""etcd's Cluster service (``v3rpc/member.go``): membership changes go through the node.

As in etcd, these responses carry a header without a revision (membership is not part
of the key space), and every change answers with the member list after it.
"""

from __future__ import annotations

from raftkv.api import convert
from raftkv.api.errors import Context, unary
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.errors import InvalidPeerURLError
from raftkv.server.interface import NodeAPI


def _check_some_peer_urls(peer_urls: list[str]) -> list[str]:
    """etcd refuses an empty URL list (``types.NewURLs``); a member without URLs cannot be
    reached, and the transport refuses to know one."""
    if not peer_urls:
        raise InvalidPeerURLError()
    return peer_urls


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, node: NodeAPI) -> None:
        self._node = node

    @property
    def node(self) -> NodeAPI:
        return self._node

    @unary
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: Context
    ) -> rpc_pb2.MemberAddResponse:
        peer_urls = _check_some_peer_urls(list(request.peerURLs))
        added = await self._node.member_add(peer_urls, request.isLearner)
        return rpc_pb2.MemberAddResponse(
            header=self._header(), member=convert.member(added), members=self._members()
        )

    @unary
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: Context
    ) -> rpc_pb2.MemberRemoveResponse:
        await self._node.member_remove(request.ID)
        return rpc_pb2.MemberRemoveResponse(header=self._header(), members=self._members())

    @unary
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: Context
    ) -> rpc_pb2.MemberUpdateResponse:
        await self._node.member_update(request.ID, _check_some_peer_urls(list(request.peerURLs)))
        return rpc_pb2.MemberUpdateResponse(header=self._header(), members=self._members())

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: Context
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self._node.read_barrier()
        return rpc_pb2.MemberListResponse(header=self._header(), members=self._members())

    @unary
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: Context
    ) -> rpc_pb2.MemberPromoteResponse:
        await self._node.member_promote(request.ID)
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._members())

    def _header(self) -> rpc_pb2.ResponseHeader:
        header = self._node.header()
        return rpc_pb2.ResponseHeader(
            cluster_id=header.cluster_id, member_id=header.member_id, raft_term=header.raft_term
        )

    def _members(self) -> list[rpc_pb2.Member]:
        return [convert.member(member) for member in self._node.members()]
