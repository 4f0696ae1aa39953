"""The KV service over gRPC: range options, writes, txns, compaction, errors, headers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.options import ApiOptions
from raftkv.storage.mvcc import RangeRequest
from tests.api.conftest import ApiServer, start_api
from tests.api.helpers import rpc_error, status_of

Sort = rpc_pb2.RangeRequest


def put(api: ApiServer, key: bytes, value: bytes = b"v", **fields: object) -> rpc_pb2.PutResponse:
    return api.kv.Put(rpc_pb2.PutRequest(key=key, value=value, **fields))  # type: ignore[arg-type]


def keys(response: rpc_pb2.RangeResponse) -> list[bytes]:
    return [kv.key for kv in response.kvs]


def test_put_then_range_carries_the_members_header(api: ApiServer) -> None:
    written = put(api, b"foo", b"bar")
    assert written.header.revision == 2  # etcd's store starts at revision 1
    assert written.header.cluster_id == api.node.cluster_id
    assert written.header.member_id == api.node.member_id
    assert written.header.raft_term == api.node.raft_term
    got = api.kv.Range(rpc_pb2.RangeRequest(key=b"foo"))
    assert got.header.revision == 2
    assert got.count == 1 and not got.more
    (kv,) = got.kvs
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"foo",
        b"bar",
        2,
        2,
        1,
        0,
    )
    again = put(api, b"foo", b"baz", prev_kv=True)
    assert again.header.revision == 3
    assert (again.prev_kv.value, again.prev_kv.mod_revision) == (b"bar", 2)


def test_range_options(api: ApiServer) -> None:
    # Revisions: a=2, b=3, c=4, d=5, then b=6 (version 2), e=7.
    for key, value in [(b"a", b"5"), (b"b", b"4"), (b"c", b"3"), (b"d", b"2")]:
        put(api, key, value)
    put(api, b"b", b"9")
    put(api, b"e", b"1")
    kv = api.kv

    prefix_all = kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"f"))
    assert keys(prefix_all) == [b"a", b"b", b"c", b"d", b"e"] and prefix_all.count == 5
    from_c = kv.Range(rpc_pb2.RangeRequest(key=b"c", range_end=b"\0"))
    assert keys(from_c) == [b"c", b"d", b"e"]
    everything = kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"))
    assert everything.count == 5

    limited = kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"f", limit=2))
    assert keys(limited) == [b"a", b"b"] and limited.more and limited.count == 5

    def sorted_keys(order: int, target: int) -> list[bytes]:
        request = rpc_pb2.RangeRequest(
            key=b"a",
            range_end=b"f",
            sort_order=order,  # type: ignore[arg-type]
            sort_target=target,  # type: ignore[arg-type]
        )
        return keys(kv.Range(request))

    assert sorted_keys(Sort.DESCEND, Sort.KEY) == [b"e", b"d", b"c", b"b", b"a"]
    assert sorted_keys(Sort.ASCEND, Sort.VALUE) == [b"e", b"d", b"c", b"a", b"b"]
    assert sorted_keys(Sort.DESCEND, Sort.MOD) == [b"e", b"b", b"d", b"c", b"a"]
    assert sorted_keys(Sort.DESCEND, Sort.CREATE) == [b"e", b"d", b"c", b"b", b"a"]
    assert sorted_keys(Sort.DESCEND, Sort.VERSION)[0] == b"b"

    keys_only = kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"f", keys_only=True))
    assert keys(keys_only) == [b"a", b"b", b"c", b"d", b"e"]
    assert all(item.value == b"" for item in keys_only.kvs)
    count_only = kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"f", count_only=True))
    assert list(count_only.kvs) == [] and count_only.count == 5

    historical = kv.Range(rpc_pb2.RangeRequest(key=b"b", revision=5))
    assert historical.kvs[0].value == b"4" and historical.header.revision == 7

    def filtered(**bounds: int) -> list[bytes]:
        request = rpc_pb2.RangeRequest(key=b"a", range_end=b"f", **bounds)  # type: ignore[arg-type]
        return keys(kv.Range(request))

    assert filtered(min_mod_revision=5) == [b"b", b"d", b"e"]
    assert filtered(max_mod_revision=4) == [b"a", b"c"]
    assert filtered(min_create_revision=4) == [b"c", b"d", b"e"]
    assert filtered(max_create_revision=3) == [b"a", b"b"]


def test_delete_range_reports_deleted_keys(api: ApiServer) -> None:
    for key in (b"k1", b"k2", b"k3"):
        put(api, key, key.upper())
    deleted = api.kv.DeleteRange(
        rpc_pb2.DeleteRangeRequest(key=b"k1", range_end=b"k3", prev_kv=True)
    )
    assert deleted.deleted == 2 and deleted.header.revision == 5
    assert [kv.value for kv in deleted.prev_kvs] == [b"K1", b"K2"]
    nothing = api.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"absent"))
    assert nothing.deleted == 0 and nothing.header.revision == 5  # no new revision
    left = api.kv.Range(rpc_pb2.RangeRequest(key=b"k", range_end=b"l"))
    assert keys(left) == [b"k3"]


def compare(key: bytes, result: int, target: int, **operand: object) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(key=key, result=result, target=target, **operand)  # type: ignore[arg-type]


def test_txn_compares_and_response_shape(api: ApiServer) -> None:
    put(api, b"x", b"1")  # rev 2
    put(api, b"x", b"2")  # rev 3, version 2
    put(api, b"y", b"1")  # rev 4
    C = rpc_pb2.Compare
    cases = [
        (compare(b"x", C.EQUAL, C.VALUE, value=b"2"), True),
        (compare(b"x", C.NOT_EQUAL, C.VALUE, value=b"2"), False),
        (compare(b"x", C.GREATER, C.VERSION, version=1), True),
        (compare(b"x", C.LESS, C.MOD, mod_revision=3), False),
        (compare(b"x", C.EQUAL, C.CREATE, create_revision=2), True),
        (compare(b"x", C.EQUAL, C.LEASE, lease=0), True),
        (compare(b"absent", C.EQUAL, C.VERSION, version=0), True),
        # With range_end every key in [x, z) must satisfy it: x has version 2, y 1.
        (compare(b"x", C.GREATER, C.VERSION, version=0, range_end=b"z"), True),
        (compare(b"x", C.GREATER, C.VERSION, version=1, range_end=b"z"), False),
    ]
    for item, expected in cases:
        response = api.kv.Txn(rpc_pb2.TxnRequest(compare=[item]))
        assert response.succeeded is expected, item
        assert response.header.revision == 4  # read-only: the current revision

    nested = rpc_pb2.TxnRequest(
        compare=[compare(b"y", C.EQUAL, C.VALUE, value=b"1")],
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"z", value=b"new")),
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"x")),
            rpc_pb2.RequestOp(
                request_txn=rpc_pb2.TxnRequest(
                    success=[
                        rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"y"))
                    ]
                )
            ),
        ],
        failure=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"z", value=b"other"))],
    )
    response = api.kv.Txn(nested)
    assert response.succeeded and response.header.revision == 5  # one revision per txn
    put_op, range_op, txn_op = response.responses
    # Inside a txn etcd's responses carry a header with only the revision...
    assert put_op.response_put.header == rpc_pb2.ResponseHeader(revision=5)
    assert range_op.response_range.header == rpc_pb2.ResponseHeader(revision=5)
    assert [kv.value for kv in range_op.response_range.kvs] == [b"2"]
    # ...and a nested txn's response an empty one (present on the wire, as etcd sends it;
    # found by tests/compat/test_differential.py).
    assert txn_op.response_txn.HasField("header")
    assert txn_op.response_txn.header == rpc_pb2.ResponseHeader()
    assert txn_op.response_txn.succeeded
    assert txn_op.response_txn.responses[0].response_delete_range.deleted == 1
    assert keys(api.kv.Range(rpc_pb2.RangeRequest(key=b"y"))) == []


def test_reads_wait_for_the_barrier_unless_serializable(api: ApiServer) -> None:
    barriers: list[int] = []
    original = api.node.read_barrier

    async def counting_barrier() -> None:
        barriers.append(1)
        await original()

    api.run(lambda: setattr(api.node, "read_barrier", counting_barrier))
    put(api, b"k")
    assert barriers == []  # writes do not need it
    api.kv.Range(rpc_pb2.RangeRequest(key=b"k"))
    assert len(barriers) == 1
    api.kv.Range(rpc_pb2.RangeRequest(key=b"k", serializable=True))
    assert len(barriers) == 1
    serializable_range = rpc_pb2.RequestOp(
        request_range=rpc_pb2.RangeRequest(key=b"k", serializable=True)
    )
    api.kv.Txn(rpc_pb2.TxnRequest(success=[serializable_range]))
    assert len(barriers) == 1  # every op is a serializable range: no barrier, as etcd
    linearizable_range = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))
    api.kv.Txn(rpc_pb2.TxnRequest(success=[serializable_range, linearizable_range]))
    assert len(barriers) == 2


def test_compaction(api: ApiServer) -> None:
    for value in (b"1", b"2", b"3"):
        put(api, b"c", value)  # revisions 2, 3, 4
    compacted = api.kv.Compact(rpc_pb2.CompactionRequest(revision=3, physical=True))
    assert compacted.header.revision == 4
    old = rpc_error(lambda: api.kv.Range(rpc_pb2.RangeRequest(key=b"c", revision=2)))
    assert status_of(old) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"c", revision=3)).kvs[0].value == b"2"
    future = rpc_error(lambda: api.kv.Range(rpc_pb2.RangeRequest(key=b"c", revision=9)))
    assert status_of(future) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )
    again = rpc_error(lambda: api.kv.Compact(rpc_pb2.CompactionRequest(revision=3)))
    assert status_of(again)[0] == grpc.StatusCode.OUT_OF_RANGE
    too_far = rpc_error(lambda: api.kv.Compact(rpc_pb2.CompactionRequest(revision=9)))
    assert status_of(too_far) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )


def put_op(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key))


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (rpc_pb2.PutRequest(key=b""), (INVALID, "etcdserver: key is not provided")),
        (
            rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True),
            (INVALID, "etcdserver: value is provided"),
        ),
        (
            rpc_pb2.PutRequest(key=b"k", lease=5, ignore_lease=True),
            (INVALID, "etcdserver: lease is provided"),
        ),
        (
            rpc_pb2.PutRequest(key=b"k", lease=12345),
            (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
        ),
        (
            rpc_pb2.PutRequest(key=b"absent", ignore_value=True),
            (INVALID, "etcdserver: key not found"),
        ),
        (rpc_pb2.RangeRequest(key=b""), (INVALID, "etcdserver: key is not provided")),
        (
            rpc_pb2.RangeRequest(key=b"k", sort_order=7),  # type: ignore[arg-type]
            (INVALID, "etcdserver: invalid sort option"),
        ),
        (
            rpc_pb2.RangeRequest(key=b"k", sort_target=9),  # type: ignore[arg-type]
            (INVALID, "etcdserver: invalid sort option"),
        ),
        (rpc_pb2.DeleteRangeRequest(key=b""), (INVALID, "etcdserver: key is not provided")),
        (
            rpc_pb2.TxnRequest(success=[put_op(b"k%d" % i) for i in range(129)]),
            (INVALID, "etcdserver: too many operations in txn request"),
        ),
        (
            rpc_pb2.TxnRequest(success=[put_op(b"k"), put_op(b"k")]),
            (INVALID, "etcdserver: duplicate key given in txn request"),
        ),
        (rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()]), (INVALID, "etcdserver: key not found")),
        (
            rpc_pb2.TxnRequest(compare=[compare(b"k", 9, 0)]),
            (INVALID, "raftkv: unknown compare result value 9"),
        ),
        (
            rpc_pb2.TxnRequest(compare=[compare(b"k", 0, 8)]),
            (INVALID, "raftkv: unknown compare target value 8"),
        ),
        (
            rpc_pb2.TxnRequest(compare=[compare(b"", 0, 0)]),
            (INVALID, "etcdserver: key is not provided"),
        ),
    ],
)
def test_refusals_have_etcds_code_and_message(
    api: ApiServer, request_: object, expected: tuple[grpc.StatusCode, str]
) -> None:
    methods: dict[type, Callable[[Any], Any]] = {
        rpc_pb2.PutRequest: api.kv.Put,
        rpc_pb2.RangeRequest: api.kv.Range,
        rpc_pb2.DeleteRangeRequest: api.kv.DeleteRange,
        rpc_pb2.TxnRequest: api.kv.Txn,
    }
    method = methods[type(request_)]
    error = rpc_error(lambda: method(request_))
    assert status_of(error) == expected
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"k")).header.revision == 1  # nothing written


def test_request_larger_than_max_request_bytes(tmp_path: Path) -> None:
    api = start_api(tmp_path, ApiOptions(max_request_bytes=4096))
    try:
        put(api, b"small", b"x" * 3000)
        error = rpc_error(lambda: put(api, b"big", b"x" * 5000))
        assert status_of(error) == (INVALID, "etcdserver: request is too large")
        big_txn = rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t%d" % i, value=b"x" * 1500))
                for i in range(3)
            ]
        )
        error = rpc_error(lambda: api.kv.Txn(big_txn))
        assert status_of(error) == (INVALID, "etcdserver: request is too large")
        # Beyond the gRPC limit (max_request_bytes + 512 KiB) gRPC itself refuses it.
        huge = rpc_error(lambda: put(api, b"huge", b"x" * (600 * 1024)))
        assert status_of(huge)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        api.stop()


def test_txn_op_limit_follows_the_options(tmp_path: Path) -> None:
    api = start_api(tmp_path, ApiOptions(max_txn_ops=2))
    try:
        api.kv.Txn(rpc_pb2.TxnRequest(success=[put_op(b"a"), put_op(b"b")]))
        error = rpc_error(
            lambda: api.kv.Txn(
                rpc_pb2.TxnRequest(success=[put_op(b"a"), put_op(b"b"), put_op(b"c")])
            )
        )
        assert status_of(error) == (INVALID, "etcdserver: too many operations in txn request")
    finally:
        api.stop()


def test_hasleader_metadata_refuses_without_a_leader(api: ApiServer) -> None:
    put(api, b"k")
    require_leader = (("hasleader", "true"),)
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=require_leader).count == 1
    api.run(lambda: setattr(api.node, "leader_id", 0))
    error = rpc_error(lambda: api.kv.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=require_leader))
    assert status_of(error) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    # Without the metadata the member still answers (a serializable read, say).
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"k")).count == 1


def test_unexpected_errors_are_unknown_without_traceback(api: ApiServer) -> None:
    def broken_range(request: RangeRequest) -> None:
        raise RuntimeError("the disk is on fire")

    api.run(lambda: setattr(api.node.kv, "range", broken_range))
    error = rpc_error(lambda: api.kv.Range(rpc_pb2.RangeRequest(key=b"k")))
    assert status_of(error) == (grpc.StatusCode.UNKNOWN, "the disk is on fire")
