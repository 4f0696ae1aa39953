"""A small Prometheus registry and the metrics a member exports, under etcd's names.

The registry keeps counters, gauges and histograms, each a family of series told apart by
label values, and renders them in Prometheus' text exposition format (version 0.0.4),
which ``/metrics`` serves on the JSON gateway and on ``--listen-metrics-urls``.

Thread safety: every family has its own lock, so the event loop and the WAL fsync thread
may update the same family. Values that are cheap to read but costly to track (the leader,
the indexes, the database size) are gauges refreshed when the registry is rendered: a
``Registry.add_refresher`` callback sets them, on the thread that renders (the event loop).

One registry per process (``REGISTRY``), as in etcd: a process runs one member. In-process
tests that run several members share the counters; the gauges show the member bound last
(``bind_member``).

Names, types, labels and histogram buckets are etcd 3.5's (``docs/operations.md``,
Monitoring, lists them with what raftkv measures for each).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from raftkv import limits

log = logging.getLogger("raftkv.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LabelValues = tuple[str, ...]


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` upper bounds: start, start*factor, ... (Prometheus' ExponentialBuckets)."""
    assert start > 0 and factor > 1 and count >= 1, (start, factor, count)
    return tuple(start * factor**i for i in range(count))


# etcd's WAL fsync and backend commit histograms: 1 ms to 8.192 s.
DISK_DURATION_BUCKETS_S = exponential_buckets(0.001, 2, 14)
# go-grpc-prometheus' handling-time histogram uses Prometheus' default buckets.
DEFAULT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --- Text format ----------------------------------------------------------------------


