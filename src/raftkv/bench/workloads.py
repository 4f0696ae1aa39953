"""What one load worker process does: its connections, its clients, and each workload.

A worker (see ``raftkv.bench.load``) gets a ``WorkerPlan``: its endpoints (one channel
each), the global ids of its clients and watchers, its share of the total requests and of
the rate limit, and the workload's settings. Clients are coroutines sharing the worker's
channels; every request goes through the etcd v3 gRPC stubs directly (no retries, no
fail-over), and its latency goes into the worker's histogram of that operation.

Workloads:
    put    one Put per request (sequential or random keys of --key-size digits)
    range  one Range per request of a preloaded key (linearizable or serializable)
    txn    compare-and-set: Txn(mod_revision(key) == last seen) put, else get
    watch  N watchers on one prefix, M writers putting new keys under it; every watcher
           must receive every event (counted), delivery latency from a timestamp in the value
    lease  LeaseGrant, then keepalives on a stream, then LeaseRevoke, per client
    mixed  Kubernetes-like: informers LIST (paginated) then WATCH the prefix; clients do
           CAS updates (75%), gets (15%), paginated lists (5%) and creates (5%)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import grpc
import grpc.aio

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.bench.histogram import Histogram

Workload = Literal["put", "range", "txn", "watch", "lease", "mixed"]
WORKLOADS: tuple[Workload, ...] = ("put", "range", "txn", "watch", "lease", "mixed")

CHANNEL_OPTIONS = [
    # Every channel its own TCP connection: by default gRPC shares one subchannel between
    # channels to the same target, and --conns would mean nothing.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * limits.MIB),
    ("grpc.max_send_message_length", 64 * limits.MIB),
]
TIMESTAMP_BYTES = 8  # a watch write's value starts with its send time (monotonic ns)
MIXED_WEIGHTS = {"update": 75, "get": 15, "list": 5, "create": 5}
OTHER_ERRORS = "other errors"

WatchStream = grpc.aio.StreamStreamCall[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse]
KeepAliveStream = grpc.aio.StreamStreamCall[
    rpc_pb2.LeaseKeepAliveRequest, rpc_pb2.LeaseKeepAliveResponse
]


class BenchSetupError(RuntimeError):
    """The target did not answer as a workload needs (no leader, setup request failed)."""


def numbered_key(index: int, key_bytes: int) -> bytes:
    """Key ``index`` as ``key_bytes`` decimal digits (the put and range key space)."""
    return str(index).zfill(key_bytes).encode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    assert trimmed, "a prefix of only 0xff bytes has no end"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def watch_prefix(run_prefix: bytes) -> bytes:
    return run_prefix + b"w/"


def objects_prefix(run_prefix: bytes) -> bytes:
    return run_prefix + b"registry/pods/"


def object_key(run_prefix: bytes, index: int) -> bytes:
    return objects_prefix(run_prefix) + b"%08d" % index


@dataclass(frozen=True)
class WorkloadSettings:
    """The workload's own settings (the same for every worker)."""

    workload: Workload
    key_bytes: int = 8
    value_bytes: int = 256
    sequential_keys: bool = False
    key_space: int = 100_000
    serializable: bool = False
    range_keys: int = 1000
    lease_ttl_s: int = 30
    keepalives_per_lease: int = 100
    mixed_objects: int = 1000
    list_limit: int = 500
    run_prefix: bytes = b"/bench/"
    start_revision: int = 0  # watch: watchers start after this revision


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process's share of the run."""

    index: int
    worker_count: int
    channel_endpoints: tuple[str, ...]
    client_ids: tuple[int, ...]  # global client ids (writers in the watch workload)
    watcher_ids: tuple[int, ...]  # watch and mixed workloads
    request_quota: int | None  # None: run for duration_s
    duration_s: float | None
    rate_ops_s: float | None
    settings: WorkloadSettings
    seed: int


