"""Property tests: random request sequences against the plain model (model.py).

Every response (or error) of the store must equal the model's, ranges at
random revisions included, across batches of several requests, failed
batches and restarts.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from raftkv.storage.errors import DuplicateKeyError, RequestError
from raftkv.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    validate_txn,
)
from tests.mvcc.helpers import KNOWN_LEASES, KV, open_backend
from tests.mvcc.model import Model

keys = st.sampled_from([b"a", b"ab", b"b", b"c", b"d"])
range_ends = st.sampled_from([b"", b"", b"\0", b"b", b"c", b"e", b"a"])
values = st.sampled_from([b"", b"x", b"y", b"zz"])
leases = st.sampled_from([0, 0, 7, 8, 99])
# Inside txns (drawn before the store's revision is known): mostly "latest".
revisions = st.sampled_from([0, 0, 0, 0, -1, -2, 1, 2, 3, 5, 8, 13, 21])
# Revision filters: mostly off, so that plain limits are exercised too.
filter_revisions = st.sampled_from([0] * 12 + [2, 4, 6, 9])


def _valid_put(
    key: bytes, value: bytes, lease: int, prev_kv: bool, ignore_value: bool, ignore_lease: bool
) -> PutRequest:
    # What validate_put lets through: no value with ignore_value, no lease with ignore_lease.
    return PutRequest(
        key,
        b"" if ignore_value else value,
        0 if ignore_lease else lease,
        prev_kv,
        ignore_value,
        ignore_lease,
    )


puts = st.builds(
    _valid_put,
    keys,
    values,
    leases,
    st.booleans(),
    st.integers(0, 3).map(lambda n: n == 0),
    st.integers(0, 3).map(lambda n: n == 0),
)
deletes = st.builds(DeleteRangeRequest, keys, range_ends, st.booleans())
ranges = st.builds(
    RangeRequest,
    key=st.sampled_from([b"a", b"b", b"c", b"\0"]),
    range_end=range_ends,
    limit=st.integers(-1, 3),
    revision=revisions,
    sort_order=st.sampled_from([SortOrder.NONE] * 4 + [SortOrder.ASCEND, SortOrder.DESCEND]),
    sort_target=st.sampled_from(SortTarget),
    keys_only=st.booleans(),
    count_only=st.integers(0, 6).map(lambda n: n == 0),
    min_mod_revision=filter_revisions,
    max_mod_revision=filter_revisions,
    min_create_revision=filter_revisions,
    max_create_revision=filter_revisions,
)
compares = st.builds(
    Compare,
    result=st.sampled_from(CompareResult),
    target=st.sampled_from(CompareTarget),
    key=keys,
    range_end=range_ends,
    version=st.integers(0, 3),
    create_revision=st.integers(0, 12),
    mod_revision=st.integers(0, 12),
    value=values,
    lease=leases,
)
leaf_ops: st.SearchStrategy[RequestOp] = st.one_of(puts, deletes, ranges)
nested_txns = st.builds(
    TxnRequest,
    st.lists(compares, max_size=2).map(tuple),
    st.lists(leaf_ops, max_size=3).map(tuple),
    st.lists(leaf_ops, max_size=3).map(tuple),
)
txns = st.builds(
    TxnRequest,
    st.lists(compares, max_size=3).map(tuple),
    st.lists(st.one_of(leaf_ops, nested_txns), max_size=4).map(tuple),
    st.lists(st.one_of(leaf_ops, nested_txns), max_size=4).map(tuple),
)
writes = st.one_of(puts, puts, deletes, txns)


def outcome(call: Callable[[], Any]) -> Any:
    """The response, or the error's type and message."""
    try:
        result = call()
    except RequestError as error:
        event(f"error: {type(error).__name__}")
        return type(error), str(error)
    event(f"ok: {type(result).__name__}")
    return result


