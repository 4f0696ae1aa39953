"""etcd's ``v3electionpb.Election`` service (etcd ``server/etcdserver/api/v3election``).

A candidate's key is ``name/<lease hex>`` holding its value; the leader is the key
under ``name/`` with the smallest create revision. Campaign waits for leadership and
returns the LeaderKey (name, key, create revision, lease) that Proclaim and Resign
act on: both check ``create_revision(key) == rev`` in the same txn as their write, so
a deposed leader cannot write. Leader reads the current leader; Observe streams it
and every later value, following each new leader. See ``concurrency``.

raftkv differs from etcd 3.5 in one way: Campaign confirms, after waiting, that the
candidate's key still exists ("election: not leader" if its lease ended meanwhile),
as Lock does; etcd returns a LeaderKey whose key is already gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from raftkv.api import concurrency
from raftkv.api.concurrency import (
    ElectionNoLeaderError,
    ElectionNotLeaderError,
    MissingLeaderKeyError,
    SessionExpiredError,
    WatchWait,
)
from raftkv.api.errors import Context
from raftkv.api.etcdpb.v3electionpb import v3election_pb2, v3election_pb2_grpc
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2_grpc
from raftkv.api.lock import LockService
from raftkv.server.interface import NodeAPI
from raftkv.storage.mvcc.txn import DeleteRangeRequest, KeyValue, PutRequest, TxnRequest
from raftkv.storage.mvcc.watchable import EventType, WatchSpec

Send = Callable[[v3election_pb2.LeaderResponse], Awaitable[None]]


async def campaign(
    node: NodeAPI, name: bytes, lease_id: int, value: bytes
) -> v3election_pb2.CampaignResponse:
    """Wait until the lease's candidacy leads the election ``name``."""
    lease_id = await concurrency.session_lease(node, lease_id)
    prefix = name + b"/"
    slot = await concurrency.enqueue(node, prefix, lease_id, value)
    leader = v3election_pb2.LeaderKey(
        name=name, key=slot.key, rev=slot.create_revision, lease=lease_id
    )
    if not slot.created and slot.value != value:
        # The same lease campaigning again with a new value proclaims it (etcd).
        try:
            await proclaim(node, leader, value)
        except BaseException:
            concurrency.delete_if_created_at(node, slot.key, slot.create_revision)
            raise
    if not slot.is_first:
        try:
            await concurrency.wait_for_turn(node, prefix, slot)
        except SessionExpiredError:
            raise ElectionNotLeaderError() from None
        except BaseException:
            concurrency.delete_if_created_at(node, slot.key, slot.create_revision)
            raise
    # etcd answers with the header of the enqueueing txn, not of the wait.
    return v3election_pb2.CampaignResponse(
        header=concurrency.response_header(node, slot.revision), leader=leader
    )


async def proclaim(
    node: NodeAPI, leader: v3election_pb2.LeaderKey | None, value: bytes
) -> v3election_pb2.ProclaimResponse:
    """Set the leader's value, if ``leader`` still leads (its key has its create rev)."""
    if leader is None:
        raise MissingLeaderKeyError()
    # etcd's server runs Proclaim in a session of leader.lease, granting one for lease 0.
    lease_id = await concurrency.session_lease(node, leader.lease)
    response = await concurrency.txn(
        node,
        TxnRequest(
            compare=(concurrency.created_at(leader.key, leader.rev),),
            success=(PutRequest(leader.key, value, lease_id),),
        ),
    )
    if not response.succeeded:
        raise ElectionNotLeaderError()
    return v3election_pb2.ProclaimResponse(
        header=concurrency.response_header(node, response.revision)
    )


async def resign(
    node: NodeAPI, leader: v3election_pb2.LeaderKey | None
) -> v3election_pb2.ResignResponse:
    """Delete the leader's key if it is still that leader's; otherwise do nothing."""
    if leader is None:
        raise MissingLeaderKeyError()
    response = await concurrency.txn(
        node,
        TxnRequest(
            compare=(concurrency.created_at(leader.key, leader.rev),),
            success=(DeleteRangeRequest(leader.key),),
        ),
    )
    return v3election_pb2.ResignResponse(
        header=concurrency.response_header(node, response.revision)
    )


