"""What a verify run records: client operations, faults, anomalies, and the run's summary.

These are plain, JSON-able records, written by the runner and read by the report. Times are
seconds since the run started (time.monotonic based), so a run reads the same on any clock.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

OpStatus = Literal["ok", "fail", "unknown"]

# The workloads a run drives (see workload.py).
WORKLOADS = ("register", "transfer", "lease", "watch")


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One client request as the client saw it.

    ``status`` is "ok" (a definite answer), "fail" (a definite error: it did not apply) or
    "unknown" (timeout, lost connection: it may or may not have applied); ``return_s`` is
    None only for "unknown".
    """

    op_id: int
    client_id: int
    workload: str
    call_s: float
    return_s: float | None
    status: OpStatus
    input: str  # human-readable, e.g. "cas r3 7 -> 12"
    output: str  # human-readable, e.g. "true" or "timeout"


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One injected fault, from when it started until it was healed (None: never healed)."""

    kind: str  # "kill", "pause", "partition", ...
    start_s: float
    end_s: float | None
    targets: tuple[str, ...]  # member names, e.g. ("m1",)
    detail: str  # e.g. "leader m2 isolated from {m1, m3}"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A broken guarantee, with the smallest sub-history that shows it (when there is one)."""

    checker: str  # "linearizability", "watch", "lost-write", "conservation", "recovery", ...
    summary: str  # one line
    explanation: str  # several lines, plain text
    ops: tuple[OpRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class RunSummary:
    target: str  # "raftkv" or "etcd"
    nodes: int
    seed: int
    duration_s: float  # the fault phase as asked for
    faults_requested: tuple[str, ...]
    command: str  # the one-line command that repeats the run
    started_at: str  # ISO 8601, UTC, for the reader only
    ops_by_status: dict[str, int] = field(default_factory=dict)
    ops_checked: int = 0  # ops the linearizability checker read (all workloads)
    faults_injected: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)  # checker -> "ok"/"anomaly"/"unknown"
    anomalies: int = 0
    wall_s: float = 0.0  # the whole run, setup and checking included

    @property
    def passed(self) -> bool:
        return self.anomalies == 0 and all(v != "anomaly" for v in self.verdicts.values())


@dataclass(slots=True)
class RunRecord:
    summary: RunSummary
    ops: list[OpRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        summary = dict(data["summary"])
        summary["faults_requested"] = tuple(summary["faults_requested"])
        ops = [_op(op) for op in data["ops"]]
        faults = [FaultRecord(**{**f, "targets": tuple(f["targets"])}) for f in data["faults"]]
        anomalies = [
            Anomaly(**{**a, "ops": tuple(_op(op) for op in a["ops"])}) for a in data["anomalies"]
        ]
        return cls(RunSummary(**summary), ops, faults, anomalies)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        loaded: dict[str, Any] = json.loads(path.read_text())
        return cls.from_json(loaded)


def _op(data: dict[str, Any]) -> OpRecord:
    return OpRecord(**data)
