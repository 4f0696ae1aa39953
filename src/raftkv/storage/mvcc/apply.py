"""What each KV request does (etcd ``server/etcdserver/txn/txn.go``).

These functions give Range, Put, DeleteRange and Txn their etcd meaning on
top of a view (``kvstore_txn``). Errors a request can get are raised before
the request writes anything: a Txn is compared and checked in full
(``compare_to_path``, ``check_txn``) before ``execute_txn`` runs, so once
writing starts nothing can fail but the disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from raftkv.storage.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
    TooManyChangesError,
)
from raftkv.storage.mvcc.kvstore_txn import (
    NO_LEASE,
    LeaseChecker,
    ReadView,
    WriteView,
    range_end_of,
)
from raftkv.storage.mvcc.txn import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

# --- Range ---------------------------------------------------------------------

_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def execute_range(view: ReadView, req: RangeRequest) -> RangeResponse:
    """etcd's executeRange: read, filter by min/max revisions, sort, then limit.

    ``count`` is how many keys the range has at the revision, before the
    filters and the limit (etcd counts in the index, then prunes).
    """
    limit = req.limit
    if req.sort_order != SortOrder.NONE or _has_revision_filters(req):
        limit = 0  # sort and filter everything, then truncate
    if limit > 0:
        limit += 1  # one more than asked tells whether there is more
    result = view.range_keys(
        req.key, range_end_of(req.range_end), req.revision, limit, req.count_only
    )
    kvs = _sorted(_filtered(result.kvs, req), req)
    more = False
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[: req.limit]
        more = True
    if req.keys_only:
        kvs = [replace(kv, value=b"") for kv in kvs]
    return RangeResponse(tuple(kvs), more, result.count, result.revision)


def _has_revision_filters(req: RangeRequest) -> bool:
    return bool(
        req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    )


def _filtered(kvs: list[KeyValue], req: RangeRequest) -> list[KeyValue]:
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    return kvs


def _sorted(kvs: list[KeyValue], req: RangeRequest) -> list[KeyValue]:
    # The index yields keys in ascending order, so etcd sorts only when the
    # result would differ: NONE on another target means ASCEND on it.
    order = req.sort_order
    if req.sort_target != SortTarget.KEY and order == SortOrder.NONE:
        order = SortOrder.ASCEND
    elif req.sort_target == SortTarget.KEY and order == SortOrder.ASCEND:
        order = SortOrder.NONE
    if order == SortOrder.NONE:
        return kvs
    # Stable: ties keep ascending key order (etcd's sort.Sort does too for up to
    # 12 results; beyond that its tie order is unspecified).
    return sorted(kvs, key=_SORT_KEYS[req.sort_target], reverse=order == SortOrder.DESCEND)


# --- Put and DeleteRange ----------------------------------------------------------


def put(view: WriteView, req: PutRequest) -> PutResponse:
    """etcd's put: ignore_value / ignore_lease reuse the current value / lease."""
    needs_previous = req.ignore_value or req.ignore_lease or req.prev_kv
    previous = view.get(req.key) if needs_previous else None
    value, lease = req.value, req.lease
    if req.ignore_value or req.ignore_lease:
        if previous is None:
            raise KeyNotFoundError()
        if req.ignore_value:
            value = previous.value
        if req.ignore_lease:
            lease = previous.lease
    view.put(req.key, value, lease)
    return PutResponse(view.write_revision, previous if req.prev_kv else None)


def delete_range(view: WriteView, req: DeleteRangeRequest) -> DeleteRangeResponse:
    """etcd's deleteRange. The revision is the new one only if something changed
    (in this request or, inside a txn, earlier in it)."""
    end = range_end_of(req.range_end)
    prev_kvs: tuple[KeyValue, ...] = ()
    if req.prev_kv:
        prev_kvs = tuple(view.range_keys(req.key, end, 0, 0, False).kvs)
    deleted = view.delete_range(req.key, end)
    return DeleteRangeResponse(view.revision, deleted, prev_kvs)


