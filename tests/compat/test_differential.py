"""Differential tests: the same seeded random operations against etcd and raftkv.

Each seed runs on a fresh single-member etcd 3.5 and a fresh 3-member raftkv cluster
(requests round-robin over its members); every answer and, at the end, every watch's
events must be equal after normalization (tests/compat/differential.py says what is
normalized and why). Seeds: 1..4 by default; ``RAFTKV_DIFF_SEEDS=N`` runs 1..N,
``RAFTKV_DIFF_SEED=S`` runs only seed S (the replay command a failure prints).

The tests at the end check the harness itself without servers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from tests.client.etcd_cluster import run_etcd_cluster
from tests.compat.differential import (
    TTL_IN_WINDOW,
    Observed,
    Op,
    OpGenerator,
    OpKind,
    TtlWindow,
    first_difference,
    normalize,
)
from tests.compat.runner import run_ops, run_seed
from tests.compat.wire import Server, SyncMode
from tests.procs import RaftkvCluster

DEFAULT_SEEDS = (1, 2, 3, 4)
# etcd's minimum; the sync point of etcd's watches is their progress notification.
ETCD_PROGRESS_INTERVAL = "100ms"
MEMBER_READY_TIMEOUT_S = 20.0
MEMBER_PROBE_TIMEOUT_S = 1.0
MEMBER_PROBE_INTERVAL_S = 0.05


def _seeds() -> list[int]:
    if one := os.environ.get("RAFTKV_DIFF_SEED"):
        return [int(one)]
    if count := os.environ.get("RAFTKV_DIFF_SEEDS"):
        return list(range(1, int(count) + 1))
    return list(DEFAULT_SEEDS)


def _wait_until_serving(endpoint: str) -> None:
    """Until the member answers a linearizable read (it knows the leader)."""
    deadline = time.monotonic() + MEMBER_READY_TIMEOUT_S
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        while True:
            try:
                kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=MEMBER_PROBE_TIMEOUT_S)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(MEMBER_PROBE_INTERVAL_S)


@contextmanager
def fresh_servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """(etcd, raftkv): a new single etcd and a new 3-member raftkv cluster, both empty."""
    (tmp_path / "raftkv").mkdir()
    (tmp_path / "etcd").mkdir()
    with ExitStack() as stack:
        cluster = stack.enter_context(RaftkvCluster.start(tmp_path / "raftkv", size=3))
        etcd = stack.enter_context(
            run_etcd_cluster(
                tmp_path / "etcd",
                size=1,
                extra_args=[
                    f"--experimental-watch-progress-notify-interval={ETCD_PROGRESS_INTERVAL}"
                ],
            )
        )
        cluster.wait_for_leader()
        for endpoint in cluster.endpoints():
            _wait_until_serving(endpoint)
        etcd_server = Server("etcd", etcd.endpoints, SyncMode.PROGRESS_NOTIFY)
        stack.callback(etcd_server.close)
        raftkv_server = Server("raftkv", cluster.endpoints(), SyncMode.PROGRESS_REQUEST)
        stack.callback(raftkv_server.close)
        yield etcd_server, raftkv_server


@pytest.mark.parametrize("seed", _seeds())
def test_raftkv_answers_like_etcd(seed: int, tmp_path: Path) -> None:
    with fresh_servers(tmp_path) as (etcd, raftkv):
        summary = run_seed(seed, etcd, raftkv)
    assert summary.ops == OpGenerator(seed).op_count
    # The run did what it claims: writes, refusals and watch events were all compared.
    assert summary.by_kind[OpKind.PUT] > 0 and summary.by_kind[OpKind.TXN] > 0
    assert summary.refused, "no op was refused: the error paths went untested"
    assert summary.watch_events > 0


def _put_op(request: rpc_pb2.PutRequest) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=request)


def test_prev_kv_of_a_key_deleted_and_put_again_in_one_txn(tmp_path: Path) -> None:
    """A fixed case the random seeds reach only now and then (seeds 23, 27, 32): a txn
    deletes every key >= "a" (a range to b"\\0", which etcd's duplicate-key check lets
    through) and puts "a" again. The put is a create event, which etcd sends without
    prev_kv even though "a" existed at the revision before."""
    delete_from_a = rpc_pb2.DeleteRangeRequest(key=b"a", range_end=b"\0")
    watch_all = rpc_pb2.WatchCreateRequest(
        key=b"\0", range_end=b"\0", prev_kv=True, progress_notify=True
    )
    requests: list[tuple[OpKind, Message, int]] = [
        (OpKind.WATCH_CREATE, watch_all, 0),
        (OpKind.PUT, rpc_pb2.PutRequest(key=b"a", value=b"1"), -1),
        (OpKind.PUT, rpc_pb2.PutRequest(key=b"k/00", value=b"2"), -1),
        (
            OpKind.TXN,
            rpc_pb2.TxnRequest(
                success=[
                    rpc_pb2.RequestOp(request_delete_range=delete_from_a),
                    _put_op(rpc_pb2.PutRequest(key=b"a", value=b"3", prev_kv=True)),
                ]
            ),
            -1,
        ),
        (OpKind.RANGE, rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"), -1),
    ]
    ops = [
        Op(index, kind, request, stream) for index, (kind, request, stream) in enumerate(requests)
    ]
    replay = "python -m pytest -p no:xdist tests/compat/test_differential.py -k put_again"
    with fresh_servers(tmp_path) as (etcd, raftkv):
        summary = run_ops("delete and put again in one txn", replay, ops, etcd, raftkv)
    assert summary.watch_events == 5  # put a, put k/00, delete a, delete k/00, put a


# --- The harness itself (no servers) ---------------------------------------------------


def _simulated_ops(seed: int) -> list[Op]:
    """The ops of ``seed`` with a stand-in store: every op makes a revision, grants and
    compactions to a past revision succeed, watch creates get increasing ids."""
    observed = Observed()
    ops = []
    watch_ids: dict[int, int] = {}
    for op in OpGenerator(seed).ops(observed):
        ops.append(op)
        answer: object = rpc_pb2.PutResponse(
            header=rpc_pb2.ResponseHeader(revision=observed.revision + 1)
        )
        if op.kind is OpKind.WATCH_CREATE:
            watch_id = watch_ids[op.stream] = watch_ids.get(op.stream, -1) + 1
            answer = rpc_pb2.WatchResponse(watch_id=watch_id, created=True)
        elif op.kind is OpKind.WATCH_CANCEL:
            request = op.request
            assert isinstance(request, rpc_pb2.WatchCancelRequest)
            answer = rpc_pb2.WatchResponse(watch_id=request.watch_id, canceled=True)
        request = op.request
        if isinstance(request, rpc_pb2.CompactionRequest) and not (
            observed.compact_revision < request.revision <= observed.revision
        ):
            continue  # refused
        assert isinstance(answer, rpc_pb2.PutResponse | rpc_pb2.WatchResponse)
        observed.record(op, answer)
    return ops


def test_a_seed_always_gives_the_same_ops() -> None:
    first = [op.describe() for op in _simulated_ops(11)]
    again = [op.describe() for op in _simulated_ops(11)]
    other = [op.describe() for op in _simulated_ops(12)]
    assert first == again
    assert first != other


def test_the_ops_cover_every_kind_and_the_refusals() -> None:
    ops = [op for seed in range(1, 11) for op in _simulated_ops(seed)]
    assert {op.kind for op in ops} == set(OpKind)
    texts = [op.describe() for op in ops]
    assert any('"ignore_value": true' in text for text in texts)
    assert any('"TTL": "9000000001"' in text for text in texts)  # too large
    assert any('"serializable": true' in text for text in texts)
    assert any('"filters": ["NOPUT"]' in text for text in texts)
    assert any("request_txn" in text for text in texts)  # nested
    assert any('"watch_id"' in text and "WatchCreate" in text for text in texts)
    assert sum(text.count("request_range") >= 129 for text in texts) >= 1  # too many ops
    assert all(150 <= OpGenerator(seed).op_count <= 300 for seed in range(1, 20))


def _range_op(sort_target: int = 0, sort_order: int = 0, limit: int = 0) -> Op:
    request = rpc_pb2.RangeRequest(key=b"k/", range_end=b"k0", limit=limit)
    request.sort_target = sort_target  # type: ignore[assignment]
    request.sort_order = sort_order  # type: ignore[assignment]
    return Op(0, OpKind.RANGE, request)


def _kv(key: bytes, version: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, version=version, create_revision=2, mod_revision=3)


def test_normalize_drops_member_fields_and_keeps_the_revision() -> None:
    op = _range_op()
    etcd = rpc_pb2.RangeResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=7, raft_term=3),
        kvs=[_kv(b"k/01", 1)],
        count=1,
    )
    raftkv = rpc_pb2.RangeResponse()
    raftkv.CopyFrom(etcd)
    raftkv.header.cluster_id, raftkv.header.member_id, raftkv.header.raft_term = 9, 8, 5
    assert normalize(op, etcd) == normalize(op, raftkv)
    assert normalize(op, etcd)["kvs"][0]["key"] == "b'k/01'"
    raftkv.header.revision = 8
    assert first_difference(normalize(op, etcd), normalize(op, raftkv)) == (
        ".header.revision: '7' != '8'"
    )


def test_ties_of_a_sorted_range_may_come_in_any_order_but_the_sort_values_may_not() -> None:
    op = _range_op(sort_target=rpc_pb2.RangeRequest.VERSION, sort_order=1)
    key_order = rpc_pb2.RangeResponse(kvs=[_kv(b"k/01", 1), _kv(b"k/02", 1), _kv(b"k/03", 2)])
    tie_swapped = rpc_pb2.RangeResponse(kvs=[_kv(b"k/02", 1), _kv(b"k/01", 1), _kv(b"k/03", 2)])
    missorted = rpc_pb2.RangeResponse(kvs=[_kv(b"k/03", 2), _kv(b"k/01", 1), _kv(b"k/02", 1)])
    assert normalize(op, key_order) == normalize(op, tie_swapped)
    assert normalize(op, key_order) != normalize(op, missorted)


def test_a_truncated_last_tie_run_is_compared_by_its_sort_values_only() -> None:
    op = _range_op(sort_target=rpc_pb2.RangeRequest.VERSION, sort_order=1, limit=2)
    one = rpc_pb2.RangeResponse(kvs=[_kv(b"k/05", 1), _kv(b"k/01", 2)], more=True, count=3)
    other = rpc_pb2.RangeResponse(kvs=[_kv(b"k/05", 1), _kv(b"k/02", 2)], more=True, count=3)
    wrong_head = rpc_pb2.RangeResponse(kvs=[_kv(b"k/06", 1), _kv(b"k/01", 2)], more=True)
    assert normalize(op, one) == normalize(op, other)
    assert normalize(op, one) != normalize(op, wrong_head)


def test_time_to_live_is_checked_against_its_window() -> None:
    op = Op(0, OpKind.LEASE_TIME_TO_LIVE, rpc_pb2.LeaseTimeToLiveRequest(ID=5, keys=True))
    window = TtlWindow(low=55, high=60)
    inside = rpc_pb2.LeaseTimeToLiveResponse(ID=5, TTL=58, grantedTTL=60, keys=[b"b", b"a"])
    outside = rpc_pb2.LeaseTimeToLiveResponse(ID=5, TTL=40, grantedTTL=60, keys=[b"a", b"b"])
    assert normalize(op, inside, window)["TTL"] == TTL_IN_WINDOW
    assert normalize(op, inside, window)["keys"] == ["b'a'", "b'b'"]
    assert normalize(op, outside, window)["TTL_window"] == [55, 60]
    assert normalize(op, inside, window) != normalize(op, outside, window)


def test_first_difference_names_the_first_differing_path() -> None:
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None
    assert first_difference({"a": [1, 2]}, {"a": [1, 3]}) == ".a[1]: 2 != 3"
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == ".a: 1 items != 2 items"
    assert first_difference({"a": 1}, {"b": 1}) == ".a: 1 != '(absent)'"
    error = {"error": {"code": "NOT_FOUND", "details": "etcdserver: requested lease not found"}}
    assert first_difference(error, {"response": {}}) is not None