class RateLimiter:
    """A token bucket as a virtual schedule: request n may go at start + n/rate, and a
    late request may use at most ``burst`` slots it missed."""

    def __init__(self, rate_ops_s: float) -> None:
        assert rate_ops_s > 0, rate_ops_s
        self.interval_s = 1.0 / rate_ops_s
        burst = max(1.0, rate_ops_s * limits.BENCH_RATE_BURST_S)
        self.tolerance_s = (burst - 1.0) * self.interval_s
        self.next_slot_s = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next_slot_s, now - self.tolerance_s)
        self.next_slot_s = slot + self.interval_s
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(eq=False)
class Channel:
    channel: grpc.aio.Channel
    kv: rpc_pb2_grpc.KVAsyncStub
    watch: rpc_pb2_grpc.WatchAsyncStub
    lease: rpc_pb2_grpc.LeaseAsyncStub


def open_channel(endpoint: str) -> Channel:
    channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return Channel(
        channel,
        rpc_pb2_grpc.KVStub(channel),
        rpc_pb2_grpc.WatchStub(channel),
        rpc_pb2_grpc.LeaseStub(channel),
    )


@dataclass
class WorkerStats:
    """What a worker measured: a histogram per operation, counters, errors by message."""

    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    done: int = 0  # requests finished (ok or not), for the progress line
    failed: int = 0
    last_event_ns: int = 0  # watch: when the last event arrived (monotonic)

    def record(self, op: str, latency_ns: int) -> None:
        histogram = self.histograms.get(op)
        if histogram is None:
            histogram = self.histograms[op] = Histogram()
        histogram.record_ns(latency_ns)
        self.done += 1

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def error(self, op: str, error: BaseException) -> None:
        if isinstance(error, grpc.aio.AioRpcError):
            text = f"{op}: {error.code().name}: {error.details() or ''}"
        else:
            text = f"{op}: {type(error).__name__}: {error}"
        text = text[: limits.BENCH_ERROR_MESSAGE_MAX_CHARS]
        if text not in self.errors and len(self.errors) >= limits.BENCH_MAX_ERROR_KINDS:
            text = OTHER_ERRORS
        self.errors[text] = self.errors.get(text, 0) + 1
        self.done += 1
        self.failed += 1