def format_value(value: float) -> str:
    """A sample value as Prometheus reads it: integers without a fraction, +Inf/-Inf/NaN."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


# --- Metric families ------------------------------------------------------------------


class _Value:
    """One counter or gauge series."""

    __slots__ = ("_family", "value")

    def __init__(self, family: _Family[_Value]) -> None:
        self._family = family
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._family.lock:
            self.value += amount

    def set(self, value: float) -> None:
        with self._family.lock:
            self.value = float(value)


class _Buckets:
    """One histogram series: a count per bucket (not cumulative), the sum and the count."""

    __slots__ = ("_family", "bounds", "counts", "sum", "count")

    def __init__(self, family: _Family[_Buckets], bounds: tuple[float, ...]) -> None:
        self._family = family
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        slot = bisect.bisect_left(self.bounds, value)  # a value equal to a bound is in it
        with self._family.lock:
            self.counts[slot] += 1
            self.sum += value
            self.count += 1


_Series = TypeVar("_Series", _Value, _Buckets)


class _Family(Generic[_Series]):
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        assert name and not name[0].isdigit(), name
        assert "le" not in label_names, "'le' is the histogram bucket label"
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self.lock = threading.Lock()
        self._series: dict[LabelValues, _Series] = {}
        self._over_limit_logged = False

    def _new_series(self) -> _Series:
        raise NotImplementedError

    def _series_for(self, values: LabelValues) -> _Series:
        series = self._series.get(values)
        if series is not None:
            return series
        with self.lock:
            series = self._series.get(values)
            if series is None:
                series = self._new_series()
                if len(self._series) < limits.METRICS_MAX_SERIES_PER_FAMILY:
                    self._series[values] = series
                elif not self._over_limit_logged:
                    # Recorded nowhere: memory stays bounded whatever the label values.
                    self._over_limit_logged = True
                    log.warning(
                        "metric %s has %d series: new label values are not recorded",
                        self.name,
                        len(self._series),
                    )
        return series

    def labels(self, *values: str) -> _Series:
        """The series for these label values, in ``label_names`` order."""
        assert len(values) == len(self.label_names), (self.name, values)
        return self._series_for(tuple(values))

    def _only(self) -> _Series:
        assert not self.label_names, f"{self.name} has labels: use labels()"
        return self._series_for(())

    def clear(self) -> None:
        with self.lock:
            self._series.clear()

    def snapshot(self) -> list[tuple[LabelValues, _Series]]:
        with self.lock:
            return sorted(self._series.items())

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help_text)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        self._render_samples(out)

    def _render_samples(self, out: list[str]) -> None:
        raise NotImplementedError


class _ValueFamily(_Family[_Value]):
    def _new_series(self) -> _Value:
        return _Value(self)

    def value(self, *values: str) -> float:
        """The current value of a series (0 if it was never touched); for tests."""
        series = self._series.get(tuple(values))
        return 0.0 if series is None else series.value

    def _render_samples(self, out: list[str]) -> None:
        for values, series in self.snapshot():
            out.append(
                f"{self.name}{_labels_text(self.label_names, values)} {format_value(series.value)}"
            )


class Counter(_ValueFamily):
    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        assert amount >= 0, f"{self.name}: a counter only goes up"
        self._only().inc(amount)


class Gauge(_ValueFamily):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)


class Histogram(_Family[_Buckets]):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, label_names)
        bounds = tuple(float(bound) for bound in buckets if not math.isinf(bound))
        assert bounds and list(bounds) == sorted(set(bounds)), f"{name}: unsorted buckets"
        self.bounds = bounds

    def _new_series(self) -> _Buckets:
        return _Buckets(self, self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def count(self, *values: str) -> int:
        series = self._series.get(tuple(values))
        return 0 if series is None else series.count

    def _render_samples(self, out: list[str]) -> None:
        for values, series in self.snapshot():
            with self.lock:
                counts, total, count = list(series.counts), series.sum, series.count
            cumulative = 0
            bounds = [*(format_value(bound) for bound in self.bounds), "+Inf"]
            for bound, bucket_count in zip(bounds, counts, strict=True):
                cumulative += bucket_count
                labels = _labels_text((*self.label_names, "le"), (*values, bound))
                out.append(f"{self.name}_bucket{labels} {cumulative}")
            labels = _labels_text(self.label_names, values)
            out.append(f"{self.name}_sum{labels} {format_value(total)}")
            out.append(f"{self.name}_count{labels} {count}")


# --- The registry ---------------------------------------------------------------------


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family[_Value] | _Family[_Buckets]] = {}
        self._refreshers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _add(self, family: _Family[_Series]) -> _Family[_Series]:
        with self._lock:
            assert family.name not in self._families, f"{family.name} registered twice"
            self._families[family.name] = family
        if not family.label_names:
            family.labels()  # shown from the start (at 0), as Prometheus' clients do
        return family

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        family = Counter(name, help_text, label_names)
        self._add(family)
        return family

    def gauge(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, help_text, label_names)
        self._add(family)
        return family

    def histogram(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        label_names: Sequence[str] = (),
    ) -> Histogram:
        family = Histogram(name, help_text, label_names, buckets)
        self._add(family)
        return family

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before every render (it sets gauges read at scrape time)."""
        with self._lock:
            self._refreshers.append(refresh)

    def remove_refresher(self, refresh: Callable[[], None]) -> None:
        with self._lock:
            if refresh in self._refreshers:
                self._refreshers.remove(refresh)

    def render(self) -> bytes:
        """Every family in the text format, sorted by name."""
        with self._lock:
            refreshers = list(self._refreshers)
            families = sorted(self._families.items())
        for refresh in refreshers:
            try:
                refresh()
            except Exception:  # a broken refresher must not take /metrics down
                log.exception("refreshing metrics failed")
        out: list[str] = []
        for _, family in families:
            family.render(out)
        return ("\n".join(out) + "\n").encode()


REGISTRY = Registry()

# --- etcd's server metrics (server/etcdserver/metrics.go) ------------------------------

HAS_LEADER = REGISTRY.gauge("etcd_server_has_leader", "1 if this member knows a leader, else 0.")
IS_LEADER = REGISTRY.gauge("etcd_server_is_leader", "1 if this member is the leader, else 0.")
IS_LEARNER = REGISTRY.gauge("etcd_server_is_learner", "1 if this member is a learner, else 0.")
SERVER_ID = REGISTRY.gauge(
    "etcd_server_id", "Always 1; the server_id label is this member's ID in hex.", ["server_id"]
)
SERVER_VERSION = REGISTRY.gauge(
    "etcd_server_version", "Always 1; the label is the etcd version served.", ["server_version"]
)
CLUSTER_VERSION = REGISTRY.gauge(
    "etcd_cluster_version", "Always 1; the label is the cluster version.", ["cluster_version"]
)
LEADER_CHANGES = REGISTRY.counter(
    "etcd_server_leader_changes_seen_total", "Times this member saw a new leader."
)
PROPOSALS_COMMITTED = REGISTRY.gauge(
    "etcd_server_proposals_committed_total", "The Raft commit index of this member."
)
PROPOSALS_APPLIED = REGISTRY.gauge(
    "etcd_server_proposals_applied_total", "The Raft index this member has applied."
)
PROPOSALS_PENDING = REGISTRY.gauge(
    "etcd_server_proposals_pending", "Proposals made on this member and not yet applied."
)
PROPOSALS_FAILED = REGISTRY.counter(
    "etcd_server_proposals_failed_total",
    "Proposals that failed: dropped (no leader, leader changed) or timed out.",
)
SLOW_APPLY = REGISTRY.counter(
    "etcd_server_slow_apply_total",
    "Apply batches that took longer than --experimental-warning-apply-duration.",
)
SLOW_READ_INDEXES = REGISTRY.counter(
    "etcd_server_slow_read_indexes_total",
    "ReadIndex requests asked again after an election timeout without an answer.",
)
QUOTA_BACKEND_BYTES = REGISTRY.gauge(
    "etcd_server_quota_backend_bytes", "The backend quota in bytes (NOSPACE above it)."
)

