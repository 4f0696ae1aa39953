"""The floor a Python gRPC server stands on: a bare server answering etcd's KV calls with no
consensus, no storage and no checks.

    python -m raftkv.bench.grpc_floor [--server grpcio|h2] [--duration 10] [--clients 1000]
        [--conns 100]

``--server grpcio`` (the default) is grpcio's asyncio server; ``--server h2`` is raftkv's own
HTTP/2 front end (``raftkv.api.h2``, a member's default) hosting the same servicers, on uvloop
as a member runs it.

Starts three such servers (one process each, as a 3-member cluster has three gRPC front
ends) and runs ``raftkv bench`` against them with the settings ``raftkv bench --compare``
uses: put and serializable range at high concurrency, and a single client's put; then one
server streams 200,000 WatchResponses (one event each) over 10 watch streams. It prints
each workload's rate and the servers' CPU per request (user + system, from /proc). Whatever a
raftkv member adds, consensus, WAL, apply, auth, metrics, comes on top of this, so a rate
here bounds what any member built on grpcio's asyncio server can serve on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.h2.server import GrpcH2Server
from raftkv.bench.load import BenchOptions, run_bench, run_loop
from raftkv.verify.cluster import LOOPBACK, free_ports

SERVERS = 3
VALUE = b"v" * 256
START_TIMEOUT_S = 10.0
WATCH_STREAMS = 10
WATCH_RESPONSES = 200_000
SERVER_TITLES = {
    "grpcio": "3 bare grpcio asyncio servers",
    "h2": "3 bare raftkv.api.h2 servers on uvloop",
}
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


class FloorWatch(rpc_pb2_grpc.WatchServicer):
    """Each create request asks for ``start_revision`` responses: one event each, at once."""

    async def Watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: object
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        # An async generator, as raftkv's Watch service is.
        kv = kv_pb2.KeyValue(key=b"k", value=VALUE, create_revision=1, mod_revision=1, version=1)
        event = kv_pb2.Event(kv=kv)
        async for request in request_iterator:
            for number in range(request.create_request.start_revision):
                yield rpc_pb2.WatchResponse(header=_HEADER, watch_id=number, events=[event])


async def serve_h2(port: int) -> None:
    server = GrpcH2Server(max_receive_message_bytes=limits.MAX_REQUEST_BYTES)
    rpc_pb2_grpc.add_KVServicer_to_server(FloorKV(), server)  # type: ignore[arg-type]
    rpc_pb2_grpc.add_WatchServicer_to_server(FloorWatch(), server)  # type: ignore[arg-type]
    await server.start(LOOPBACK, port)
    await asyncio.Event().wait()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(FloorKV(), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(FloorWatch(), server)
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    await server.start()
    await server.wait_for_termination()


@dataclass(frozen=True)
class FloorRun:
    name: str
    ops_per_s: float
    p50_ms: float  # nan for the watch stream (no request per response)
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


async def _read_watch_streams(endpoint: str, streams: int, responses_each: int) -> int:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.WatchStub(channel)

        async def one() -> int:
            create = rpc_pb2.WatchCreateRequest(key=b"k", start_revision=responses_each)
            requests = asyncio.Queue[rpc_pb2.WatchRequest]()
            requests.put_nowait(rpc_pb2.WatchRequest(create_request=create))

            async def request_stream() -> AsyncIterator[rpc_pb2.WatchRequest]:
                yield await requests.get()
                await asyncio.Event().wait()  # keep the stream open until cancelled

            call = stub.Watch(request_stream())
            received = 0
            async for _ in call:
                received += 1
                if received == responses_each:
                    call.cancel()
                    break
            return received

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def measure_watch_stream(endpoint: str, pid: int, streams: int, responses: int) -> FloorRun:
    """One server streams ``responses`` WatchResponses over ``streams`` streams."""
    before = _cpu_s(pid)
    started_s = time.monotonic()
    count = asyncio.run(_read_watch_streams(endpoint, streams, responses // streams))
    wall_s = time.monotonic() - started_s
    used_s = _cpu_s(pid) - before
    return FloorRun(
        name=f"watch responses streamed, {streams} streams",
        ops_per_s=count / wall_s,
        p50_ms=float("nan"),
        server_cores=used_s / wall_s,
        server_cpu_per_op_us=used_s / max(count, 1) * 1e6,
    )


def run(
    duration_s: float,
    clients: int,
    conns: int,
    watch_responses: int = WATCH_RESPONSES,
    server: str = "grpcio",
) -> list[FloorRun]:
    ports = free_ports(SERVERS)
    command = [sys.executable, "-m", "raftkv.bench.grpc_floor", "--server", server, "--serve"]
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
        runs = [
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
            measure_watch_stream(endpoints[0], pids[0], WATCH_STREAMS, watch_responses),
        ]
        return runs
    finally:
        for process in servers:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--server", choices=("grpcio", "h2"), default="grpcio")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=100)
    args = parser.parse_args()
    if args.serve is not None:
        if args.server == "h2":
            run_loop(serve_h2(args.serve))
        else:
            asyncio.run(serve(args.serve))
        return
    title = SERVER_TITLES[args.server]
    print(f"| Workload ({title}) | requests/s | p50 ms | server cores | server CPU per request |")
    print("|---|---:|---:|---:|---:|")
    for floor in run(args.duration, args.clients, args.conns, server=args.server):
        print(
            f"| {floor.name} | {floor.ops_per_s:,.0f} | "
            f"{'—' if math.isnan(floor.p50_ms) else f'{floor.p50_ms:.2f}'} | "
            f"{floor.server_cores:.2f} | {floor.server_cpu_per_op_us:.0f} µs |"
        )


if __name__ == "__main__":
    main()
