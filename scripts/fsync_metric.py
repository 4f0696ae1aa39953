"""One client's puts to a fresh 3-member cluster, with every member's mean WAL fdatasync.

    python scripts/fsync_metric.py SRC [SRC ...] [--pairs 6] [--seconds 8]

Each SRC is a directory holding a ``raftkv`` package (``git archive REV src | tar -x -C
DIR`` gives DIR/src); the builds alternate, in an order that flips every round. Each line
gives the put's p50 and the mean of ``etcd_disk_wal_fsync_duration_seconds`` per member
over the run, read from each member's /metrics (docs/performance.md, change 9).
"""

from __future__ import annotations

import argparse
import re
import urllib.request
from pathlib import Path

from ab_bench import build_cluster  # scripts/ is on sys.path when run as a script

from raftkv.bench.load import BenchOptions, run_bench
from raftkv.verify.cluster import ProcessCluster

_FSYNC = "etcd_disk_wal_fsync_duration_seconds"


def fsync_totals(cluster: ProcessCluster) -> list[tuple[float, float]]:
    """(sum of seconds, count) of the WAL fdatasync histogram, per member."""
    totals = []
    for member in cluster.members:
        with urllib.request.urlopen(f"{member.gateway_url}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        found = [re.search(rf"^{_FSYNC}_{part} (\S+)$", text, re.M) for part in ("sum", "count")]
        assert found[0] is not None and found[1] is not None, "no fsync histogram"
        totals.append((float(found[0].group(1)), float(found[1].group(1))))
    return totals


def run_build(source: Path, seconds: float) -> str:
    with build_cluster(source) as cluster:
        options = BenchOptions(
            tuple(cluster.endpoints()),
            "put",
            clients=1,
            connections=1,
            target_leader=True,
            duration_s=seconds,
            quiet=True,
        )
        before = fsync_totals(cluster)
        result = run_bench(options)
        after = fsync_totals(cluster)
    p50_ms = result.histograms[result.headline_op].percentile_ns(50.0) / 1e6
    means_us = [
        round(1e6 * (a_sum - b_sum) / max(1.0, a_count - b_count))
        for (a_sum, a_count), (b_sum, b_count) in zip(after, before, strict=True)
    ]
    return f"{source.parent.name:>10} put p50 {p50_ms:.2f} ms, mean fsync per member {means_us} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    for round_number in range(args.pairs):
        order = args.sources if round_number % 2 == 0 else args.sources[::-1]
        for source in order:
            print(f"round {round_number} {run_build(source, args.seconds)}", flush=True)


if __name__ == "__main__":
    main()
