"""etcd's ``v3lockpb.Lock`` service (etcd ``server/etcdserver/api/v3lock/lock.go``).

Lock(name, lease) queues the lease's key ``name/<lease hex>`` and returns once it is
the oldest key under ``name/``: the lock is held while the key exists, so until
Unlock(key), or until the lease ends. The same lease locking the same name again is
the same acquisition (it gets the same key). Lease 0 means a fresh lease of
``SESSION_TTL_SECONDS`` (etcd grants one for the request). See ``concurrency``.
"""

from __future__ import annotations

from raftkv.api import concurrency
from raftkv.api.errors import Context
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from raftkv.server.interface import NodeAPI
from raftkv.storage.mvcc.txn import DeleteRangeRequest, DeleteRangeResponse
from raftkv.storage.mvcc.validation import validate_delete_range


async def lock(node: NodeAPI, name: bytes, lease_id: int) -> v3lock_pb2.LockResponse:
    """Wait until the lease holds the lock ``name``; refusals raise (see module doc)."""
    lease_id = await concurrency.session_lease(node, lease_id)
    prefix = name + b"/"
    slot = await concurrency.enqueue(node, prefix, lease_id, b"")
    if slot.is_first:
        revision = slot.revision
    else:
        try:
            revision = (await concurrency.wait_for_turn(node, prefix, slot)).revision
        except BaseException:
            # Canceled or failed while queued: leave the line, or the key would take
            # the lock later with nobody holding it (etcd's Mutex.Lock unlocks here).
            concurrency.delete_if_created_at(node, slot.key, slot.create_revision)
            raise
    return v3lock_pb2.LockResponse(header=concurrency.response_header(node, revision), key=slot.key)


async def unlock(node: NodeAPI, key: bytes) -> v3lock_pb2.UnlockResponse:
    """Delete the lock's key (a missing key is not an error, as in etcd)."""
    request = DeleteRangeRequest(key)
    validate_delete_range(request)
    response = await node.propose(request)
    assert isinstance(response, DeleteRangeResponse), f"delete answered with {response!r}"
    return v3lock_pb2.UnlockResponse(header=concurrency.response_header(node, response.revision))


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, node: NodeAPI) -> None:
        self.node = node

    @concurrency.handler
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: Context
    ) -> v3lock_pb2.LockResponse:
        return await lock(self.node, request.name, request.lease)

    @concurrency.handler
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: Context
    ) -> v3lock_pb2.UnlockResponse:
        return await unlock(self.node, request.key)
