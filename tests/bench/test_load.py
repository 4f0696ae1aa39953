"""`raftkv bench` against a real single-member etcd: every workload, 2 worker processes.

Each check ties the generator's counts to what the server holds (revisions, key versions,
events), so a generator that only counts its own attempts would fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.bench.load import (
    BenchOptions,
    BenchResult,
    current_revision,
    find_leader,
    plan_workers,
    run_bench,
)
from raftkv.bench.workloads import RateLimiter, WorkloadSettings, prefix_end
from tests.etcd_process import EtcdProcess, run_etcd

RUN_S = 2.0


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    with run_etcd(tmp_path_factory.mktemp("bench-etcd")) as process:
        yield process


def bench(etcd: EtcdProcess, workload: str, **settings: object) -> BenchResult:
    defaults: dict[str, object] = {"clients": 8, "connections": 4, "workers": 2, "quiet": True}
    defaults.update(settings)
    options = BenchOptions(endpoints=(etcd.client_url,), workload=workload, **defaults)  # type: ignore[arg-type]
    return run_bench(options)


def keys_under(endpoint: str, prefix: bytes) -> list[rpc_pb2.KeyValue]:
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        request = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        return list(kv.Range(request, timeout=5).kvs)


def test_put_counts_every_acknowledged_write(etcd: EtcdProcess) -> None:
    before = current_revision(etcd.endpoint)
    result = bench(etcd, "put", total=400, sequential_keys=True)
    assert result.total_errors == 0
    assert result.histograms["put"].count == 400
    # Every put made exactly one revision, and nothing else wrote meanwhile.
    assert current_revision(etcd.endpoint) - before == 400
    assert result.settings["workers"] == 2
    assert result.ops_per_s() > 0
    max_ms = result.histograms["put"].max_ns / 1e6
    assert 0 < result.latency_ms(50.0) <= result.latency_ms(99.0) <= max_ms


def test_duration_bounds_the_run(etcd: EtcdProcess) -> None:
    started = time.monotonic()
    result = bench(etcd, "put", duration_s=RUN_S)
    assert result.total_errors == 0 and result.histograms["put"].count > 0
    assert RUN_S <= result.elapsed_s < RUN_S + 1.5
    assert time.monotonic() - started < RUN_S + 15  # worker start-up included


def test_rate_limit_caps_total_throughput(etcd: EtcdProcess) -> None:
    result = bench(etcd, "put", duration_s=RUN_S, rate_ops_s=100.0)
    count = result.histograms["put"].count
    # 100/s over 2 s, split over 2 workers, with a burst of at most one request each.
    assert 150 <= count <= 100 * RUN_S + 4, count


@pytest.mark.parametrize("serializable", [False, True])
def test_range_reads_preloaded_keys(etcd: EtcdProcess, serializable: bool) -> None:
    result = bench(etcd, "range", duration_s=RUN_S, serializable=serializable, range_keys=200)
    assert result.total_errors == 0
    assert result.histograms["range"].count > 0
    assert result.counters.get("range_missing_key", 0) == 0


def test_txn_cas_successes_match_key_versions(etcd: EtcdProcess) -> None:
    result = bench(etcd, "txn", duration_s=RUN_S)
    assert result.total_errors == 0
    succeeded = result.counters["txn_succeeded"]
    assert succeeded > 0 and result.counters.get("txn_failed", 0) == 0  # a key per client
    assert succeeded == result.histograms["txn"].count
    kvs = keys_under(etcd.endpoint, result.settings["run_prefix"].encode() + b"t/")
    assert len(kvs) == 8
    assert sum(kv.version for kv in kvs) == succeeded  # each success was one put of its key


def test_watch_every_watcher_gets_every_event(etcd: EtcdProcess) -> None:
    result = bench(etcd, "watch", clients=4, watchers=30, total=120)
    c = result.counters
    assert result.total_errors == 0
    assert result.histograms["put"].count == 120
    assert c["watchers"] == 30
    assert c["watch_events_expected"] == 30 * 120
    assert c["watch_events_delivered"] == 30 * 120
    assert c["watch_events_lost"] == 0 and c["watch_events_extra"] == 0
    assert c["watch_events_out_of_order"] == 0
    assert result.histograms["watch_delivery"].count == 30 * 120
    assert result.watch_events_per_s() > 0


def test_lease_grant_keepalive_revoke(etcd: EtcdProcess) -> None:
    result = bench(etcd, "lease", duration_s=RUN_S, keepalives_per_lease=20)
    assert result.total_errors == 0
    grants = result.histograms["lease_grant"].count
    assert grants > 0 and result.histograms["lease_keepalive"].count > 0
    assert result.histograms["lease_revoke"].count >= grants - 8  # a client may stop mid-lease
    assert result.counters.get("lease_keepalive_expired", 0) == 0
    with grpc.insecure_channel(etcd.endpoint) as channel:
        leases = rpc_pb2_grpc.LeaseStub(channel).LeaseLeases(rpc_pb2.LeaseLeasesRequest())
        assert len(leases.leases) <= 8  # revoked, except those of clients stopped mid-lease


def test_mixed_informers_see_the_updates(etcd: EtcdProcess) -> None:
    result = bench(etcd, "mixed", duration_s=RUN_S, watchers=4, mixed_objects=100)
    assert result.total_errors == 0
    updates = result.histograms["update"].count
    conflicts = result.counters.get("update_conflicts", 0)
    assert updates > 0 and result.histograms["informer_list"].count == 4
    succeeded = updates - conflicts
    # Each successful CAS bumped its object's version once (the preload made version 1).
    pods = result.settings["run_prefix"].encode() + b"registry/pods/"
    objects = keys_under(etcd.endpoint, pods)
    assert len(objects) == 100
    assert sum(kv.version - 1 for kv in objects) == succeeded
    # Informers watch from their LIST's revision: they see some updates, never more.
    assert 0 < result.counters["informer_events"] <= 4 * succeeded
    assert result.counters["informer_events_out_of_order"] == 0


def test_target_leader_finds_the_member(etcd: EtcdProcess) -> None:
    assert find_leader([etcd.endpoint]) == etcd.endpoint


def test_plan_splits_clients_connections_and_requests() -> None:
    settings = WorkloadSettings(workload="put")
    options = BenchOptions(
        endpoints=("a:1", "b:1", "c:1"),
        workload="put",
        clients=10,
        connections=5,
        workers=3,
        total=1001,
        rate_ops_s=100.0,
    )
    plans = plan_workers(options, list(options.endpoints), settings, seed=1)
    assert len(plans) == 3
    assert sorted(cid for p in plans for cid in p.client_ids) == list(range(10))
    assert sum(len(p.channel_endpoints) for p in plans) == 5
    assert sorted(e for p in plans for e in p.channel_endpoints) == sorted(
        ["a:1", "b:1", "c:1", "a:1", "b:1"]
    )
    assert sum(p.request_quota or 0 for p in plans) == 1001
    assert sum(p.rate_ops_s or 0 for p in plans) == pytest.approx(100.0)
    # One connection cannot be shared by two processes.
    one_conn = BenchOptions(
        endpoints=("a:1",), workload="put", clients=10, connections=1, workers=4
    )
    assert len(plan_workers(one_conn, ["a:1"], settings, seed=1)) == 1


def test_rate_limiter_spaces_requests_without_bursting() -> None:
    async def run() -> tuple[int, float]:
        limiter = RateLimiter(200.0)
        await asyncio.sleep(0.2)  # idle: a token bucket must not save these up
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 0.5:
            await limiter.wait()
            sent += 1
        return sent, time.monotonic() - started

    sent, elapsed = asyncio.run(run())
    assert sent <= 200 * elapsed + 3, (sent, elapsed)
    assert sent >= 200 * 0.5 * 0.8, sent
