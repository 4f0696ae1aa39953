"""etcd's Lease service (``v3rpc/lease.go``).

Grant and revoke are proposed. Keepalives and TTL queries go to the leader's lessor
through the node (they are not replicated). As in etcd, a keepalive of an unknown lease
answers TTL 0 rather than an error, and a TTL query of one answers TTL -1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from raftkv.api import authz, convert
from raftkv.api.errors import Context, stream, unary
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.apply import LeaseGrantResponse, LeaseRevokeResponse
from raftkv.server.interface import NodeAPI
from raftkv.server.requests import LeaseGrantRequest, LeaseRevokeRequest
from raftkv.storage.errors import LeaseNotFoundError

# etcd's answers about a lease it does not know.
KEEPALIVE_TTL_NOT_FOUND = 0
TIME_TO_LIVE_NOT_FOUND = -1


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, node: NodeAPI) -> None:
        self._node = node

    @property
    def node(self) -> NodeAPI:
        return self._node

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: Context
    ) -> rpc_pb2.LeaseGrantResponse:
        # ID 0: the member picks one before proposing.
        response = await self._node.propose(
            LeaseGrantRequest(id=request.ID, ttl_seconds=request.TTL)
        )
        assert isinstance(response, LeaseGrantResponse), f"a grant answered {response!r}"
        return rpc_pb2.LeaseGrantResponse(
            header=self._header(response.revision), ID=response.id, TTL=response.ttl_seconds
        )

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: Context
    ) -> rpc_pb2.LeaseRevokeResponse:
        response = await self._node.propose(LeaseRevokeRequest(id=request.ID))
        assert isinstance(response, LeaseRevokeResponse), f"a revoke answered {response!r}"
        return rpc_pb2.LeaseRevokeResponse(header=self._header(response.revision))

    @stream
    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: Context
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        # One request at a time, as etcd: a client renews each lease every TTL/3.
        async for request in request_iterator:
            # The header is taken before the renewal, as etcd does: its revision is not
            # after a revocation the renewal could race with.
            header = self._header()
            authz.check_lease_renew(self._node, context, request.ID)
            try:
                ttl_seconds = await self._node.lease_keepalive(request.ID)
            except LeaseNotFoundError:
                ttl_seconds = KEEPALIVE_TTL_NOT_FOUND
            yield rpc_pb2.LeaseKeepAliveResponse(header=header, ID=request.ID, TTL=ttl_seconds)

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: Context
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        try:
            answer = await self._node.lease_time_to_live(request.ID, request.keys)
        except LeaseNotFoundError:
            return rpc_pb2.LeaseTimeToLiveResponse(
                header=self._header(), ID=request.ID, TTL=TIME_TO_LIVE_NOT_FOUND
            )
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=self._header(),
            ID=request.ID,
            TTL=answer.ttl_seconds,
            grantedTTL=answer.granted_ttl_seconds,
            keys=answer.keys,
        )

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: Context
    ) -> rpc_pb2.LeaseLeasesResponse:
        # etcd reads its local lessor; the barrier makes the list linearizable.
        await self._node.read_barrier()
        return rpc_pb2.LeaseLeasesResponse(
            header=self._header(),
            leases=[rpc_pb2.LeaseStatus(ID=lease_id) for lease_id in self._node.lessor.leases()],
        )

    def _header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return convert.header(self._node.header(revision))