class WorkerContext:
    """A worker's channels, request budget, rate limiter and stats."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.channels = [open_channel(endpoint) for endpoint in plan.channel_endpoints]
        self.stats = WorkerStats()
        self.random = random.Random(plan.seed)
        self.remaining = plan.request_quota
        self.deadline_s: float | None = None
        self.limiter = RateLimiter(plan.rate_ops_s) if plan.rate_ops_s else None
        self.sequence = 0  # put: this worker's requests so far (sequential keys)
        self.drain_started_ns = 0

    def channel_for(self, number: int) -> Channel:
        return self.channels[number % len(self.channels)]

    def start(self) -> None:
        if self.plan.duration_s is not None:
            self.deadline_s = time.monotonic() + self.plan.duration_s
        if self.limiter is not None:
            self.limiter.next_slot_s = time.monotonic()

    def _out_of_budget(self) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return True
        return self.deadline_s is not None and time.monotonic() >= self.deadline_s

    async def take(self) -> bool:
        """May a client send one more request? Waits for the rate limiter."""
        if self._out_of_budget():
            return False
        if self.remaining is not None:
            self.remaining -= 1
        if self.limiter is not None:
            await self.limiter.wait()
            if self.deadline_s is not None and time.monotonic() >= self.deadline_s:
                return False
        return True

    async def timed(self, op: str, call: Awaitable[object]) -> object | None:
        """Await one request, recording its latency (or its error)."""
        started = time.perf_counter_ns()
        try:
            response = await call
        except (grpc.aio.AioRpcError, TimeoutError, EOFError) as error:
            self.stats.error(op, error)
            return None
        self.stats.record(op, time.perf_counter_ns() - started)
        return response

    async def wait_connected(self) -> None:
        for channel in self.channels:
            try:
                await asyncio.wait_for(
                    channel.channel.channel_ready(), limits.BENCH_WORKER_START_TIMEOUT_S
                )
            except TimeoutError:
                raise BenchSetupError("could not connect to an endpoint") from None

    async def close(self) -> None:
        await asyncio.gather(*(channel.channel.close(None) for channel in self.channels))


def value_of(settings: WorkloadSettings) -> bytes:
    return b"v" * settings.value_bytes


# --- put, range, txn ---------------------------------------------------------------------


async def put_client(ctx: WorkerContext, client_id: int) -> None:
    settings = ctx.settings
    value = value_of(settings)
    kv = ctx.channel_for(client_id).kv
    while await ctx.take():
        if settings.sequential_keys:
            number = ctx.plan.index + ctx.sequence * ctx.plan.worker_count
            ctx.sequence += 1
        else:
            number = ctx.random.randrange(settings.key_space)
        key = numbered_key(number % settings.key_space, settings.key_bytes)
        request = rpc_pb2.PutRequest(key=key, value=value)
        await ctx.timed("put", kv.Put(request, timeout=limits.BENCH_RPC_TIMEOUT_S))


async def range_client(ctx: WorkerContext, client_id: int) -> None:
    settings = ctx.settings
    kv = ctx.channel_for(client_id).kv
    while await ctx.take():
        key = numbered_key(ctx.random.randrange(settings.range_keys), settings.key_bytes)
        request = rpc_pb2.RangeRequest(key=key, serializable=settings.serializable)
        response = await ctx.timed("range", kv.Range(request, timeout=limits.BENCH_RPC_TIMEOUT_S))
        if isinstance(response, rpc_pb2.RangeResponse) and len(response.kvs) != 1:
            ctx.stats.count("range_missing_key")  # the preload did not land: a broken run


def cas_request(key: bytes, last_mod_revision: int, value: bytes) -> rpc_pb2.TxnRequest:
    """Put ``key`` if its mod_revision is still ``last_mod_revision`` (0: absent); else
    read it."""
    return rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                key=key,
                target=rpc_pb2.Compare.MOD,
                result=rpc_pb2.Compare.EQUAL,
                mod_revision=last_mod_revision,
            )
        ],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
    )


def revision_after_cas(response: rpc_pb2.TxnResponse) -> int:
    """The key's mod_revision after a CAS: the txn's revision if it put, else the one read."""
    if response.succeeded:
        return response.header.revision
    kvs = response.responses[0].response_range.kvs
    return kvs[0].mod_revision if kvs else 0


async def txn_client(ctx: WorkerContext, client_id: int) -> None:
    settings = ctx.settings
    value = value_of(settings)
    kv = ctx.channel_for(client_id).kv
    # Clients share keys only when the key space is smaller than the client count.
    key = ctx.settings.run_prefix + b"t/%08d" % (client_id % settings.key_space)
    last_mod_revision = 0
    while await ctx.take():
        request = cas_request(key, last_mod_revision, value)
        response = await ctx.timed("txn", kv.Txn(request, timeout=limits.BENCH_RPC_TIMEOUT_S))
        if isinstance(response, rpc_pb2.TxnResponse):
            ctx.stats.count("txn_succeeded" if response.succeeded else "txn_failed")
            last_mod_revision = revision_after_cas(response)


# --- watch --------------------------------------------------------------------------------


@dataclass(eq=False)
class Watcher:
    """One watch stream on the prefix and what it received."""

    stream: WatchStream
    events: int = 0
    last_revision: int = 0
    out_of_order: int = 0
    reader: asyncio.Task[None] | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int | None = None


async def open_watcher(ctx: WorkerContext, watcher_id: int, prefix: bytes, start: int) -> Watcher:
    """A Watch stream on ``prefix`` from revision ``start``, once the server confirmed it."""
    stream: WatchStream = ctx.channel_for(watcher_id).watch.Watch(None)
    create = rpc_pb2.WatchCreateRequest(
        key=prefix, range_end=prefix_end(prefix), start_revision=start
    )
    await stream.write(rpc_pb2.WatchRequest(create_request=create))
    response = await asyncio.wait_for(stream.read(), limits.BENCH_RPC_TIMEOUT_S)
    if not isinstance(response, rpc_pb2.WatchResponse) or not response.created:
        stream.cancel()
        raise BenchSetupError(f"watch was not created: {response!r}")
    return Watcher(stream)


async def read_events(ctx: WorkerContext, watcher: Watcher, latency_op: str | None) -> None:
    """Count every event on the stream; record delivery latency from the value's stamp."""
    stats = ctx.stats
    histogram = stats.histograms.setdefault(latency_op, Histogram()) if latency_op else None
    while True:
        response = await watcher.stream.read()
        if not isinstance(response, rpc_pb2.WatchResponse):
            stats.error("watch", EOFError("watch stream ended"))
            return
        if response.canceled:
            stats.error("watch", RuntimeError(f"watch canceled: {response.cancel_reason}"))
            return
        now_ns = time.monotonic_ns()
        for event in response.events:
            revision = event.kv.mod_revision
            if revision <= watcher.last_revision:
                watcher.out_of_order += 1
            watcher.last_revision = revision
            if histogram is not None:
                sent_ns = int.from_bytes(event.kv.value[:TIMESTAMP_BYTES], "big")
                histogram.record_ns(now_ns - sent_ns)
        if response.events:
            watcher.events += len(response.events)
            stats.last_event_ns = now_ns
            if watcher.expected is not None and watcher.events >= watcher.expected:
                watcher.reached.set()


