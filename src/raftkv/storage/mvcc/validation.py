"""Request checks made before proposing (etcd ``server/etcdserver/api/v3rpc/key.go``).

The API layer calls these on every request before it goes through Raft, as
etcd's gRPC server does; a request that fails one never reaches the log.
``KVStore.range`` (served locally) calls ``validate_range`` itself. The apply
path does not repeat them: ``max_txn_ops`` is a per-member setting in etcd, so
a check at apply time could make members disagree.
"""

from __future__ import annotations

from raftkv import limits
from raftkv.storage.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    InvalidSortOptionError,
    KeyNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from raftkv.storage.mvcc.txn import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

_SORT_ORDERS = frozenset(int(order) for order in SortOrder)
_SORT_TARGETS = frozenset(int(target) for target in SortTarget)

# A key interval [begin, end) in a txn's delete set.
_Interval = tuple[bytes, bytes]


def validate_range(req: RangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    # The enums may carry any int decoded from the wire.
    if int(req.sort_order) not in _SORT_ORDERS or int(req.sort_target) not in _SORT_TARGETS:
        raise InvalidSortOptionError()


def validate_put(req: PutRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease != 0:
        raise LeaseProvidedError()


def validate_delete_range(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()


def validate_txn(req: TxnRequest, max_txn_ops: int = limits.MVCC_MAX_TXN_OPS) -> None:
    """etcd's checkTxnRequest, then checkIntervals on each branch.

    TooManyOpsError when compare, success or failure has more than
    ``max_txn_ops`` entries (a nested txn gets what its parent left);
    DuplicateKeyError when a branch writes a key twice (see ``check_intervals``).
    """
    assert max_txn_ops >= 0
    _check_txn_request(req, max_txn_ops)
    check_intervals(req.success)
    check_intervals(req.failure)


def _check_txn_request(req: TxnRequest, max_txn_ops: int) -> None:
    op_count = max(len(req.compare), len(req.success), len(req.failure))
    if op_count > max_txn_ops:
        raise TooManyOpsError()
    for compare in req.compare:
        if not compare.key:
            raise EmptyKeyError()
    for op in (*req.success, *req.failure):
        _check_request_op(op, max_txn_ops - op_count)


def _check_request_op(op: RequestOp, max_txn_ops: int) -> None:
    match op:
        case RangeRequest():
            validate_range(op)
        case PutRequest():
            validate_put(op)
        case DeleteRangeRequest():
            validate_delete_range(op)
        case TxnRequest():
            _check_txn_request(op, max_txn_ops)
        case _:  # etcd answers an empty RequestOp with "key not found"
            raise KeyNotFoundError()


def check_intervals(ops: tuple[RequestOp, ...]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: DuplicateKeyError if one branch puts a key twice, or
    puts a key that a delete range of the branch covers; nested txns included
    (their success and failure branches may put the same key, as only one runs).
    Returns the branch's puts and delete intervals for the parent's check.

    Two deletes may overlap. As in etcd, a delete whose range_end is b"\\0"
    (every key >= key) covers nothing here: etcd's interval tree reads that end
    as the literal one-byte string "\\0", which sorts before every non-empty key.
    """
    deletes = [
        interval
        for op in ops
        if isinstance(op, DeleteRangeRequest) and (interval := _delete_interval(op)) is not None
    ]
    puts: set[bytes] = set()
    for op in ops:
        if isinstance(op, TxnRequest):
            _merge_nested(op, puts, deletes)
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or _covers(deletes, op.key):
                raise DuplicateKeyError()
            puts.add(op.key)
    return puts, deletes


def _merge_nested(txn: TxnRequest, puts: set[bytes], deletes: list[_Interval]) -> None:
    then_puts, then_deletes = check_intervals(txn.success)
    else_puts, else_deletes = check_intervals(txn.failure)
    for key in then_puts:
        if key in puts or _covers(deletes, key):
            raise DuplicateKeyError()
        puts.add(key)
    for key in else_puts:
        # A key put by both branches of the same nested txn is fine: one runs.
        if (key in puts and key not in then_puts) or _covers(deletes, key):
            raise DuplicateKeyError()
        puts.add(key)
    deletes.extend(then_deletes)
    deletes.extend(else_deletes)


def _delete_interval(req: DeleteRangeRequest) -> _Interval | None:
    """The keys a delete covers, for the duplicate check; None if none."""
    if not req.range_end:
        return (req.key, req.key + b"\0")
    if req.range_end <= req.key:  # includes b"\0" (see check_intervals)
        return None
    return (req.key, req.range_end)


def _covers(deletes: list[_Interval], key: bytes) -> bool:
    return any(begin <= key < end for begin, end in deletes)
