"""``raftkv bench``: a multi-process load generator for any etcd v3 endpoint.

The parent process checks the options, finds the leader when asked (Maintenance.Status on
every endpoint), prepares the target (preloads the keys a range or mixed run reads, notes
the revision a watch run starts after), and starts N worker processes (spawn context). Each
worker runs an asyncio loop with its share of the connections (gRPC channels, each its own
TCP connection, spread round-robin over the endpoints) and of the clients (coroutines
sharing those channels), of the total requests and of the rate limit. Workers report
progress counts through a queue every ``BENCH_PROGRESS_INTERVAL_S`` and, at the end, their
histograms, counters and errors, which the parent merges.

Usage:
    result = run_bench(BenchOptions(endpoints=("127.0.0.1:2379",), workload="put",
                                    clients=100, connections=10, duration_s=10.0))
    print(result.format_table())
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.queues
import os
import queue
import random
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.synchronize import Event as EventType
from typing import Any, TextIO

import grpc
import grpc.aio

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.bench.histogram import Histogram
from raftkv.bench.workloads import (
    CHANNEL_OPTIONS,
    WORKLOADS,
    BenchSetupError,
    WorkerContext,
    WorkerPlan,
    Workload,
    WorkloadSettings,
    make_runner,
    numbered_key,
    object_key,
    prefix_end,
    watch_prefix,
)

DEFAULT_TOTAL = 10_000  # etcd's benchmark default, when neither --total nor --duration
SETUP_TIMEOUT_S = 10.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
PROGRESS_BAR_CHARS = 24
# The operation whose throughput is the workload's headline figure.
HEADLINE_OP: dict[str, str] = {
    "put": "put",
    "range": "range",
    "txn": "txn",
    "watch": "put",
    "lease": "lease_keepalive",
    "mixed": "update",
}

Message = tuple[Any, ...]


class BenchConfigError(ValueError):
    """The options cannot make a run (reported as a usage error, exit 2)."""


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, limits.BENCH_MAX_WORKERS))


@dataclass(frozen=True)
class BenchOptions:
    """One ``raftkv bench`` run. ``total`` and ``duration_s`` both bound it (whichever
    comes first); with neither, ``DEFAULT_TOTAL`` requests."""

    endpoints: tuple[str, ...]
    workload: Workload
    clients: int = 1
    connections: int = 1
    workers: int = field(default_factory=default_workers)
    total: int | None = None
    duration_s: float | None = None
    rate_ops_s: float | None = None
    target_leader: bool = False
    key_bytes: int = 8
    value_bytes: int = 256
    sequential_keys: bool = False
    key_space: int = 100_000
    serializable: bool = False
    range_keys: int = 1000
    watchers: int = 100
    lease_ttl_s: int = 30
    keepalives_per_lease: int = 100
    mixed_objects: int = 1000
    list_limit: int = 500
    quiet: bool = False
    seed: int | None = None


def normalize_endpoint(endpoint: str) -> str:
    """ "http://127.0.0.1:2379" or "127.0.0.1:2379" -> "127.0.0.1:2379"."""
    for scheme in ("http://", "https://"):
        endpoint = endpoint.removeprefix(scheme)
    return endpoint.rstrip("/")


def check_options(options: BenchOptions) -> None:
    """Raise BenchConfigError for options no run can use."""
    problems = []
    if not options.endpoints:
        problems.append("no endpoints given (--endpoints URL[,URL...])")
    if options.workload not in WORKLOADS:
        problems.append(f"unknown workload {options.workload!r}")
    if options.workload in ("put", "range") and options.key_bytes < 19:
        # Keys are zero-padded decimal numbers of exactly key_bytes digits.
        space = options.key_space if options.workload == "put" else options.range_keys
        if space > 10**options.key_bytes:
            problems.append(f"{space} keys do not fit in {options.key_bytes}-digit keys")
    if options.workload in ("watch", "mixed") and options.watchers < 1:
        problems.append("the watch and mixed workloads need --watchers >= 1")
    if options.duration_s is not None and options.duration_s <= 0:
        problems.append("--duration must be positive")
    if options.rate_ops_s is not None and not 0 < options.rate_ops_s <= limits.BENCH_MAX_RATE_OPS_S:
        problems.append(f"--rate must be in (0, {limits.BENCH_MAX_RATE_OPS_S}]")
    if problems:
        raise BenchConfigError("; ".join(problems))


# --- Targets ------------------------------------------------------------------------------


def find_leader(endpoints: Sequence[str]) -> str:
    """The endpoint whose member is the leader, by Maintenance.Status on every endpoint."""
    statuses: dict[str, tuple[int, int]] = {}
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            stub = rpc_pb2_grpc.MaintenanceStub(channel)
            with contextlib.suppress(grpc.RpcError):
                status = stub.Status(rpc_pb2.StatusRequest(), timeout=SETUP_TIMEOUT_S)
                statuses[endpoint] = (status.header.member_id, status.leader)
    leader_ids = {leader for _, leader in statuses.values() if leader}
    for endpoint, (member_id, _) in statuses.items():
        if member_id in leader_ids:
            return endpoint
    raise BenchSetupError(f"no endpoint is the leader (statuses: {statuses})")


def current_revision(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        response = kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=SETUP_TIMEOUT_S)
        return response.header.revision


def count_prefix(endpoint: str, prefix: bytes) -> int:
    """How many keys start with ``prefix`` (a linearizable count)."""
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        request = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        return kv.Range(request, timeout=limits.BENCH_RPC_TIMEOUT_S).count


def preload(
    endpoints: Sequence[str], count: int, key_of: Callable[[int], bytes], value: bytes
) -> int:
    """Put keys ``key_of(0..count-1)``, ``BENCH_LOAD_TXN_OPS`` per Txn, several Txns in flight
    over one channel per endpoint; returns how many Txns had to be retried."""
    assert 0 <= count <= limits.BENCH_MAX_PRELOAD_KEYS, count
    return asyncio.run(_preload(list(endpoints), count, key_of, value))


async def _preload(
    endpoints: list[str], count: int, key_of: Callable[[int], bytes], value: bytes
) -> int:
    channels = [grpc.aio.insecure_channel(e, options=CHANNEL_OPTIONS) for e in endpoints]
    stubs = [rpc_pb2_grpc.KVStub(channel) for channel in channels]
    batches = iter(range(0, count, limits.BENCH_LOAD_TXN_OPS))

    retries = [0]

    async def loader(number: int) -> None:
        kv = stubs[number % len(stubs)]
        for start in batches:  # the iterator is shared: each batch is taken once
            stop = min(count, start + limits.BENCH_LOAD_TXN_OPS)
            puts = [
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_of(i), value=value))
                for i in range(start, stop)
            ]
            request = rpc_pb2.TxnRequest(success=puts)
            for attempt in range(limits.BENCH_LOAD_ATTEMPTS):
                try:
                    await kv.Txn(request, timeout=limits.BENCH_RPC_TIMEOUT_S)
                    break
                except grpc.aio.AioRpcError as error:
                    # The same puts again are harmless: a leader change must not end a load.
                    if error.code() not in RETRYABLE or attempt + 1 == limits.BENCH_LOAD_ATTEMPTS:
                        raise
                    retries[0] += 1
                    await asyncio.sleep(limits.BENCH_LOAD_RETRY_PAUSE_S)

    try:
        await asyncio.gather(*(loader(n) for n in range(limits.BENCH_LOAD_CONCURRENCY)))
        return retries[0]
    finally:
        await asyncio.gather(*(channel.close(None) for channel in channels))


def prepare_target(options: BenchOptions, endpoints: Sequence[str], run_prefix: bytes) -> int:
    """Preload what the workload reads; return the revision the run starts after."""
    value = b"v" * options.value_bytes
    if options.workload == "range":
        preload(endpoints, options.range_keys, lambda i: numbered_key(i, options.key_bytes), value)
    elif options.workload == "mixed":
        preload(endpoints, options.mixed_objects, lambda i: object_key(run_prefix, i), value)
    return current_revision(endpoints[0])


# --- Worker plans ---------------------------------------------------------------------------


def share(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` split as evenly as possible into ``parts``."""
    return total // parts + (1 if index < total % parts else 0)


