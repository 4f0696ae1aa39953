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
from raftkv.server.transport import parse_peer_url


def _check_peer_urls(peer_urls: list[str]) -> list[str]:
    """Refuse what the peer transport could not dial, before it is committed: applying a
    member with no URL, or one the transport cannot parse (``http://localhost:99999``),
    would stop every member. etcd refuses an empty list too (``types.NewURLs``)."""
    if not peer_urls:
        raise InvalidPeerURLError()
    for url in peer_urls:
        try:
            parse_peer_url(url)
        except ValueError:
            raise InvalidPeerURLError() from None
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
        peer_urls = _check_peer_urls(list(request.peerURLs))
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
        await self._node.member_update(request.ID, _check_peer_urls(list(request.peerURLs)))
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
