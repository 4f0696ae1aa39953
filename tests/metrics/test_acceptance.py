"""Monitoring of a real 3-member cluster (``python -m raftkv serve`` processes): /metrics
moves as expected during a write load, /readyz turns 503 on a member that lost its
quorum, and every log line (--log-format json) parses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.verify.cluster import free_ports
from tests.metrics.scrape import Scrape, http_get, scrape
from tests.procs import RaftkvCluster

SIZE = 3
LOAD_PUTS = 300
LOAD_THREADS = 4
PUT_ATTEMPTS = 5
TIMEOUT_S = 15.0
PUT = {"grpc_type": "unary", "grpc_service": "etcdserverpb.KV", "grpc_method": "Put"}


def _start_cluster(root: Path) -> tuple[RaftkvCluster, list[int]]:
    """Three members, each with its own --listen-metrics-urls port and JSON logs."""
    cluster = RaftkvCluster(root)
    metrics_ports = free_ports(SIZE)
    try:
        planned = [cluster.plan_member(f"m{index + 1}") for index in range(SIZE)]
        initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in planned)
        for member, port in zip(planned, metrics_ports, strict=True):
            cluster.extra_flags = {
                "heartbeat_interval": 50,
                "election_timeout": 500,
                "log_format": "json",
                "listen_metrics_urls": f"http://127.0.0.1:{port}",
            }
            cluster.add_member_process(member.name, initial_cluster, state="new")
    except BaseException:
        cluster.close()
        raise
    return cluster, metrics_ports


def _until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _has_leader(port: int) -> bool:
    try:
        return scrape(port).value("etcd_server_has_leader") == 1
    except OSError:
        return False


def _write_load(endpoint: str, done: list[int], stop: threading.Event) -> None:
    """LOAD_PUTS puts from LOAD_THREADS threads; ``done`` gets each thread's successes."""
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        def writer(offset: int) -> None:
            succeeded = 0
            for index in range(offset, LOAD_PUTS, LOAD_THREADS):
                request = rpc_pb2.PutRequest(key=b"load/%05d" % index, value=b"x" * 64)
                for _ in range(PUT_ATTEMPTS):  # a young cluster may still change leaders
                    if stop.is_set():
                        return
                    try:
                        kv.Put(request, timeout=10)
                    except grpc.RpcError as error:
                        if error.code() is not grpc.StatusCode.UNAVAILABLE:
                            raise
                        time.sleep(0.1)
                    else:
                        succeeded += 1
                        break
            done.append(succeeded)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _check_json_logs(cluster: RaftkvCluster) -> list[list[dict[str, object]]]:
    """Every member's log lines, each parsed as JSON (any other line fails the test)."""
    logs: list[list[dict[str, object]]] = []
    for member in cluster.members:
        documents = []
        for line in member.log_path.read_text(encoding="utf-8").splitlines():
            document = json.loads(line)
            assert {"level", "ts", "logger", "caller", "msg"} <= set(document), line
            documents.append(document)
        assert documents, f"{member.name} logged nothing"
        logs.append(documents)
    return logs


def test_metrics_move_under_load_and_readyz_follows_the_quorum(tmp_path: Path) -> None:
    cluster, metrics_ports = _start_cluster(tmp_path)
    with cluster:
        cluster.wait_for_leader()
        for port in metrics_ports:  # the listener starts after the gRPC port
            _until(lambda port=port: _has_leader(port), "every member to serve /metrics")
        leader = cluster.wait_for_leader()
        target = cluster.member(0)  # the load goes here, leader or not
        before = [scrape(port) for port in metrics_ports]

        done: list[int] = []
        stop = threading.Event()
        load = threading.Thread(target=_write_load, args=(target.client_endpoint, done, stop))
        load.start()
        try:
            during: list[Scrape] = []
            while load.is_alive() and len(during) < 20:
                during.append(scrape(metrics_ports[0]))
                time.sleep(0.05)
        finally:
            load.join(timeout=60)
            stop.set()
        assert sum(done) == LOAD_PUTS

        committed_during = [s.value("etcd_server_proposals_committed_total") for s in during]
        assert committed_during == sorted(committed_during), "the commit index went back"
        after = [scrape(port) for port in metrics_ports]
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            assert new.value("etcd_server_has_leader") == 1, index
            assert new.value("etcd_disk_wal_fsync_duration_seconds_count") > old.value(
                "etcd_disk_wal_fsync_duration_seconds_count"
            ), index
            assert new.value("etcd_disk_backend_commit_duration_seconds_count") > old.value(
                "etcd_disk_backend_commit_duration_seconds_count"
            ), index
        # Every put was committed by every member (followers may apply a moment later).
        floor = before[0].value("etcd_server_proposals_committed_total") + LOAD_PUTS
        for port in metrics_ports:
            _until(
                lambda port=port: (
                    scrape(port).value("etcd_server_proposals_applied_total") >= floor
                ),
                "the followers to apply the load",
            )
        assert sum(s.value("etcd_server_is_leader") for s in after) == 1
        assert after[leader].value("etcd_server_is_leader") == 1
        handled = after[0].get("grpc_server_handled_total", grpc_code="OK", **PUT)
        assert handled - before[0].get("grpc_server_handled_total", grpc_code="OK", **PUT) == (
            LOAD_PUTS
        )
        assert after[0].value("grpc_server_started_total", **PUT) >= LOAD_PUTS
        peer_sent = after[leader].series("etcd_network_peer_sent_bytes_total")
        assert len(peer_sent) == SIZE - 1 and all(v > 0 for v in peer_sent.values())
        assert after[0].value("etcd_mvcc_db_total_size_in_bytes") > 0
        assert after[0].value("etcd_debugging_mvcc_keys_total") >= LOAD_PUTS

        # The JSON gateway serves the same registry.
        gateway = scrape(target.gateway_port)
        assert gateway.value("etcd_server_has_leader") == 1
        assert gateway.get("grpc_server_handled_total", grpc_code="OK", **PUT) >= LOAD_PUTS

        for port in [*metrics_ports, *(m.gateway_port for m in cluster.members)]:
            status, _, body = http_get(port, "/readyz")
            assert (status, body) == (200, b"ok"), port
            assert http_get(port, "/livez")[0] == 200

        # Quorum lost: keep one follower, stop the other two.
        survivor = next(index for index in range(SIZE) if index != leader)
        for index in range(SIZE):
            if index != survivor:
                cluster.kill(index)
        survivor_port = metrics_ports[survivor]
        _until(
            lambda: http_get(survivor_port, "/readyz")[0] == 503,
            "/readyz to turn 503 on the member that lost its quorum",
        )
        status, _, body = http_get(survivor_port, "/readyz")
        assert status == 503 and body.startswith(b"[-]"), body
        gateway_status, _, _ = http_get(cluster.member(survivor).gateway_port, "/readyz")
        assert gateway_status == 503
        health_status, _, health = http_get(survivor_port, "/health")
        assert health_status == 503 and json.loads(health)["health"] == "false"
        assert http_get(survivor_port, "/livez")[0] == 200  # alive, just not ready
        _until(
            lambda: scrape(survivor_port).value("etcd_server_has_leader") == 0,
            "has_leader to drop to 0",
        )
        documents = _check_json_logs(cluster)
        lost = [d for d in documents[survivor] if d["msg"] == "lost leader"]
        assert lost and all(d["level"] == "warn" and "term" in d for d in lost)
