"""A/B two raftkv source trees on this machine: 3-member clusters of each, interleaved.

    python scripts/ab_builds.py OLD_SRC NEW_SRC [--reps 3] [--seconds 8]

OLD_SRC and NEW_SRC are directories holding a ``raftkv`` package (e.g. made with
``git archive REV src/raftkv | tar -x -C DIR`` then DIR/src). Each repetition runs both builds,
one after the other, with 1 and with 64 concurrent writers of 256-byte values (the Python
client, spread over the members), and prints puts per second and the p50 latency. The
interleaving is the point: on a shared machine only the ratio within a repetition means much.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from raftkv.client import Client
from raftkv.verify.cluster import ProcessCluster

VALUE = "x" * 256


async def _load(endpoints: list[str], writers: int, seconds: float) -> tuple[float, float]:
    clients = [Client([endpoint]) for endpoint in endpoints]
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def writer(number: int) -> None:
        client = clients[number % len(clients)]
        sequence = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            await client.put(f"k{number}/{sequence}", VALUE)
            latencies.append(time.monotonic() - started)
            sequence += 1

    try:
        await asyncio.gather(*(writer(n) for n in range(writers)))
    finally:
        for client in clients:
            await client.close()
    latencies.sort()
    return len(latencies) / seconds, latencies[len(latencies) // 2] * 1000


def _run(source: Path, writers: int, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as root:
        env = {"PYTHONPATH": str(source)}
        with ProcessCluster.start(Path(root), 3, env=env) as cluster:
            cluster.wait_for_leader()
            return asyncio.run(_load(cluster.endpoints(), writers, seconds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    for rep in range(args.reps):
        for name, source in (("old", args.old), ("new", args.new)):
            for writers in (1, 64):
                rate, p50_ms = _run(source, writers, args.seconds)
                print(f"rep {rep} {name} writers={writers}: {rate:.0f} puts/s, p50 {p50_ms:.2f} ms")


if __name__ == "__main__":
    main()