def plan_workers(
    options: BenchOptions, endpoints: Sequence[str], settings: WorkloadSettings, seed: int
) -> list[WorkerPlan]:
    """Split clients, watchers and connections round-robin over the workers; requests and
    the rate in proportion to each worker's clients. A connection belongs to one process, so
    there are never more workers than connections."""
    watchers = options.watchers if options.workload in ("watch", "mixed") else 0
    worker_count = max(1, min(options.workers, options.connections, max(options.clients, watchers)))
    total = options.total
    if total is None and options.duration_s is None:
        total = DEFAULT_TOTAL
    plans = []
    for index in range(worker_count):
        client_ids = tuple(range(index, options.clients, worker_count))
        channel_numbers = range(index, max(options.connections, worker_count), worker_count)
        quota = None
        if total is not None:  # cumulative shares, so the quotas add up to the total exactly
            clients_before = sum(len(range(w, options.clients, worker_count)) for w in range(index))
            clients_through = clients_before + len(client_ids)
            quota = (total * clients_through // options.clients) - (
                total * clients_before // options.clients
            )
        rate = None
        if options.rate_ops_s is not None and client_ids:
            rate = options.rate_ops_s * len(client_ids) / options.clients
        plans.append(
            WorkerPlan(
                index=index,
                worker_count=worker_count,
                channel_endpoints=tuple(endpoints[n % len(endpoints)] for n in channel_numbers),
                client_ids=client_ids,
                watcher_ids=tuple(range(index, watchers, worker_count)),
                request_quota=quota,
                duration_s=options.duration_s,
                rate_ops_s=rate,
                settings=settings,
                seed=seed + index,
            )
        )
    if total is not None:
        assert sum(p.request_quota or 0 for p in plans) == total, plans
    return plans