# --- Disk (server/storage/wal/metrics.go, server/storage/backend/metrics.go) -----------

WAL_FSYNC_SECONDS = REGISTRY.histogram(
    "etcd_disk_wal_fsync_duration_seconds",
    "Duration of the WAL fdatasync of one Ready.",
    DISK_DURATION_BUCKETS_S,
)
BACKEND_COMMIT_SECONDS = REGISTRY.histogram(
    "etcd_disk_backend_commit_duration_seconds",
    "Duration of one backend (LMDB) write-transaction commit, its sync included.",
    DISK_DURATION_BUCKETS_S,
)

# --- MVCC (server/storage/mvcc/metrics.go) ---------------------------------------------

DB_TOTAL_SIZE_BYTES = REGISTRY.gauge(
    "etcd_mvcc_db_total_size_in_bytes", "Size of the backend file on disk, in bytes."
)
DB_IN_USE_SIZE_BYTES = REGISTRY.gauge(
    "etcd_mvcc_db_total_size_in_use_in_bytes", "Bytes of backend pages in use."
)
KEYS_TOTAL = REGISTRY.gauge(
    "etcd_debugging_mvcc_keys_total",
    "Keys in the index (a deleted key counts until a compaction removes it).",
)

# --- Network (server/etcdserver/api/rafthttp/metrics.go) -------------------------------

PEER_SENT_BYTES = REGISTRY.counter(
    "etcd_network_peer_sent_bytes_total", "Bytes of Raft messages sent to a peer.", ["To"]
)
PEER_RECEIVED_BYTES = REGISTRY.counter(
    "etcd_network_peer_received_bytes_total",
    "Bytes of Raft messages received from a peer.",
    ["From"],
)
CLIENT_GRPC_SENT_BYTES = REGISTRY.counter(
    "etcd_network_client_grpc_sent_bytes_total", "Bytes of gRPC response messages sent."
)
CLIENT_GRPC_RECEIVED_BYTES = REGISTRY.counter(
    "etcd_network_client_grpc_received_bytes_total", "Bytes of gRPC request messages received."
)

# --- gRPC (go-grpc-prometheus' names, as etcd exports them) ----------------------------

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
GRPC_STARTED = REGISTRY.counter(
    "grpc_server_started_total", "RPCs started on the server.", _GRPC_LABELS
)
GRPC_HANDLED = REGISTRY.counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, with their status code.",
    (*_GRPC_LABELS, "grpc_code"),
)
GRPC_MSG_RECEIVED = REGISTRY.counter(
    "grpc_server_msg_received_total", "Request messages received.", _GRPC_LABELS
)
GRPC_MSG_SENT = REGISTRY.counter(
    "grpc_server_msg_sent_total", "Response messages sent.", _GRPC_LABELS
)
# Registered by enable_grpc_handling_histogram() (etcd's --metrics=extensive).
GRPC_HANDLING_SECONDS: Histogram | None = None


def enable_grpc_handling_histogram() -> Histogram:
    """Export grpc_server_handling_seconds (etcd does with --metrics=extensive)."""
    global GRPC_HANDLING_SECONDS
    if GRPC_HANDLING_SECONDS is None:
        GRPC_HANDLING_SECONDS = REGISTRY.histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end on the server.",
            DEFAULT_BUCKETS_S,
            _GRPC_LABELS,
        )
    return GRPC_HANDLING_SECONDS


