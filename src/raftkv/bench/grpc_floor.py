"""The floor a Python gRPC server stands on: grpcio's asyncio server answering etcd's KV
calls with no consensus, no storage and no checks.

    python -m raftkv.bench.grpc_floor [--duration 10] [--clients 1000] [--conns 100]

Starts three such servers (one process each, as a 3-member cluster has three gRPC front
ends) and runs ``raftkv bench`` against them with the settings ``raftkv bench --compare``
uses: put and serializable range at high concurrency, and a single client's put. It prints
each workload's rate and the servers' CPU per request (user + system, from /proc). Whatever a
raftkv member adds, consensus, WAL, apply, auth, metrics, comes on top of this, so a rate
here bounds what any member built on grpcio's asyncio server can serve on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.bench.load import BenchOptions, run_bench
from raftkv.verify.cluster import LOOPBACK, free_ports

SERVERS = 3
VALUE = b"v" * 256
START_TIMEOUT_S = 10.0
_HEADER = rpc_pb2.ResponseHeader(cluster_id=1, member_id=1, revision=1, raft_term=1)


class FloorKV(rpc_pb2_grpc.KVServicer):
    """Answers at once: Range with one 256-byte key-value, the others with a bare header."""

    async def Range(self, request: rpc_pb2.RangeRequest, context: object) -> rpc_pb2.RangeResponse:
        kv = kv_pb2.KeyValue(
            key=request.key, value=VALUE, create_revision=1, mod_revision=1, version=1
        )
        return rpc_pb2.RangeResponse(header=_HEADER, kvs=[kv], count=1)

    async def Put(self, request: rpc_pb2.PutRequest, context: object) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse(header=_HEADER)

    async def Txn(self, request: rpc_pb2.TxnRequest, context: object) -> rpc_pb2.TxnResponse:
        return rpc_pb2.TxnResponse(header=_HEADER, succeeded=True)

    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: object
    ) -> rpc_pb2.DeleteRangeResponse:
        return rpc_pb2.DeleteRangeResponse(header=_HEADER)

    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: object
    ) -> rpc_pb2.CompactionResponse:
        return rpc_pb2.CompactionResponse(header=_HEADER)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(FloorKV(), server)
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    await server.start()
    await server.wait_for_termination()


@dataclass(frozen=True)
class FloorRun:
    name: str
    ops_per_s: float
    p50_ms: float
    server_cores: float
    server_cpu_per_op_us: float


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))


def measure(options: BenchOptions, name: str, pids: list[int]) -> FloorRun:
    before = sum(_cpu_s(pid) for pid in pids)
    started_s = time.monotonic()
    result = run_bench(options)
    wall_s = time.monotonic() - started_s
    used_s = sum(_cpu_s(pid) for pid in pids) - before
    op = result.headline_op
    count = result.histograms[op].count
    return FloorRun(
        name=name,
        ops_per_s=result.ops_per_s(op),
        p50_ms=result.histograms[op].percentile_ns(50.0) / 1e6,
        server_cores=used_s / wall_s,
        server_cpu_per_op_us=used_s / max(count, 1) * 1e6,
    )


def run(duration_s: float, clients: int, conns: int) -> list[FloorRun]:
    ports = free_ports(SERVERS)
    command = [sys.executable, "-m", "raftkv.bench.grpc_floor", "--serve"]
    servers = [subprocess.Popen([*command, str(port)]) for port in ports]
    try:
        for port in ports:
            _wait_listening(port)
        endpoints = tuple(f"{LOOPBACK}:{port}" for port in ports)
        pids = [server.pid for server in servers]
        busy = BenchOptions(
            endpoints,
            "put",
            clients=clients,
            connections=conns,
            duration_s=duration_s,
            quiet=True,
        )
        return [
            measure(busy, f"put, {clients} clients / {conns} conns", pids),
            measure(
                BenchOptions(
                    endpoints,
                    "range",
                    clients=clients,
                    connections=conns,
                    duration_s=duration_s,
                    serializable=True,
                    quiet=True,
                ),
                f"serializable range, {clients} clients / {conns} conns",
                pids,
            ),
            measure(
                BenchOptions(
                    endpoints[:1],
                    "put",
                    clients=1,
                    connections=1,
                    workers=1,
                    duration_s=duration_s,
                    quiet=True,
                ),
                "put, 1 client",
                pids,
            ),
        ]
    finally:
        for server in servers:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=100)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    print(
        "| Workload (3 bare grpcio asyncio servers) | requests/s | p50 ms | server cores "
        "| server CPU per request |"
    )
    print("|---|---:|---:|---:|---:|")
    for floor in run(args.duration, args.clients, args.conns):
        print(
            f"| {floor.name} | {floor.ops_per_s:,.0f} | {floor.p50_ms:.2f} | "
            f"{floor.server_cores:.2f} | {floor.server_cpu_per_op_us:.0f} µs |"
        )


if __name__ == "__main__":
    main()