# --- Worker process -------------------------------------------------------------------------


def worker_main(
    plan: WorkerPlan,
    events: multiprocessing.queues.Queue[Message],
    go: EventType,
    control: multiprocessing.queues.Queue[int],
) -> None:
    """Entry point of a worker process (spawned): run, and report even a crash."""
    try:
        run_loop(_worker(plan, events, go, control))
    except BaseException:
        events.put(("failed", plan.index, traceback.format_exc()))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed (as the server uses it): less loop overhead per RPC."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _worker(
    plan: WorkerPlan,
    events: multiprocessing.queues.Queue[Message],
    go: EventType,
    control: multiprocessing.queues.Queue[int],
) -> None:
    ctx = WorkerContext(plan)
    runner = make_runner(ctx)
    try:
        await ctx.wait_connected()
        await runner.prepare()
        events.put(("ready", plan.index))
        await asyncio.to_thread(go.wait)
        ctx.start()
        cpu_started_s = time.process_time()
        reporter = asyncio.create_task(_report_progress(ctx, events, plan.index))
        await runner.run()
        load_ended_ns = time.monotonic_ns()
        if runner.needs_drain:
            events.put(("writes_done", plan.index))
            expected = await asyncio.to_thread(control.get)
            await runner.drain(expected)
        # The watchers' work goes on until they drained: that is the window measured.
        load_cpu_s = time.process_time() - cpu_started_s
        cpu_window_end_ns = time.monotonic_ns()
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        stats = ctx.stats
        result = {
            "load_ended_ns": load_ended_ns,
            "load_cpu_s": load_cpu_s,
            "cpu_window_end_ns": cpu_window_end_ns,
            "last_event_ns": stats.last_event_ns,
            "histograms": {op: h.to_dict() for op, h in stats.histograms.items()},
            "counters": stats.counters,
            "errors": stats.errors,
            "done": stats.done,
            "failed": stats.failed,
        }
        events.put(("result", plan.index, result))
    finally:
        await runner.close()
        await ctx.close()


async def _report_progress(
    ctx: WorkerContext, events: multiprocessing.queues.Queue[Message], index: int
) -> None:
    while True:
        await asyncio.sleep(limits.BENCH_PROGRESS_INTERVAL_S)
        events.put(("progress", index, ctx.stats.done, ctx.stats.failed))


