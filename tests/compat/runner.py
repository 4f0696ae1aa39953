"""Run one seed's operations (or a fixed list) against etcd and raftkv; stop at the first
difference.

Every op goes to the reference (etcd) and then to the candidate (raftkv); the normalized
answers must be equal. After a watch is created at a past revision both servers are
waited on until it has caught up (so a later compaction cannot race it). At the end
every watch stream is synced to the final revision and the per-watch event lists are
compared. One known etcd 3.5.1 bug is allowed for there (``_without_deletes_at``).
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from tests.compat.differential import (
    Json,
    Observed,
    Op,
    OpGenerator,
    OpKind,
    catches_up,
    first_difference,
    normalize,
)
from tests.compat.wire import Answer, Server, SyncError

REPLAY_COMMAND = (
    "RAFTKV_DIFF_SEED={seed} python -m pytest -p no:xdist tests/compat/test_differential.py"
)
RECENT_OPS_IN_REPORT = 8


class Difference(AssertionError):
    """raftkv answered differently from etcd; the message is the full report."""


@dataclass
class RunSummary:
    name: str
    ops: int = 0
    by_kind: Counter[OpKind] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # error details -> count
    watch_events: int = 0


def answer_json(op: Op, answer: Answer) -> Json:
    if answer.failure is not None:
        return {"error": {"code": answer.failure.code, "details": answer.failure.details}}
    assert answer.message is not None
    return {"response": normalize(op, answer.message, answer.ttl_window)}


class DifferentialRun:
    """One run: ``name`` and ``replay`` go into the report of a difference."""

    def __init__(self, name: str, replay: str, reference: Server, candidate: Server) -> None:
        self.name = name
        self.replay = replay
        self.reference = reference
        self.candidate = candidate
        self.observed = Observed()
        self.summary = RunSummary(name)
        self.op_count = 0
        self._recent: deque[str] = deque(maxlen=RECENT_OPS_IN_REPORT)
        self._watch_ops: dict[tuple[int, str], str] = {}  # (stream, "watch N") -> op
        # Watches that start at the compacted revision -> that revision (see _compare_watches)
        self._starts_at_compaction: dict[tuple[int, str], int] = {}

    def run(self, ops: Iterable[Op], op_count: int) -> RunSummary:
        """Send ``ops`` (drawn from ``self.observed`` as they go, if they like)."""
        self.op_count = op_count
        for op in ops:
            self._step(op)
        self._sync(f"the end ({self.summary.ops} ops)")
        self._compare_watches()
        return self.summary

    def _step(self, op: Op) -> None:
        expected = self.reference.call(op)
        actual = self.candidate.call(op)
        expected_json, actual_json = answer_json(op, expected), answer_json(op, actual)
        where = first_difference(expected_json, actual_json)
        if where is not None:
            raise Difference(
                self._report(
                    f"op {op.index} of {self.op_count}",
                    [
                        f"op: {op.describe()}",
                        f"raftkv member: {self.candidate.endpoints[actual.member]}",
                        f"first difference: {where}",
                        f"etcd:   {_one_line(expected_json)}",
                        f"raftkv: {_one_line(actual_json)}",
                    ],
                )
            )
        self._count(op, expected)
        was_in_the_past = catches_up(op, self.observed)
        self.observed.record(op, expected.message)
        self._recent.append(op.describe())
        if isinstance(expected.message, rpc_pb2.WatchResponse) and op.kind is OpKind.WATCH_CREATE:
            watch = (op.stream, f"watch {expected.message.watch_id}")
            self._watch_ops[watch] = op.describe()
            assert isinstance(op.request, rpc_pb2.WatchCreateRequest)
            start = op.request.start_revision
            if start > 0 and start == self.observed.compact_revision:
                self._starts_at_compaction[watch] = start
        if was_in_the_past:
            self._sync(f"op {op.index} (a watch from a past revision)")

    def _count(self, op: Op, answer: Answer) -> None:
        self.summary.ops += 1
        self.summary.by_kind[op.kind] += 1
        if answer.failure is not None:
            self.summary.refused[answer.failure.details] += 1

    def _sync(self, when: str) -> None:
        revision = self.observed.revision
        try:
            self.reference.wait_synced(revision)
        except SyncError as error:
            raise AssertionError(f"harness: etcd did not sync its watches: {error}") from error
        try:
            self.candidate.wait_synced(revision)
        except SyncError as error:
            raise Difference(
                self._report(f"watch sync after {when}", [f"raftkv: {error}"])
            ) from error

    def _compare_watches(self) -> None:
        for number, (expected_stream, actual_stream) in enumerate(
            zip(self.reference.streams, self.candidate.streams, strict=True)
        ):
            expected, actual = expected_stream.records(), actual_stream.records()
            for watch in sorted(set(expected) | set(actual)):
                expected_record = expected.get(watch, "(none)")
                actual_record = actual.get(watch, "(none)")
                compacted_at = self._starts_at_compaction.get((number, watch))
                if compacted_at is not None:
                    expected_record = _without_deletes_at(expected_record, compacted_at)
                    actual_record = _without_deletes_at(actual_record, compacted_at)
                if isinstance(expected_record, dict):
                    self.summary.watch_events += len(expected_record.get("events", []))
                where = first_difference(expected_record, actual_record)
                if where is None:
                    continue
                created_by = self._watch_ops.get((number, watch), "(no create op)")
                raise Difference(
                    self._report(
                        f"stream {number} {watch} at the end",
                        [
                            f"watch created by: {created_by}",
                            f"raftkv member: {self.candidate.stream_member(number)}",
                            f"first difference: {where}",
                            f"etcd:   {_one_line(expected_record)}",
                            f"raftkv: {_one_line(actual_record)}",
                        ],
                    )
                )

    def _report(self, where: str, lines: list[str]) -> str:
        recent = [f"  {text}" for text in self._recent] or ["  (none)"]
        return "\n".join(
            [
                f"raftkv answered differently from etcd ({self.name}, {where})",
                *lines,
                "previous ops:",
                *recent,
                "replay: " + self.replay,
            ]
        )


def run_seed(seed: int, reference: Server, candidate: Server) -> RunSummary:
    """Run ``seed``'s ops on both servers; Difference at the first different answer."""
    run = DifferentialRun(f"seed {seed}", REPLAY_COMMAND.format(seed=seed), reference, candidate)
    generator = OpGenerator(seed)
    return run.run(generator.ops(run.observed), generator.op_count)


def run_ops(
    name: str, replay: str, ops: Sequence[Op], reference: Server, candidate: Server
) -> RunSummary:
    """Run a fixed list of ops on both servers, as ``run_seed`` does."""
    return DifferentialRun(name, replay, reference, candidate).run(ops, len(ops))


def _without_deletes_at(record: Json, revision: int) -> Json:
    """``record`` without its DELETE events at ``revision``. etcd 3.5.1 loses the
    tombstone at the compacted revision (etcd-io/etcd#18089, fixed in later 3.5
    releases by keeping it), so a watch that starts there misses that DELETE event;
    raftkv keeps the tombstone and sends it, as fixed etcd does."""
    if not isinstance(record, dict) or "events" not in record:
        return record
    kept = [
        event
        for event in record["events"]
        if not (event.get("type") == "DELETE" and event["kv"]["mod_revision"] == str(revision))
    ]
    return {**record, "events": kept}


def _one_line(data: Json) -> str:
    return json.dumps(data, sort_keys=True)
