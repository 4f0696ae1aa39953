"""A long verification campaign: many verify runs, rotating fault mixes, one summary.

    python -m raftkv.verify.campaign --total-minutes 30 --run-seconds 120 --seed 100 --out DIR

Every run gets its own seed (seed, seed+1, ...) and its own report folder under DIR; the
mixes rotate so every fault kind is injected many times. ``DIR/campaign.md`` sums up the
runs (ops checked, faults injected by kind, anomalies) and says how to replay each one.
The exit code is 1 if any run found an anomaly.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from raftkv.verify.cluster import Flavor
from raftkv.verify.records import RunRecord
from raftkv.verify.runner import VerifyOptions, run_verify

MIXES: tuple[tuple[str, ...], ...] = (
    ("kill", "pause"),
    ("partition", "lossy"),
    ("kill", "partition", "membership"),
    ("pause", "slow", "membership"),
    ("kill", "pause", "partition", "slow", "lossy", "membership"),
)


def run_campaign(
    out_dir: Path, total_s: float, run_s: float, seed: int, target: Flavor
) -> list[RunRecord]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    spent_s = 0.0
    number = 0
    while spent_s < total_s:
        faults = MIXES[number % len(MIXES)]
        options = VerifyOptions(
            out_dir=out_dir / f"run-{number:02d}-seed{seed + number}",
            target=target,
            duration_s=run_s,
            faults=faults,
            seed=seed + number,
            network="netns",
        )
        record = run_verify(options)
        records.append(record)
        spent_s += run_s
        number += 1
        (out_dir / "campaign.md").write_text(campaign_markdown(records, out_dir))
    return records


def campaign_markdown(records: list[RunRecord], out_dir: Path) -> str:
    faults: Counter[str] = Counter()
    fault_seconds: dict[str, float] = {}
    for record in records:
        for fault in record.faults:
            faults[fault.kind] += 1
            if fault.end_s is not None:
                seconds = fault.end_s - fault.start_s
                fault_seconds[fault.kind] = fault_seconds.get(fault.kind, 0.0) + seconds
    ops = sum(r.summary.ops_checked for r in records)
    anomalies = sum(r.summary.anomalies for r in records)
    fault_phase_s = sum(r.summary.duration_s for r in records)
    lines = [
        f"# Verify campaign ({len(records)} runs, {fault_phase_s / 60:.1f} minutes of faults)",
        "",
        f"- ops checked for linearizability: {ops:,}",
        f"- faults injected: {sum(faults.values())} "
        + "("
        + ", ".join(
            f"{k} {n}, {fault_seconds.get(k, 0.0):.0f} s" for k, n in sorted(faults.items())
        )
        + ")",
        f"- anomalies: {anomalies}",
        "",
        "| run | target | faults | seconds | ops checked | faults injected | verdicts | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        s = record.summary
        verdicts = ", ".join(f"{k} {v}" for k, v in s.verdicts.items())
        lines.append(
            f"| seed {s.seed} | {s.target} | {','.join(s.faults_requested)} | {s.duration_s:g} "
            f"| {s.ops_checked:,} | {s.faults_injected} | {verdicts} "
            f"| {'PASS' if s.passed else 'FAIL'} |"
        )
    lines += ["", "Replay any run with the command in its summary.txt.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftkv.verify.campaign")
    parser.add_argument("--total-minutes", type=float, default=30.0)
    parser.add_argument("--run-seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--target", choices=["raftkv", "etcd"], default="raftkv")
    parser.add_argument("--out", type=Path, default=Path("verify-campaign"))
    args = parser.parse_args(argv)
    records = run_campaign(
        args.out, args.total_minutes * 60, args.run_seconds, args.seed, args.target
    )
    print((args.out / "campaign.md").read_text())
    return 0 if all(r.summary.passed for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