# --- Result ---------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """Merged measurements of one run."""

    workload: str
    settings: dict[str, Any]
    elapsed_s: float  # start signal -> the last worker's load ended (before any watch drain)
    histograms: dict[str, Histogram]
    counters: dict[str, int]
    errors: dict[str, int]
    events_elapsed_s: float | None = None  # watch: start signal -> last event delivered
    generator_cpu_share: float = 0.0  # worker CPU time / (workers x wall time), start to end

    @property
    def headline_op(self) -> str:
        return HEADLINE_OP[self.workload]

    def ops_per_s(self, op: str | None = None) -> float:
        op = op or self.headline_op
        histogram = self.histograms.get(op)
        # Watch events keep arriving after the writes ended: they have their own clock.
        elapsed_s = self.events_elapsed_s if op == "watch_delivery" else self.elapsed_s
        if histogram is None or not elapsed_s or elapsed_s <= 0:
            return 0.0
        return histogram.count / elapsed_s

    def latency_ms(self, percent: float, op: str | None = None) -> float:
        histogram = self.histograms.get(op or self.headline_op)
        return histogram.percentile_ns(percent) / 1e6 if histogram else 0.0

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())

    def watch_events_per_s(self) -> float:
        delivered = self.counters.get("watch_events_delivered", 0)
        if not self.events_elapsed_s:
            return 0.0
        return delivered / self.events_elapsed_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "settings": self.settings,
            "elapsed_s": self.elapsed_s,
            "events_elapsed_s": self.events_elapsed_s,
            "generator_cpu_share": self.generator_cpu_share,
            "throughput_ops_s": {op: self.ops_per_s(op) for op in self.histograms},
            "latency_ms": {op: h.summary_ms() for op, h in self.histograms.items()},
            "counters": self.counters,
            "errors": self.errors,
            "histograms": {op: h.to_dict() for op, h in self.histograms.items()},
        }

    def format_table(self) -> str:
        s = self.settings
        lines = [
            f"raftkv bench {self.workload}: {s['clients']} clients, {s['connections']} "
            f"connections, {s['workers']} workers, {len(s['endpoints'])} endpoint(s)"
            f"{' (leader)' if s['target_leader'] else ''}, {self.elapsed_s:.2f} s",
            f"{'operation':<16}{'count':>10}{'ops/s':>11}{'mean':>9}{'p50':>9}{'p90':>9}"
            f"{'p99':>9}{'p99.9':>9}{'max':>9}  (latency ms)",
        ]
        for op, histogram in sorted(self.histograms.items()):
            summary = histogram.summary_ms()
            lines.append(
                f"{op:<16}{histogram.count:>10,}{self.ops_per_s(op):>11,.1f}"
                + "".join(
                    f"{summary[key]:>9.2f}"
                    for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")
                )
            )
        if "watch_events_expected" in self.counters:
            c = self.counters
            lines.append(
                f"watch: {c['watchers']:,} watchers, {c['watch_events_expected']:,} events "
                f"expected, {c['watch_events_delivered']:,} delivered, "
                f"{c['watch_events_lost']:,} lost, {c['watch_events_extra']:,} extra, "
                f"{c['watch_events_out_of_order']:,} out of order; "
                f"{self.watch_events_per_s():,.0f} events/s over {self.events_elapsed_s or 0:.2f} s"
            )
        others = {k: v for k, v in self.counters.items() if not k.startswith(("watch", "watchers"))}
        if others:
            lines.append("counters: " + ", ".join(f"{k}={v:,}" for k, v in sorted(others.items())))
        lines.append(
            f"generator CPU: {self.generator_cpu_share:.0%} of {s['workers']} worker process(es)"
        )
        lines.append(f"errors: {self.total_errors:,}")
        for message, count in sorted(self.errors.items(), key=lambda item: -item[1]):
            lines.append(f"  {count:>8,}  {message}")
        return "\n".join(lines)


# --- Progress line --------------------------------------------------------------------------


