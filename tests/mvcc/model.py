"""A plain in-memory model of etcd's MVCC semantics, for property tests.

Each key has its list of changes, (main revision, KeyValue or None for a
delete), in the order they were made. A read at revision R takes, per key,
the last change at or before R. Nothing is ever removed: compaction only
moves the revision below which reads fail. Requests are assumed valid
(validate_* passed), as the apply path assumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from raftkv.storage.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
    RequestError,
)
from raftkv.storage.mvcc import (
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

State = dict[bytes, KeyValue]


def in_range(key: bytes, begin: bytes, range_end: bytes) -> bool:
    if range_end == b"":
        return key == begin
    if range_end == b"\0":
        return key >= begin
    return begin <= key < range_end


@dataclass
class Model:
    known_leases: frozenset[int]
    changes: dict[bytes, list[tuple[int, KeyValue | None]]] = field(default_factory=dict)
    current: int = 1
    compacted: int = -1

    def state_at(self, revision: int) -> State:
        state: State = {}
        for key, changes in self.changes.items():
            latest = None
            for main, kv in changes:
                if main <= revision:
                    latest = kv
            if latest is not None:
                state[key] = latest
        return state

    # --- Requests ----------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        return _range(req, self.state_at, self.current, self.compacted)

    def put(self, req: PutRequest) -> PutResponse:
        if req.lease and req.lease not in self.known_leases:
            raise LeaseNotFoundError()
        write = _Write(self)
        response = write.put(req)
        write.commit()
        return response

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        write = _Write(self)
        response = write.delete_range(req)
        write.commit()
        return response

    def txn(self, req: TxnRequest) -> TxnResponse:
        begin = self.state_at(self.current)
        # etcd checks every put of the taken path before any range: a dry run that
        # skips the ranges raises the put errors first.
        _Write(self, with_ranges=False).txn(req, begin)
        write = _Write(self)
        succeeded, responses = write.txn(req, begin)
        write.commit()
        return TxnResponse(write.revision, succeeded, responses)

    def compact(self, revision: int) -> int:
        if revision <= self.compacted:
            raise CompactedError()
        if revision > self.current:
            raise FutureRevisionError()
        self.compacted = revision
        return self.current


class _Write:
    """One request's changes, all at main revision current + 1."""

    def __init__(self, model: Model, with_ranges: bool = True) -> None:
        self.model = model
        self.with_ranges = with_ranges
        self.begin_revision = model.current
        self.main = model.current + 1
        self.pending: list[tuple[bytes, KeyValue | None]] = []

    @property
    def revision(self) -> int:
        return self.main if self.pending else self.begin_revision

    def state(self) -> State:
        state = self.model.state_at(self.begin_revision)
        for key, kv in self.pending:
            if kv is None:
                state.pop(key, None)
            else:
                state[key] = kv
        return state

    def state_at(self, revision: int) -> State:
        return self.state() if revision == self.main else self.model.state_at(revision)

    def commit(self) -> None:
        for key, kv in self.pending:
            self.model.changes.setdefault(key, []).append((self.main, kv))
        if self.pending:
            self.model.current = self.main

    def put(self, req: PutRequest) -> PutResponse:
        previous = self.state().get(req.key)
        value, lease = req.value, req.lease
        if req.ignore_value or req.ignore_lease:
            if previous is None:
                raise KeyNotFoundError()
            value = previous.value if req.ignore_value else value
            lease = previous.lease if req.ignore_lease else lease
        created = previous.create_revision if previous else self.main
        version = previous.version + 1 if previous else 1
        self.pending.append((req.key, KeyValue(req.key, created, self.main, version, value, lease)))
        return PutResponse(self.main, previous if req.prev_kv else None)

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        state = self.state()
        doomed = sorted(key for key in state if in_range(key, req.key, req.range_end))
        prev_kvs = tuple(state[key] for key in doomed) if req.prev_kv else ()
        self.pending.extend((key, None) for key in doomed)
        return DeleteRangeResponse(self.revision, len(doomed), prev_kvs)

    def txn(self, req: TxnRequest, begin: State) -> tuple[bool, tuple[ResponseOp, ...]]:
        """Run the taken branch; any error undoes the whole request (the store
        checks everything before writing, so the outcome is the same)."""
        succeeded = all(_compare(begin, compare) for compare in req.compare)
        responses: list[ResponseOp] = []
        for op in req.success if succeeded else req.failure:
            match op:
                case RangeRequest() if not self.with_ranges:
                    pass
                case RangeRequest():
                    self._check_range(op)
                    responses.append(_range(op, self.state_at, self.revision, self.model.compacted))
                case PutRequest():
                    if op.lease and op.lease not in self.model.known_leases:
                        # etcd checks the key first, then the lease.
                        if (op.ignore_value or op.ignore_lease) and op.key not in self.state():
                            raise KeyNotFoundError()
                        raise LeaseNotFoundError()
                    responses.append(self.put(op))
                case DeleteRangeRequest():
                    responses.append(self.delete_range(op))
                case TxnRequest():
                    nested_succeeded, nested = self.txn(op, begin)
                    responses.append(TxnResponse(0, nested_succeeded, nested))
        return succeeded, tuple(responses)

    def _check_range(self, req: RangeRequest) -> None:
        if req.revision == 0:
            return
        if req.revision > self.begin_revision:
            raise FutureRevisionError()
        if req.revision < self.model.compacted:
            raise CompactedError()