async def watch_writer(ctx: WorkerContext, writer_id: int) -> None:
    """Put new keys under the watched prefix; the value carries the send time."""
    prefix = watch_prefix(ctx.settings.run_prefix)
    padding = b"v" * max(0, ctx.settings.value_bytes - TIMESTAMP_BYTES)
    kv = ctx.channel_for(writer_id).kv
    sequence = 0
    while await ctx.take():
        key = prefix + b"%06d/%010d" % (writer_id, sequence)
        sequence += 1
        value = time.monotonic_ns().to_bytes(TIMESTAMP_BYTES, "big") + padding
        request = rpc_pb2.PutRequest(key=key, value=value)
        await ctx.timed("put", kv.Put(request, timeout=limits.BENCH_RPC_TIMEOUT_S))


async def drain_watchers(ctx: WorkerContext, watchers: list[Watcher], expected: int) -> None:
    """Wait until every watcher has ``expected`` events, or no event arrived for
    ``BENCH_WATCH_STALL_TIMEOUT_S`` (a slow server still delivers; a lossy one stops), or
    ``BENCH_WATCH_DRAIN_TIMEOUT_S`` passed; then count what is missing."""
    for watcher in watchers:
        watcher.expected = expected
        if watcher.events >= expected:
            watcher.reached.set()
    waiting = [asyncio.create_task(w.reached.wait()) for w in watchers]
    deadline_s = time.monotonic() + limits.BENCH_WATCH_DRAIN_TIMEOUT_S
    stall_ns = int(limits.BENCH_WATCH_STALL_TIMEOUT_S * 1e9)
    try:
        while waiting and time.monotonic() < deadline_s:
            _, pending = await asyncio.wait(waiting, timeout=limits.BENCH_PROGRESS_INTERVAL_S)
            waiting = list(pending)
            last_event_ns = max(ctx.stats.last_event_ns, ctx.drain_started_ns)
            if waiting and time.monotonic_ns() - last_event_ns > stall_ns:
                break
    finally:
        for task in waiting:
            task.cancel()
    stats = ctx.stats
    stats.count("watchers", len(watchers))
    stats.count("watch_events_expected", expected * len(watchers))
    stats.count("watch_events_delivered", sum(w.events for w in watchers))
    stats.count("watch_events_lost", sum(max(0, expected - w.events) for w in watchers))
    stats.count("watch_events_extra", sum(max(0, w.events - expected) for w in watchers))
    stats.count("watch_events_out_of_order", sum(w.out_of_order for w in watchers))


async def close_watchers(watchers: list[Watcher]) -> None:
    for watcher in watchers:
        watcher.stream.cancel()
        if watcher.reader is not None:
            watcher.reader.cancel()
    readers = [w.reader for w in watchers if w.reader is not None]
    await asyncio.gather(*readers, return_exceptions=True)


# --- lease --------------------------------------------------------------------------------