class ProgressLine:
    """One line on stderr, redrawn with ``\\r``."""

    def __init__(self, stream: TextIO | None, label: str, options: BenchOptions) -> None:
        self.stream = stream
        self.label = label
        self.total = options.total
        self.duration_s = options.duration_s
        if self.total is None and self.duration_s is None:
            self.total = DEFAULT_TOTAL
        self.width = 0
        self.drawn_at_s = -math.inf

    def draw(
        self, done: int, failed: int, elapsed_s: float, note: str = "", force: bool = False
    ) -> None:
        if self.stream is None:
            return
        if not force and elapsed_s - self.drawn_at_s < limits.BENCH_PROGRESS_INTERVAL_S:
            return
        self.drawn_at_s = elapsed_s
        fractions = []
        if self.total:
            fractions.append(done / self.total)
        if self.duration_s:
            fractions.append(elapsed_s / self.duration_s)
        fraction = min(1.0, max(fractions)) if fractions else 0.0
        filled = int(fraction * PROGRESS_BAR_CHARS)
        bar = "#" * filled + "-" * (PROGRESS_BAR_CHARS - filled)
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        text = (
            f"{self.label} [{bar}] {fraction * 100:3.0f}% {done:,} done, {failed:,} errors, "
            f"{rate:,.0f}/s, {elapsed_s:.1f} s{note}"
        )
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.stream is not None and self.width:
            self.stream.write("\n")
            self.stream.flush()


# --- The run --------------------------------------------------------------------------------