# --- The member's scrape-time gauges ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberSample:
    """What a member reports at each scrape (read on the event loop)."""

    leader_id: int
    is_leader: bool
    is_learner: bool
    committed_index: int
    applied_index: int
    pending_proposals: int
    db_size_bytes: int
    db_size_in_use_bytes: int
    quota_bytes: int
    keys: int


# The bound member's sample function and the refresher made of it.
_bound_member: tuple[Callable[[], MemberSample], Callable[[], None]] | None = None


def bind_member(member_id: int, server_version: str, sample: Callable[[], MemberSample]) -> None:
    """Report this member's gauges from now on (``sample`` is called at every scrape)."""
    global _bound_member
    if _bound_member is not None:
        unbind_member(_bound_member[0])

    def refresh() -> None:
        now = sample()
        HAS_LEADER.set(1 if now.leader_id else 0)
        IS_LEADER.set(1 if now.is_leader else 0)
        IS_LEARNER.set(1 if now.is_learner else 0)
        PROPOSALS_COMMITTED.set(now.committed_index)
        PROPOSALS_APPLIED.set(now.applied_index)
        PROPOSALS_PENDING.set(now.pending_proposals)
        DB_TOTAL_SIZE_BYTES.set(now.db_size_bytes)
        DB_IN_USE_SIZE_BYTES.set(now.db_size_in_use_bytes)
        QUOTA_BACKEND_BYTES.set(now.quota_bytes)
        KEYS_TOTAL.set(now.keys)

    SERVER_ID.clear()
    SERVER_ID.labels(f"{member_id:x}").set(1)
    SERVER_VERSION.clear()
    SERVER_VERSION.labels(server_version).set(1)
    CLUSTER_VERSION.clear()
    CLUSTER_VERSION.labels(".".join(server_version.split(".")[:2])).set(1)
    REGISTRY.add_refresher(refresh)
    _bound_member = (sample, refresh)


def unbind_member(sample: Callable[[], MemberSample]) -> None:
    """Stop reporting the member bound with ``sample`` (another one bound since stays)."""
    global _bound_member
    if _bound_member is not None and _bound_member[0] == sample:
        REGISTRY.remove_refresher(_bound_member[1])
        _bound_member = None


# --- Process metrics (client_golang's process collector) -------------------------------

PROCESS_CPU_SECONDS = REGISTRY.counter(
    "process_cpu_seconds_total", "User and system CPU time of this process, in seconds."
)
PROCESS_RESIDENT_MEMORY_BYTES = REGISTRY.gauge(
    "process_resident_memory_bytes", "Resident memory of this process, in bytes."
)
PROCESS_VIRTUAL_MEMORY_BYTES = REGISTRY.gauge(
    "process_virtual_memory_bytes", "Virtual memory of this process, in bytes."
)
PROCESS_OPEN_FDS = REGISTRY.gauge("process_open_fds", "Open file descriptors.")
PROCESS_MAX_FDS = REGISTRY.gauge("process_max_fds", "The open file descriptor limit.")
PROCESS_START_TIME_SECONDS = REGISTRY.gauge(
    "process_start_time_seconds", "When this process started, in seconds since the epoch."
)
PROCESS_START_TIME_SECONDS.set(time.time())


def _refresh_process() -> None:
    times = os.times()
    PROCESS_CPU_SECONDS._only().set(times.user + times.system)
    PROCESS_MAX_FDS.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    try:  # Linux only, like client_golang's collector
        with open("/proc/self/statm", "rb") as statm:
            virtual_pages, resident_pages = (int(part) for part in statm.read().split()[:2])
        PROCESS_OPEN_FDS.set(len(os.listdir("/proc/self/fd")))
    except OSError:
        return
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    PROCESS_RESIDENT_MEMORY_BYTES.set(resident_pages * page_bytes)
    PROCESS_VIRTUAL_MEMORY_BYTES.set(virtual_pages * page_bytes)


REGISTRY.add_refresher(_refresh_process)


# --- Helpers for the instrumented code --------------------------------------------------


def timed(observe: Callable[[float], None], action: Callable[[], None]) -> float:
    """Run ``action``, record its duration with ``observe``; the duration in seconds."""
    started = time.perf_counter()
    action()
    elapsed_s = time.perf_counter() - started
    observe(elapsed_s)
    return elapsed_s


__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "Counter",
    "Gauge",
    "Histogram",
    "MemberSample",
    "Registry",
    "bind_member",
    "enable_grpc_handling_histogram",
    "exponential_buckets",
    "format_value",
    "unbind_member",
]