def _compare(state: State, compare: Compare) -> bool:
    kvs = [kv for key, kv in sorted(state.items()) if in_range(key, compare.key, compare.range_end)]
    if not kvs:
        if compare.target == CompareTarget.VALUE:
            return False
        kvs = [KeyValue(b"")]
    return all(_compare_one(kv, compare) for kv in kvs)


def _compare_one(kv: KeyValue, compare: Compare) -> bool:
    pairs: dict[CompareTarget, tuple[object, object]] = {
        CompareTarget.VERSION: (kv.version, compare.version),
        CompareTarget.CREATE: (kv.create_revision, compare.create_revision),
        CompareTarget.MOD: (kv.mod_revision, compare.mod_revision),
        CompareTarget.VALUE: (kv.value, compare.value),
        CompareTarget.LEASE: (kv.lease, compare.lease),
    }
    left, right = pairs[compare.target]
    checks = {
        CompareResult.EQUAL: left == right,
        CompareResult.NOT_EQUAL: left != right,
        CompareResult.GREATER: left > right,  # type: ignore[operator]
        CompareResult.LESS: left < right,  # type: ignore[operator]
    }
    return bool(checks[compare.result])


def _range(req: RangeRequest, state_at: object, current: int, compacted: int) -> RangeResponse:
    assert callable(state_at)
    revision = req.revision
    if revision > current:
        raise FutureRevisionError()
    if revision <= 0:
        revision = current
    if revision < compacted:
        raise CompactedError()
    state: State = state_at(revision)
    kvs = [kv for key, kv in sorted(state.items()) if in_range(key, req.key, req.range_end)]
    count = len(kvs)
    if req.count_only:
        kvs = []
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    reads_limited = req.sort_order == SortOrder.NONE and not (
        req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    )
    if reads_limited and req.limit > 0:
        # etcd decides on the ORIGINAL sort order: with NONE it limits the read (in key
        # order) before a sort on another target (which NONE then means ascending).
        kvs = kvs[: req.limit + 1]
    kvs = _sort(kvs, req)
    more = 0 < req.limit < len(kvs)
    if more:
        kvs = kvs[: req.limit]
    if req.keys_only:
        kvs = [replace(kv, value=b"") for kv in kvs]
    return RangeResponse(tuple(kvs), more, count, current)


def _sort(kvs: list[KeyValue], req: RangeRequest) -> list[KeyValue]:
    if req.sort_order == SortOrder.NONE and req.sort_target == SortTarget.KEY:
        return kvs
    attribute = {
        SortTarget.KEY: "key",
        SortTarget.VERSION: "version",
        SortTarget.CREATE: "create_revision",
        SortTarget.MOD: "mod_revision",
        SortTarget.VALUE: "value",
    }[req.sort_target]
    descending = req.sort_order == SortOrder.DESCEND
    return sorted(kvs, key=lambda kv: getattr(kv, attribute), reverse=descending)


__all__ = ["Model", "RequestError", "in_range"]