async def leader(node: NodeAPI, name: bytes) -> v3election_pb2.LeaderResponse:
    """The current leader's key-value; ElectionNoLeaderError if nobody campaigns."""
    response = await concurrency.read(node, concurrency.first_created(name + b"/"))
    if not response.kvs:
        raise ElectionNoLeaderError()
    return _leader_response(node, response.revision, response.kvs[0])


async def observe(node: NodeAPI, name: bytes, send: Send) -> None:
    """Send the current leader, then each new value of it, then the next leader once
    it is deleted, and so on until canceled (etcd's Election.Observe). While nobody
    campaigns, waits for the first candidate."""
    prefix = name + b"/"
    while True:
        response = await concurrency.read(node, concurrency.first_created(prefix))
        if response.kvs:
            revision, kv = response.revision, response.kvs[0]
        else:
            kv = await _first_put(node, prefix, response.revision)
            revision = kv.mod_revision
        await send(_leader_response(node, revision, kv))
        await _follow(node, kv.key, revision, send)


async def _first_put(node: NodeAPI, prefix: bytes, read_revision: int) -> KeyValue:
    """The first key put under ``prefix`` after ``read_revision`` (when no key was
    there): the new leader. On a compacted history, reads again."""
    end = concurrency.prefix_range_end(prefix)
    while True:
        spec = WatchSpec(prefix, end, start_revision=read_revision + 1, filter_delete=True)
        with WatchWait(node, spec) as wait:
            while True:
                batch = await wait.next_batch()
                if batch.events:
                    return batch.events[0].kv
                if batch.compact_revision:
                    break
        response = await concurrency.read(node, concurrency.first_created(prefix))
        if response.kvs:
            return response.kvs[0]
        read_revision = response.revision


async def _follow(node: NodeAPI, key: bytes, read_revision: int, send: Send) -> None:
    """Send every new value of the leader ``key`` until it is deleted."""
    with WatchWait(node, WatchSpec(key, start_revision=read_revision + 1)) as wait:
        while True:
            batch = await wait.next_batch()
            if batch.compact_revision:
                return  # history gone: the caller reads the leader again
            for event in batch.events:
                if event.type is EventType.DELETE:
                    return
                await send(_leader_response(node, batch.revision, event.kv))


def _leader_response(node: NodeAPI, revision: int, kv: KeyValue) -> v3election_pb2.LeaderResponse:
    return v3election_pb2.LeaderResponse(
        header=concurrency.response_header(node, revision),
        kv=concurrency.key_value_message(kv),
    )


def _leader_key(
    request: v3election_pb2.ProclaimRequest | v3election_pb2.ResignRequest,
) -> v3election_pb2.LeaderKey | None:
    return request.leader if request.HasField("leader") else None


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, node: NodeAPI) -> None:
        self.node = node

    @concurrency.handler
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: Context
    ) -> v3election_pb2.CampaignResponse:
        return await campaign(self.node, request.name, request.lease, request.value)

    @concurrency.handler
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: Context
    ) -> v3election_pb2.ProclaimResponse:
        return await proclaim(self.node, _leader_key(request), request.value)

    @concurrency.handler
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: Context
    ) -> v3election_pb2.LeaderResponse:
        return await leader(self.node, request.name)

    @concurrency.handler
    async def Observe(  # type: ignore[override]  # writes through the context
        self, request: v3election_pb2.LeaderRequest, context: Context
    ) -> None:
        await observe(self.node, request.name, context.write)

    @concurrency.handler
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: Context
    ) -> v3election_pb2.ResignResponse:
        return await resign(self.node, _leader_key(request))


def add_election_and_lock(server: grpc.aio.Server, node: NodeAPI) -> None:
    """Register the Election and Lock services of ``node`` on ``server``; for
    ``start_grpc_server``'s ``extra_servicers``, bound to the node (functools.partial)."""
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(node), server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(node), server)
