"""raftkv's metric families against a real etcd 3.5's /metrics: the same names, types,
label names and histogram buckets, so etcd's dashboards and alert rules work unchanged."""

from __future__ import annotations

from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server import metrics
from tests.metrics.scrape import Scrape, parse, scrape
from tests.procs import RaftkvCluster

# Families etcd exports only once it has peers (a one-member etcd shows none).
NEEDS_PEERS = {"etcd_network_peer_sent_bytes", "etcd_network_peer_received_bytes"}


def _etcd_metrics(tmp_path: Path) -> Scrape:
    with RaftkvCluster.start(tmp_path, size=1, flavor="etcd", metrics="extensive") as cluster:
        cluster.wait_for_leader()
        member = cluster.member(0)
        with grpc.insecure_channel(member.client_endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)
            kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
        return scrape(member.client_port)  # etcd serves /metrics on its client port too


def _label_names(scraped: Scrape, family: str, kind: str) -> set[frozenset[str]]:
    sample = f"{family}_bucket" if kind == "histogram" else family
    if kind == "counter":
        sample = f"{family}_total"
    return {
        frozenset(name for name, _ in labels if name != "le") for labels in scraped.series(sample)
    }


def _buckets(scraped: Scrape, family: str) -> set[str]:
    return {dict(labels)["le"] for labels in scraped.series(f"{family}_bucket")}


def test_raftkv_exports_etcds_families_with_etcds_shape(tmp_path: Path) -> None:
    etcd = _etcd_metrics(tmp_path)
    metrics.enable_grpc_handling_histogram()
    # Every family with one series, as a busy member would have them.
    for family in (metrics.GRPC_STARTED, metrics.GRPC_MSG_RECEIVED, metrics.GRPC_MSG_SENT):
        family.labels("unary", "etcdserverpb.KV", "Put").inc(0)
    metrics.GRPC_HANDLED.labels("unary", "etcdserverpb.KV", "Put", "OK").inc(0)
    assert metrics.GRPC_HANDLING_SECONDS is not None
    metrics.GRPC_HANDLING_SECONDS.labels("unary", "etcdserverpb.KV", "Put")
    metrics.PEER_SENT_BYTES.labels("1").inc(0)
    metrics.PEER_RECEIVED_BYTES.labels("1").inc(0)
    metrics.SERVER_ID.labels("1")
    metrics.SERVER_VERSION.labels("3.5.0")
    metrics.CLUSTER_VERSION.labels("3.5")
    ours = parse(metrics.REGISTRY.render().decode())

    missing = set(ours.types) - set(etcd.types) - NEEDS_PEERS
    assert not missing, f"raftkv exports families etcd does not have: {sorted(missing)}"
    for family, kind in ours.types.items():
        if family in NEEDS_PEERS:
            continue
        assert etcd.types[family] == kind, family
        assert _label_names(ours, family, kind) <= _label_names(etcd, family, kind), family
    for family in (
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "grpc_server_handling_seconds",
    ):
        assert _buckets(ours, family) == _buckets(etcd, family), family
    # The families the operations guide's alert rules use are all there.
    for family in (
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen",
        "etcd_server_proposals_failed",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_mvcc_db_total_size_in_bytes",
    ):
        assert family in ours.types, family