class MVCCMachine(RuleBasedStateMachine):
    batch_commits = False

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="mvcc-model-")
        self.kv = KV(open_backend(self.directory, batch_commits=self.batch_commits))
        self.model = Model(KNOWN_LEASES)

    def teardown(self) -> None:
        self.kv.backend.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _apply(self, batch: Any, request: Any) -> Any:
        store = self.kv.store
        match request:
            case PutRequest():
                return outcome(lambda: store.put(batch, request))
            case DeleteRangeRequest():
                return outcome(lambda: store.delete_range(batch, request))
            case _:
                return outcome(lambda: store.txn(batch, request))

    def _model_apply(self, request: Any) -> Any:
        match request:
            case PutRequest():
                return outcome(lambda: self.model.put(request))
            case DeleteRangeRequest():
                return outcome(lambda: self.model.delete_range(request))
            case _:
                return outcome(lambda: self.model.txn(request))

    @rule(request=writes)
    def write(self, request: PutRequest | DeleteRangeRequest | TxnRequest) -> None:
        if isinstance(request, TxnRequest) and _invalid(request):
            return
        with self.kv.backend.write() as batch:
            got = self._apply(batch, request)
        assert got == self._model_apply(request)

    @rule(requests=st.lists(writes, min_size=2, max_size=5))
    def write_batch(self, requests: list[Any]) -> None:
        requests = [r for r in requests if not (isinstance(r, TxnRequest) and _invalid(r))]
        with self.kv.backend.write() as batch:
            got = [self._apply(batch, request) for request in requests]
        assert got == [self._model_apply(request) for request in requests]

    @rule(requests=st.lists(writes, min_size=1, max_size=4))
    def failed_batch(self, requests: list[Any]) -> None:
        try:
            with self.kv.backend.write() as batch:
                for request in requests:
                    if not (isinstance(request, TxnRequest) and _invalid(request)):
                        self._apply(batch, request)
                raise _Abort()
        except _Abort:
            pass  # the model did not see these requests

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        revision = data.draw(self._revision_near_history())

        def store_compact() -> int:
            with self.kv.backend.write() as batch:
                return self.kv.store.compact(batch, revision).revision

        assert outcome(store_compact) == outcome(lambda: self.model.compact(revision))

    @rule(request=ranges, data=st.data())
    def range(self, request: RangeRequest, data: st.DataObject) -> None:
        request = replace(request, revision=data.draw(self._revision_near_history()))
        event(f"range over {min(self.model.range(replace(request, revision=0)).count, 3)} keys")
        assert outcome(lambda: self.kv.store.range(request)) == outcome(
            lambda: self.model.range(request)
        )

    def _revision_near_history(self) -> st.SearchStrategy[int]:
        """Mostly readable revisions, sometimes one just outside on either side."""
        low = max(self.model.compacted, 1)
        return st.one_of(
            st.just(0),
            st.integers(low, self.model.current),
            st.integers(low - 2, self.model.current + 2),
        )

    @rule()
    def restart(self) -> None:
        self.kv.restart()

    @invariant()
    def same_revisions(self) -> None:
        store = self.kv.store
        assert (store.current_revision, store.compacted_revision) == (
            self.model.current,
            self.model.compacted,
        )

    @invariant()
    def same_history(self) -> None:
        """Every readable revision reads the same, over all keys."""
        first = max(self.model.compacted, 1)
        for revision in range(first, self.model.current + 1):
            request = RangeRequest(b"\0", b"\0", revision=revision)
            assert self.kv.store.range(request) == self.model.range(request)


class _Abort(Exception):
    pass


def _invalid(request: TxnRequest) -> bool:
    """Txns the API would refuse (duplicate keys) never reach the store."""
    try:
        validate_txn(request)
    except DuplicateKeyError:
        return True
    return False


MVCCMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMVCCAgainstModel = MVCCMachine.TestCase


class BatchedMVCCMachine(MVCCMachine):
    """The same, on a backend that batches commits as a member's does."""

    batch_commits = True


BatchedMVCCMachine.TestCase.settings = MVCCMachine.TestCase.settings
TestBatchedMVCCAgainstModel = BatchedMVCCMachine.TestCase