def run_bench(
    options: BenchOptions,
    progress: TextIO | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run one workload against ``options.endpoints``, drawing the progress line on
    ``progress`` (default: stderr) unless ``options.quiet``; ``on_phase("start")`` is called
    as the load starts and ``on_phase("end")`` once every worker finished. Raise
    BenchConfigError for bad options, BenchSetupError if the target or a worker fails."""
    check_options(options)
    endpoints = [normalize_endpoint(e) for e in options.endpoints]
    if options.target_leader:
        endpoints = [find_leader(endpoints)]
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    run_prefix = b"/bench/%08x/" % random.Random(seed).getrandbits(32)
    start_revision = prepare_target(options, endpoints, run_prefix)
    settings = WorkloadSettings(
        workload=options.workload,
        key_bytes=options.key_bytes,
        value_bytes=options.value_bytes,
        sequential_keys=options.sequential_keys,
        key_space=options.key_space,
        serializable=options.serializable,
        range_keys=options.range_keys,
        lease_ttl_s=options.lease_ttl_s,
        keepalives_per_lease=options.keepalives_per_lease,
        mixed_objects=options.mixed_objects,
        list_limit=options.list_limit,
        run_prefix=run_prefix,
        start_revision=start_revision,
    )
    plans = plan_workers(options, endpoints, settings, seed)
    stream = None if options.quiet else (progress or sys.stderr)
    line = ProgressLine(stream, options.workload, options)
    try:
        merged = _run_workers(plans, endpoints, run_prefix, line, on_phase or _no_phase)
    finally:
        line.close()
    reported = asdict(replace(options, endpoints=tuple(endpoints)))
    reported.update(workers=len(plans), seed=seed, run_prefix=run_prefix.decode())
    return BenchResult(workload=options.workload, settings=reported, **merged)


def _no_phase(phase: str) -> None:
    return None


def _run_workers(
    plans: list[WorkerPlan],
    endpoints: list[str],
    run_prefix: bytes,
    line: ProgressLine,
    on_phase: Callable[[str], None],
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    events: multiprocessing.queues.Queue[Message] = context.Queue()
    controls: list[multiprocessing.queues.Queue[int]] = [context.Queue() for _ in plans]
    go = context.Event()
    processes = [
        context.Process(
            target=worker_main, args=(plan, events, go, controls[plan.index]), daemon=True
        )
        for plan in plans
    ]
    try:
        for process in processes:
            process.start()
        _wait_all(events, processes, "ready", limits.BENCH_WORKER_START_TIMEOUT_S)
        on_phase("start")
        go_ns = time.monotonic_ns()
        go.set()
        results = _collect(events, processes, controls, endpoints, run_prefix, line, go_ns)
        on_phase("end")
    finally:
        for process in processes:
            if process.pid is None:  # never started
                continue
            process.join(timeout=SETUP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        events.close()
        for control in controls:
            control.close()
    return _merge(results, go_ns)


def _next_message(
    events: multiprocessing.queues.Queue[Message], processes: list[Any], timeout_s: float
) -> Message | None:
    """The next message, or None after ``timeout_s``; a crashed worker is an error."""
    try:
        message = events.get(timeout=timeout_s)
    except queue.Empty:
        dead = [p for p in processes if not p.is_alive() and p.exitcode != 0]
        if dead:
            raise BenchSetupError(f"a worker process died (exit code {dead[0].exitcode})") from None
        return None
    if message[0] == "failed":
        raise BenchSetupError(f"worker {message[1]} failed:\n{message[2]}")
    return message


def _wait_all(
    events: multiprocessing.queues.Queue[Message], processes: list[Any], kind: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = set(range(len(processes)))
    while waiting:
        if time.monotonic() > deadline:
            raise BenchSetupError(f"workers {sorted(waiting)} not {kind} within {timeout_s} s")
        message = _next_message(events, processes, limits.BENCH_PROGRESS_INTERVAL_S)
        if message is not None and message[0] == kind:
            waiting.discard(message[1])


def _collect(
    events: multiprocessing.queues.Queue[Message],
    processes: list[Any],
    controls: list[multiprocessing.queues.Queue[int]],
    endpoints: list[str],
    run_prefix: bytes,
    line: ProgressLine,
    go_ns: int,
) -> list[dict[str, Any]]:
    """Progress until every worker sent its result; between, answer the watch drain."""
    done = [0] * len(processes)
    failed = [0] * len(processes)
    writes_done: set[int] = set()
    results: dict[int, dict[str, Any]] = {}
    note = ""
    while len(results) < len(processes):
        message = _next_message(events, processes, limits.BENCH_PROGRESS_INTERVAL_S)
        if message is not None:
            kind, index = message[0], message[1]
            if kind == "progress":
                done[index], failed[index] = message[2], message[3]
            elif kind == "writes_done":
                writes_done.add(index)
                if len(writes_done) == len(processes):
                    # Every acknowledged (and any applied-but-failed) write made a new key.
                    expected = count_prefix(endpoints[0], watch_prefix(run_prefix))
                    for control in controls:
                        control.put(expected)
                    note = f", waiting for {expected:,} events per watcher"
            elif kind == "result":
                results[index] = message[2]
                done[index], failed[index] = message[2]["done"], message[2]["failed"]
        line.draw(sum(done), sum(failed), (time.monotonic_ns() - go_ns) / 1e9, note)
    line.draw(sum(done), sum(failed), (time.monotonic_ns() - go_ns) / 1e9, note, force=True)
    return [results[i] for i in range(len(processes))]


def _merge(results: list[dict[str, Any]], go_ns: int) -> dict[str, Any]:
    histograms: dict[str, Histogram] = {}
    counters: dict[str, int] = {}
    errors: dict[str, int] = {}
    for result in results:
        for op, data in result["histograms"].items():
            histograms.setdefault(op, Histogram()).merge(Histogram.from_dict(data))
        for name, value in result["counters"].items():
            counters[name] = counters.get(name, 0) + value
        for message, count in result["errors"].items():
            errors[message] = errors.get(message, 0) + count
    load_ended_ns = max(result["load_ended_ns"] for result in results)
    elapsed_s = (load_ended_ns - go_ns) / 1e9
    cpu_s = sum(result["load_cpu_s"] for result in results)
    cpu_window_s = (max(result["cpu_window_end_ns"] for result in results) - go_ns) / 1e9
    last_event_ns = max(result["last_event_ns"] for result in results)
    return {
        "elapsed_s": elapsed_s,
        # The generator's own CPU while it loaded the target: near 1.0 means the client
        # side (not the server) may have set the pace.
        "generator_cpu_share": cpu_s / (len(results) * cpu_window_s) if cpu_window_s > 0 else 0.0,
        "histograms": histograms,
        "counters": counters,
        "errors": errors,
        "events_elapsed_s": (last_event_ns - go_ns) / 1e9 if last_event_ns else None,
    }