def check_lease(lease: int, lease_exists: LeaseChecker) -> None:
    if lease != NO_LEASE and not lease_exists(lease):
        raise LeaseNotFoundError()


# --- Txn -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxnPath:
    """Which branch a txn takes, and the paths of the nested txns in it, in order.
    Every compare is evaluated before the txn writes (etcd's compareToPath), so a
    nested txn compares against the store as it was when the txn began."""

    succeeded: bool
    nested: tuple[TxnPath, ...]


def compare_to_path(view: ReadView, req: TxnRequest) -> TxnPath:
    succeeded = all(apply_compare(view, compare) for compare in req.compare)
    ops = req.success if succeeded else req.failure
    nested = tuple(compare_to_path(view, op) for op in ops if isinstance(op, TxnRequest))
    return TxnPath(succeeded, nested)


def apply_compare(view: ReadView, compare: Compare) -> bool:
    """True if every key in the compare's range satisfies it. An empty range
    compares a zero KeyValue, except that a VALUE compare then fails."""
    kvs = view.range_keys(compare.key, range_end_of(compare.range_end), 0, 0, False).kvs
    if not kvs:
        if compare.target == CompareTarget.VALUE:
            return False
        return compare_kv(compare, KeyValue(key=b""))
    return all(compare_kv(compare, kv) for kv in kvs)


def compare_kv(compare: Compare, kv: KeyValue) -> bool:
    outcome = _three_way(compare, kv)
    match compare.result:
        case CompareResult.EQUAL:
            return outcome == 0
        case CompareResult.NOT_EQUAL:
            return outcome != 0
        case CompareResult.GREATER:
            return outcome > 0
        case CompareResult.LESS:
            return outcome < 0
        case _:  # etcd: an unknown result compares true
            return True


def _three_way(compare: Compare, kv: KeyValue) -> int:
    match compare.target:
        case CompareTarget.VALUE:
            return _sign_bytes(kv.value, compare.value)
        case CompareTarget.CREATE:
            return _sign(kv.create_revision, compare.create_revision)
        case CompareTarget.MOD:
            return _sign(kv.mod_revision, compare.mod_revision)
        case CompareTarget.VERSION:
            return _sign(kv.version, compare.version)
        case CompareTarget.LEASE:
            return _sign(kv.lease, compare.lease)
        case _:  # etcd: an unknown target compares as equal
            return 0


def _sign(left: int, right: int) -> int:
    return (left > right) - (left < right)


def _sign_bytes(left: bytes, right: bytes) -> int:
    return (left > right) - (left < right)


def check_txn(view: ReadView, req: TxnRequest, path: TxnPath, lease_exists: LeaseChecker) -> None:
    """etcd's checks of a txn: the errors the taken branches would hit, raised before
    any write. As in etcd, every put of the taken path is checked first (missing key
    for ignore_value / ignore_lease: KeyNotFoundError; unknown lease:
    LeaseNotFoundError), then every range (FutureRevisionError / CompactedError), so
    a txn with both kinds of error reports the put's."""
    _check_branch_puts(view, req, path, lease_exists, [])
    _check_branch_ranges(view, req, path)


# A change the txn will have made by some point: ("put", key, b"") or
# ("delete", begin, end) with end b"" for "every key >= begin" and None for
# just ``begin``.
_Written = tuple[str, bytes, bytes | None]


def _check_branch_puts(
    view: ReadView,
    req: TxnRequest,
    path: TxnPath,
    lease_exists: LeaseChecker,
    written: list[_Written],
) -> None:
    nested = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        match op:
            case PutRequest():
                _check_put(view, op, lease_exists, written)
                written.append(("put", op.key, b""))
            case DeleteRangeRequest():
                written.append(("delete", op.key, range_end_of(op.range_end)))
            case TxnRequest():
                _check_branch_puts(view, op, next(nested), lease_exists, written)
    assert next(nested, None) is None, "txn path does not match the request"


def _check_branch_ranges(view: ReadView, req: TxnRequest, path: TxnPath) -> None:
    nested = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        match op:
            case RangeRequest():
                _check_range(view, op)
            case TxnRequest():
                _check_branch_ranges(view, op, next(nested))


