"""The simulator's command line: run many seeds, or replay one.

Exit codes follow TigerBeetle's VOPR: 129 for a correctness (safety)
violation, 128 for a liveness failure, 127 for a crash (an unexpected
exception or a failed assertion inside the core).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field

from raftkv.check.raft_invariants import InvariantViolation
from raftkv.sim.cluster import LivenessFailure, SimCluster, SimStats
from raftkv.sim.options import SimOptions

EXIT_OK = 0
EXIT_CRASH = 127
EXIT_LIVENESS = 128
EXIT_CORRECTNESS = 129

DEFAULT_SEED_COUNT = 100


@dataclass(slots=True)
class SimResult:
    seed: int
    exit_code: int
    message: str = ""
    trace_digest: str = ""
    trace_tail: list[str] = field(default_factory=list)
    stats: SimStats = field(default_factory=SimStats)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def replay_command(seed: int, nodes: int | None, ticks: int | None) -> str:
    command = f"raftkv sim --seed {seed}"
    if nodes is not None:
        command += f" --nodes {nodes}"
    if ticks is not None:
        command += f" --ticks {ticks}"
    return command


def run_seed(
    seed: int, nodes: int | None = None, ticks: int | None = None, verbose: bool = False
) -> SimResult:
    options = SimOptions.from_seed(seed, nodes=nodes, ticks=ticks)
    cluster = SimCluster(options, verbose=verbose)
    try:
        cluster.run()
        exit_code, message = EXIT_OK, ""
    except InvariantViolation as error:
        exit_code, message = EXIT_CORRECTNESS, f"invariant violated: {error}"
    except LivenessFailure as error:
        exit_code, message = EXIT_LIVENESS, f"liveness failure: {error}"
    except Exception as error:  # noqa: BLE001 - every other failure is a crash of the core
        detail = "".join(traceback.format_exception(error)).rstrip()
        exit_code, message = EXIT_CRASH, f"crash: {error!r}\n{detail}"
    return SimResult(
        seed=seed,
        exit_code=exit_code,
        message=message,
        trace_digest=cluster.trace_digest(),
        trace_tail=cluster.trace_lines[-30:],
        stats=cluster.stats,
    )


def run_seeds(
    first_seed: int, count: int, nodes: int | None = None, ticks: int | None = None
) -> tuple[list[SimResult], SimStats]:
    """Run count seeds; return the failures and the summed statistics."""
    failures: list[SimResult] = []
    total = SimStats()
    for seed in range(first_seed, first_seed + count):
        result = run_seed(seed, nodes=nodes, ticks=ticks)
        total.add(result.stats)
        if not result.ok:
            failures.append(result)
    return failures, total


def report_failure(result: SimResult, nodes: int | None, ticks: int | None) -> None:
    print(f"seed {result.seed} FAILED (exit {result.exit_code}): {result.message}")
    for line in result.trace_tail:
        print(f"    {line}")
    print(f"replay: {replay_command(result.seed, nodes, ticks)}")


def describe_stats(stats: SimStats) -> str:
    return (
        f"ticks={stats.ticks} messages={stats.messages_sent} dropped={stats.messages_dropped} "
        f"crashes={stats.crashes} partitions={stats.partitions} "
        f"conf_changes={stats.conf_changes_applied} transfers={stats.transfers} "
        f"writes_acked={stats.writes_acked} reads_checked={stats.reads_checked} "
        f"invariant_checks={stats.invariant_checks}"
    )


def run_cli(
    seeds: int | None, seed: int | None, nodes: int | None, ticks: int | None, verbose: bool
) -> int:
    if seeds is None and seed is not None:
        result = run_seed(seed, nodes=nodes, ticks=ticks, verbose=verbose)
        if not result.ok:
            report_failure(result, nodes, ticks)
            return result.exit_code
        print(f"seed {seed} passed ({describe_stats(result.stats)})")
        print(f"trace digest {result.trace_digest}")
        return EXIT_OK
    count = seeds if seeds is not None else DEFAULT_SEED_COUNT
    first_seed = seed if seed is not None else 1
    total = SimStats()
    failures: list[SimResult] = []
    batch = 100
    for start in range(first_seed, first_seed + count, batch):
        size = min(batch, first_seed + count - start)
        batch_failures, batch_stats = run_seeds(start, size, nodes=nodes, ticks=ticks)
        total.add(batch_stats)
        for failure in batch_failures:
            report_failure(failure, nodes, ticks)
        failures.extend(batch_failures)
        done = start + size - first_seed
        print(f"sim: {done}/{count} seeds, {len(failures)} failed", file=sys.stderr, flush=True)
    print(describe_stats(total))
    print(f"sim: {count - len(failures)} passed, {len(failures)} failed")
    return failures[0].exit_code if failures else EXIT_OK
