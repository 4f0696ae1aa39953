"""etcd's KV service: Range, Put, DeleteRange, Txn, Compact (``rpc.proto`` service KV).

Reads are served from this member's store: linearizable ones after
``node.read_barrier()``, serializable ones at once. Writes are checked first (etcd's
``v3rpc/key.go`` checks, via ``raftkv.storage.mvcc.validate_*``) and then proposed;
the answer comes once the request is applied on this member. The response header's
revision is the store revision the request saw or made.
"""

from __future__ import annotations

from raftkv.api import convert
from raftkv.api.errors import Context, unary
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.options import ApiOptions
from raftkv.server.interface import NodeAPI
from raftkv.storage.errors import RequestTooLargeError, TooManyOpsError
from raftkv.storage.mvcc import (
    CompactionResponse,
    DeleteRangeResponse,
    PutResponse,
    RangeRequest,
    TxnRequest,
    TxnResponse,
    validate_delete_range,
    validate_put,
    validate_range,
    validate_txn,
)
from raftkv.storage.mvcc.apply import is_txn_read_only


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, node: NodeAPI, options: ApiOptions) -> None:
        self._node = node
        self._options = options

    @property
    def node(self) -> NodeAPI:
        return self._node

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: Context) -> rpc_pb2.RangeResponse:
        range_request = convert.range_request(request)
        validate_range(range_request)
        if not range_request.serializable:
            await self._node.read_barrier()
        response = self._node.kv.range(range_request)
        return convert.range_response(response, self._header(response.revision))

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: Context) -> rpc_pb2.PutResponse:
        put = convert.put_request(request)
        validate_put(put)
        self._check_size(request.ByteSize())
        response = await self._node.propose(put)
        assert isinstance(response, PutResponse), f"a put answered {response!r}"
        return convert.put_response(response, self._header(response.revision))

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: Context
    ) -> rpc_pb2.DeleteRangeResponse:
        delete = convert.delete_range_request(request)
        validate_delete_range(delete)
        self._check_size(request.ByteSize())
        response = await self._node.propose(delete)
        assert isinstance(response, DeleteRangeResponse), f"a delete answered {response!r}"
        return convert.delete_range_response(response, self._header(response.revision))

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: Context) -> rpc_pb2.TxnResponse:
        # The op count first, as etcd checks it before looking at any op.
        op_count = max(len(request.compare), len(request.success), len(request.failure))
        if op_count > self._options.max_txn_ops:
            raise TooManyOpsError()
        txn = convert.txn_request(request)
        validate_txn(txn, self._options.max_txn_ops)
        if is_txn_read_only(txn):
            if not _is_txn_serializable(txn):
                await self._node.read_barrier()
            response = self._node.kv.read_txn(txn)
        else:
            self._check_size(request.ByteSize())  # etcd checks the size of proposals only
            proposed = await self._node.propose(txn)
            assert isinstance(proposed, TxnResponse), f"a txn answered {proposed!r}"
            response = proposed
        return convert.txn_response(response, self._header(response.revision))

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: Context
    ) -> rpc_pb2.CompactionResponse:
        # The store compacts while applying, so every compaction is physical.
        response = await self._node.propose(convert.compaction_request(request))
        assert isinstance(response, CompactionResponse), f"a compaction answered {response!r}"
        return rpc_pb2.CompactionResponse(header=self._header(response.revision))

    def _header(self, revision: int) -> rpc_pb2.ResponseHeader:
        return convert.header(self._node.header(revision))

    def _check_size(self, request_bytes: int) -> None:
        """etcd refuses a proposal whose encoding exceeds --max-request-bytes, after the
        request's own checks (it measures the raft request, a few bytes more;
        ``node.propose`` checks that bound too)."""
        if request_bytes > self._options.max_request_bytes:
            raise RequestTooLargeError()


def _is_txn_serializable(txn: TxnRequest) -> bool:
    """etcd's isTxnSerializable: every op of both branches is a serializable range."""
    return all(
        isinstance(op, RangeRequest) and op.serializable for op in (*txn.success, *txn.failure)
    )