def _check_range(view: ReadView, req: RangeRequest) -> None:
    # etcd's checkRange. Unlike a plain Range, a negative revision below the
    # compacted revision fails here (etcd compares it as is).
    if req.revision == 0:
        return
    if req.revision > view.revision:
        raise FutureRevisionError()
    if req.revision < view.compacted_revision:
        raise CompactedError()


def _check_put(
    view: ReadView, req: PutRequest, lease_exists: LeaseChecker, written: list[_Written]
) -> None:
    # etcd checks only that the key exists when the txn starts, and panics at
    # apply time if it was deleted earlier in the txn (its duplicate-key check
    # lets that through for a delete whose range_end is b"\0").
    ignores = req.ignore_value or req.ignore_lease
    if ignores and (view.get(req.key) is None or _deleted_by(written, req.key)):
        raise KeyNotFoundError()
    check_lease(req.lease, lease_exists)


def _deleted_by(written: list[_Written], key: bytes) -> bool:
    """Whether the latest change the txn makes to ``key`` before now is a delete."""
    for kind, begin, end in reversed(written):
        if kind == "put":
            if begin == key:
                return False
        elif _in_range(key, begin, end):
            return True
    return False


def _in_range(key: bytes, begin: bytes, end: bytes | None) -> bool:
    if end is None:
        return key == begin
    return begin <= key and (end == b"" or key < end)


def check_change_room(view: WriteView, req: TxnRequest, path: TxnPath) -> None:
    """TooManyChangesError if the txn might make more changes than one revision
    holds (raftkv's limit; a bound, not the exact count, when keys are many)."""
    puts, deletes = _path_writes(req, path)
    room = view.room_for_changes()
    # Each put adds one change and at most one key a later delete can remove.
    if len(view.index) + 2 * puts < room:
        return
    bound = 2 * puts + sum(
        view.index.count(op.key, range_end_of(op.range_end), view.revision) for op in deletes
    )
    if bound >= room:
        raise TooManyChangesError()


def _path_writes(req: TxnRequest, path: TxnPath) -> tuple[int, list[DeleteRangeRequest]]:
    puts = 0
    deletes: list[DeleteRangeRequest] = []
    nested = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        if isinstance(op, PutRequest):
            puts += 1
        elif isinstance(op, DeleteRangeRequest):
            deletes.append(op)
        elif isinstance(op, TxnRequest):
            nested_puts, nested_deletes = _path_writes(op, next(nested))
            puts += nested_puts
            deletes.extend(nested_deletes)
    return puts, deletes


def execute_txn(view: ReadView, req: TxnRequest, path: TxnPath) -> TxnResponse:
    """etcd's executeTxn, after check_txn. The response's revision is the store
    revision after the txn; nested txns' responses carry 0, as in etcd."""
    responses = _execute_branch(view, req, path)
    return TxnResponse(view.revision, path.succeeded, responses)


def _execute_branch(view: ReadView, req: TxnRequest, path: TxnPath) -> tuple[ResponseOp, ...]:
    responses: list[ResponseOp] = []
    nested: Iterator[TxnPath] = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        match op:
            case RangeRequest():
                responses.append(execute_range(view, op))
            case PutRequest():
                assert isinstance(view, WriteView), "a put in a read-only txn"
                responses.append(put(view, op))
            case DeleteRangeRequest():
                assert isinstance(view, WriteView), "a delete in a read-only txn"
                responses.append(delete_range(view, op))
            case TxnRequest():
                nested_path = next(nested)
                nested_responses = _execute_branch(view, op, nested_path)
                responses.append(TxnResponse(0, nested_path.succeeded, nested_responses))
    return tuple(responses)


def is_txn_read_only(req: TxnRequest) -> bool:
    """etcd's IsTxnReadonly: only ranges in both branches (a nested txn counts
    as a write, whatever it holds)."""
    return all(isinstance(op, RangeRequest) for op in (*req.success, *req.failure))
