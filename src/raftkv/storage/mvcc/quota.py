"""Quota cost of a request (etcd ``server/storage/quota.go``)."""

from __future__ import annotations

from raftkv import limits
from raftkv.storage.mvcc.txn import PutRequest, RequestOp, TxnRequest


def put_cost_bytes(req: PutRequest) -> int:
    """etcd's costPut: an estimate of the key's metadata plus its key and value."""
    return limits.QUOTA_KV_OVERHEAD_BYTES + len(req.key) + len(req.value)


def txn_cost_bytes(req: TxnRequest) -> int:
    """etcd's costTxn: the costlier branch, counting the branch's own puts only
    (etcd does not look into nested txns)."""
    return max(_branch_cost_bytes(req.success), _branch_cost_bytes(req.failure))


def request_cost_bytes(req: PutRequest | TxnRequest) -> int:
    """0 means the request cannot grow the store (a txn without puts)."""
    if isinstance(req, PutRequest):
        return put_cost_bytes(req)
    return txn_cost_bytes(req)


def _branch_cost_bytes(ops: tuple[RequestOp, ...]) -> int:
    return sum(put_cost_bytes(op) for op in ops if isinstance(op, PutRequest))