async def lease_client(ctx: WorkerContext, client_id: int) -> None:
    """Grant a lease, keep it alive ``keepalives_per_lease`` times, revoke it; again."""
    channel = ctx.channel_for(client_id)
    settings = ctx.settings
    stream: KeepAliveStream = channel.lease.LeaseKeepAlive(None)
    try:
        while await ctx.take():
            grant = rpc_pb2.LeaseGrantRequest(TTL=settings.lease_ttl_s)
            granted = await ctx.timed(
                "lease_grant", channel.lease.LeaseGrant(grant, timeout=limits.BENCH_RPC_TIMEOUT_S)
            )
            if not isinstance(granted, rpc_pb2.LeaseGrantResponse):
                continue
            for _ in range(settings.keepalives_per_lease):
                if not await ctx.take():
                    break
                kept = await ctx.timed("lease_keepalive", _keepalive(stream, granted.ID, ctx))
                if kept is None:  # the stream broke: the next keepalive needs a new one
                    stream.cancel()
                    stream = channel.lease.LeaseKeepAlive(None)
            revoke = rpc_pb2.LeaseRevokeRequest(ID=granted.ID)
            await ctx.timed(
                "lease_revoke",
                channel.lease.LeaseRevoke(revoke, timeout=limits.BENCH_RPC_TIMEOUT_S),
            )
    finally:
        stream.cancel()


async def _keepalive(stream: KeepAliveStream, lease_id: int, ctx: WorkerContext) -> bool:
    await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
    response = await asyncio.wait_for(stream.read(), limits.BENCH_RPC_TIMEOUT_S)
    if not isinstance(response, rpc_pb2.LeaseKeepAliveResponse):
        raise EOFError("keepalive stream ended")
    if response.TTL <= 0:
        ctx.stats.count("lease_keepalive_expired")  # the server had no such lease
    return True


# --- mixed (Kubernetes-like) --------------------------------------------------------------


async def list_objects(
    kv: rpc_pb2_grpc.KVAsyncStub, prefix: bytes, page_limit: int
) -> tuple[int, list[tuple[bytes, int]]]:
    """A paginated LIST at one revision, as an informer does: (revision, [(key, mod_rev)])."""
    end = prefix_end(prefix)
    key, revision = prefix, 0
    found: list[tuple[bytes, int]] = []
    while True:
        request = rpc_pb2.RangeRequest(key=key, range_end=end, limit=page_limit, revision=revision)
        response = await kv.Range(request, timeout=limits.BENCH_RPC_TIMEOUT_S)
        revision = revision or response.header.revision
        found.extend((kv_.key, kv_.mod_revision) for kv_ in response.kvs)
        if not response.more or not response.kvs:
            return revision, found
        key = response.kvs[-1].key + b"\0"


async def informer(ctx: WorkerContext, watcher_id: int) -> Watcher:
    """LIST the objects, then WATCH them from the list's revision."""
    prefix = objects_prefix(ctx.settings.run_prefix)
    kv = ctx.channel_for(watcher_id).kv
    started = time.perf_counter_ns()
    revision, _ = await list_objects(kv, prefix, ctx.settings.list_limit)
    ctx.stats.record("informer_list", time.perf_counter_ns() - started)
    return await open_watcher(ctx, watcher_id, prefix, revision + 1)


async def mixed_client(ctx: WorkerContext, client_id: int, revisions: dict[bytes, int]) -> None:
    settings = ctx.settings
    kv = ctx.channel_for(client_id).kv
    value = value_of(settings)
    ops, weights = zip(*MIXED_WEIGHTS.items(), strict=True)
    created = 0
    while await ctx.take():
        op = ctx.random.choices(ops, weights)[0]
        key = object_key(settings.run_prefix, ctx.random.randrange(settings.mixed_objects))
        timeout = limits.BENCH_RPC_TIMEOUT_S
        if op == "update":
            request = cas_request(key, revisions.get(key, 0), value)
            response = await ctx.timed("update", kv.Txn(request, timeout=timeout))
            if isinstance(response, rpc_pb2.TxnResponse):
                ctx.stats.count("update_conflicts", 0 if response.succeeded else 1)
                revisions[key] = revision_after_cas(response)
        elif op == "get":
            await ctx.timed("get", kv.Range(rpc_pb2.RangeRequest(key=key), timeout=timeout))
        elif op == "list":
            prefix = objects_prefix(settings.run_prefix)
            await ctx.timed("list", list_objects(kv, prefix, settings.list_limit))
        else:
            new_key = settings.run_prefix + b"registry/events/%06d-%08d" % (client_id, created)
            created += 1
            put = rpc_pb2.PutRequest(key=new_key, value=value)
            await ctx.timed("create", kv.Put(put, timeout=timeout))


