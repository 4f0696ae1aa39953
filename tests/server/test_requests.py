"""The replicated request codec: round trip, determinism, strict decoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv import limits
from raftkv.server.requests import (
    MAX_TXN_DEPTH,
    VERSION,
    AlarmAction,
    AlarmRequest,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    MemberAttributesRequest,
    MemberUpdateRequest,
    Request,
    RequestDecodeError,
    decode,
    encode,
)
from raftkv.storage.alarm import AlarmType
from raftkv.storage.errors import RequestTooLargeError
from raftkv.storage.mvcc import (
    CompactionRequest,
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
)

int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
small_bytes = st.binary(max_size=16)

puts = st.builds(
    PutRequest, small_bytes, small_bytes, int64, st.booleans(), st.booleans(), st.booleans()
)
deletes = st.builds(DeleteRangeRequest, small_bytes, small_bytes, st.booleans())
ranges = st.builds(
    RangeRequest,
    small_bytes,
    small_bytes,
    int64,
    int64,
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    int64,
    int64,
    int64,
    int64,
)
compares = st.builds(
    Compare,
    st.sampled_from(CompareResult),
    st.sampled_from(CompareTarget),
    small_bytes,
    small_bytes,
    int64,
    int64,
    int64,
    small_bytes,
    int64,
)


def _txns(ops: st.SearchStrategy[RequestOp]) -> st.SearchStrategy[TxnRequest]:
    return st.builds(
        TxnRequest,
        st.lists(compares, max_size=3).map(tuple),
        st.lists(ops, max_size=3).map(tuple),
        st.lists(ops, max_size=3).map(tuple),
    )


txn_ops: st.SearchStrategy[RequestOp] = st.recursive(
    st.one_of(puts, deletes, ranges), _txns, max_leaves=12
)
requests: st.SearchStrategy[Request] = st.one_of(
    puts,
    deletes,
    _txns(txn_ops),
    st.builds(CompactionRequest, int64, st.booleans()),
    st.builds(LeaseGrantRequest, int64, int64),
    st.builds(LeaseRevokeRequest, int64),
    st.builds(LeaseCheckpointRequest, st.lists(st.tuples(int64, int64), max_size=5).map(tuple)),
    st.builds(AlarmRequest, st.sampled_from(AlarmAction), uint64, st.sampled_from(AlarmType)),
    st.builds(
        MemberAttributesRequest, uint64, st.text(max_size=8), st.lists(st.text()).map(tuple)
    ),
    st.builds(MemberUpdateRequest, uint64, st.lists(st.text(max_size=20)).map(tuple)),
)


@given(uint64, requests)
def test_round_trip(request_id: int, request: Request) -> None:
    data = encode(request_id, request)
    assert data[0] == VERSION
    assert decode(data) == (request_id, request)
    assert encode(request_id, request) == data  # deterministic


@settings(deadline=None, max_examples=50)
@given(uint64, requests)
def test_every_truncation_or_extension_is_refused(request_id: int, request: Request) -> None:
    data = encode(request_id, request)
    for cut in range(len(data)):
        with pytest.raises(RequestDecodeError):
            decode(data[:cut])
    with pytest.raises(RequestDecodeError):
        decode(data + b"\0")


@given(st.binary(max_size=64))
def test_garbage_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(RequestDecodeError):
        decode(data)


def test_unknown_version_is_refused() -> None:
    data = encode(7, LeaseRevokeRequest(1))
    with pytest.raises(RequestDecodeError, match="version"):
        decode(bytes([VERSION + 1]) + data[1:])


def test_top_level_range_is_refused() -> None:
    txn = encode(1, TxnRequest(success=(RangeRequest(b"k"),)))
    # Header (version, id), then TXN tag, 0 compares, 1 success op: the range op follows.
    range_op = txn[5:-1]
    with pytest.raises(RequestDecodeError, match="range"):
        decode(txn[:2] + range_op)


def test_compact_encoding_of_a_large_put() -> None:
    value = b"v" * (limits.MAX_REQUEST_BYTES - 100)
    data = encode(1, PutRequest(b"key", value))
    assert len(data) <= len(value) + 20
    with pytest.raises(RequestTooLargeError):
        encode(1, PutRequest(b"key", value + b"v" * 200))


def test_nesting_is_bounded() -> None:
    txn = TxnRequest()
    for _ in range(MAX_TXN_DEPTH - 1):
        txn = TxnRequest(success=(txn,))
    assert decode(encode(1, txn))[1] == txn
    with pytest.raises(RequestTooLargeError):
        encode(1, TxnRequest(success=(txn,)))