# --- Runners: what a worker does in each phase ----------------------------------------------


class Runner:
    """prepare() before the start signal, run() the timed load, then drain() (watch only)."""

    needs_drain = False

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    async def prepare(self) -> None:
        return None

    def client(self, client_id: int) -> Awaitable[None]:
        raise NotImplementedError

    async def run(self) -> None:
        await asyncio.gather(*(self.client(cid) for cid in self.ctx.plan.client_ids))

    async def drain(self, expected: int) -> None:
        return None

    async def close(self) -> None:
        return None


class SimpleRunner(Runner):
    def __init__(
        self, ctx: WorkerContext, client: Callable[[WorkerContext, int], Awaitable[None]]
    ) -> None:
        super().__init__(ctx)
        self._client = client

    def client(self, client_id: int) -> Awaitable[None]:
        return self._client(self.ctx, client_id)


class WatchRunner(Runner):
    needs_drain = True

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.watchers: list[Watcher] = []

    async def prepare(self) -> None:
        prefix = watch_prefix(self.ctx.settings.run_prefix)
        start = self.ctx.settings.start_revision + 1
        self.watchers = list(
            await asyncio.gather(
                *(open_watcher(self.ctx, wid, prefix, start) for wid in self.ctx.plan.watcher_ids)
            )
        )
        for watcher in self.watchers:
            watcher.reader = asyncio.create_task(read_events(self.ctx, watcher, "watch_delivery"))

    def client(self, client_id: int) -> Awaitable[None]:
        return watch_writer(self.ctx, client_id)

    async def drain(self, expected: int) -> None:
        self.ctx.drain_started_ns = time.monotonic_ns()
        await drain_watchers(self.ctx, self.watchers, expected)

    async def close(self) -> None:
        await close_watchers(self.watchers)


class MixedRunner(Runner):
    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.watchers: list[Watcher] = []
        self.revisions: dict[bytes, int] = {}

    async def prepare(self) -> None:
        # The update cache starts from one LIST, as a controller's informer cache would.
        prefix = objects_prefix(self.ctx.settings.run_prefix)
        _, found = await list_objects(self.ctx.channels[0].kv, prefix, self.ctx.settings.list_limit)
        self.revisions.update(found)

    async def run(self) -> None:
        self.watchers = list(
            await asyncio.gather(*(informer(self.ctx, wid) for wid in self.ctx.plan.watcher_ids))
        )
        for watcher in self.watchers:
            watcher.reader = asyncio.create_task(read_events(self.ctx, watcher, None))
        await super().run()
        stats = self.ctx.stats
        stats.count("informer_events", sum(w.events for w in self.watchers))
        stats.count("informer_events_out_of_order", sum(w.out_of_order for w in self.watchers))

    def client(self, client_id: int) -> Awaitable[None]:
        return mixed_client(self.ctx, client_id, self.revisions)

    async def close(self) -> None:
        await close_watchers(self.watchers)


def make_runner(ctx: WorkerContext) -> Runner:
    workload = ctx.settings.workload
    if workload == "watch":
        return WatchRunner(ctx)
    if workload == "mixed":
        return MixedRunner(ctx)
    clients: dict[str, Callable[[WorkerContext, int], Awaitable[None]]] = {
        "put": put_client,
        "range": range_client,
        "txn": txn_client,
        "lease": lease_client,
    }
    return SimpleRunner(ctx, clients[workload])
