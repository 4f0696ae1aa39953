"""A linearizability checker: the WGL search with Lowe's cache, as Porcupine does it.

Each partition of the history (``model.partition``, e.g. one per key) is checked
alone. Its ops become call and return entries in a doubly linked list sorted by
time; intervals are closed, so at equal times calls come first (an op that returned
at t overlaps one called at t). The search walks the list: at a call it tries to
linearize that op now (``model.step``) and, if the (linearized set, state) pair is
new, lifts the op out of the list and starts again from the head; at a return, the
op that returns there should have been linearized already, so it backtracks.

Unknown-outcome ops return at +infinity (after every known return) and are
optional: the search succeeds once every known op is linearized.

A VIOLATION is shrunk to a small failing sub-history: an op (or a chunk of ops) is
dropped when the history still fails with that op's outcome made unknown. That is
stronger than "still fails without it" (an unknown op may also be skipped), so the
writes a stale read needs to be wrong stay in the witness.
"""

from __future__ import annotations

import collections
import enum
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from raftkv import limits
from raftkv.check.history import Operation, validate
from raftkv.check.models import Model, State


class Verdict(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # out of time or states: no verdict


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    partitions: int
    operations: int
    failing: tuple[Operation, ...]  # a small failing sub-history when VIOLATION, else ()
    explanation: str
    elapsed_s: float


class _OutOfBudget(Exception):
    """The time budget or the visited-state cap ran out."""


@dataclass(slots=True)
class _Budget:
    deadline: float
    max_states: int
    visited_states: int = 0
    steps: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps % limits.CHECK_CLOCK_EVERY_STEPS == 0 and time.monotonic() > self.deadline:
            raise _OutOfBudget("time budget exceeded")

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def visit(self) -> None:
        self.visited_states += 1
        if self.visited_states > self.max_states:
            raise _OutOfBudget(f"more than {self.max_states} states visited")


@dataclass(slots=True)
class _Failure:
    """Where the deepest attempt got stuck, to explain a violation."""

    prefix: list[int] = field(default_factory=list)  # op indices, in linearization order
    state: State = None
    blocked: int = -1  # the op that had to be linearized by its return, and could not be


def _search(ops: Sequence[Operation], model: Model, budget: _Budget) -> _Failure | None:
    """None if the ops are linearizable, else where the deepest attempt got stuck."""
    op_count = len(ops)
    if op_count == 0:
        return None
    # Entry e in 1..2n; 0 is the head sentinel (and the tail: the list is circular).
    timeline: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op index)
    for index, op in enumerate(ops):
        timeline.append((op.call_ns, 0, index))
        return_time = math.inf if op.return_ns is None else op.return_ns
        timeline.append((return_time, 1, index))
    timeline.sort()
    size = len(timeline) + 1
    is_call = [False] * size
    op_of = [-1] * size
    match = [0] * size
    call_entry = [0] * op_count
    for entry, (_, kind, index) in enumerate(timeline, start=1):
        is_call[entry] = kind == 0
        op_of[entry] = index
        if kind == 0:
            call_entry[index] = entry
        else:
            match[call_entry[index]] = entry
    next_entry = [(e + 1) % size for e in range(size)]
    prev_entry = [(e - 1) % size for e in range(size)]
    known = [op.known for op in ops]

    def lift(e: int) -> None:
        next_entry[prev_entry[e]] = next_entry[e]
        prev_entry[next_entry[e]] = prev_entry[e]

    def unlift(e: int) -> None:
        next_entry[prev_entry[e]] = e
        prev_entry[next_entry[e]] = e

    state = model.init()
    linearized = 0
    cache: set[tuple[int, State]] = {(0, state)}
    stack: list[tuple[int, State]] = []  # (call entry, state before it)
    known_left = sum(known)
    failure = _Failure()
    entry = next_entry[0]
    while known_left > 0:
        budget.tick()
        assert entry != 0, "a known return is always reached before the end of the list"
        index = op_of[entry]
        if is_call[entry]:
            op = ops[index]
            after = model.step(state, op.input, op.output, known[index])
            if after is not None:
                key = (linearized | (1 << index), after)
                if key not in cache:
                    budget.visit()
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = after, key[0]
                    known_left -= known[index]
                    lift(entry)
                    lift(match[entry])
                    entry = next_entry[0]
                    continue
            entry = next_entry[entry]
            continue
        assert known[index], "unknown returns come after every known return"
        if len(stack) > len(failure.prefix) or failure.blocked < 0:
            failure = _Failure([op_of[e] for e, _ in stack], state, index)
        if not stack:
            return failure
        entry, state = stack.pop()
        index = op_of[entry]
        linearized &= ~(1 << index)
        known_left += known[index]
        unlift(match[entry])
        unlift(entry)
        entry = next_entry[entry]
    return None


def check(
    history: Sequence[Operation],
    model: Model,
    *,
    time_budget_s: float = 10.0,
    max_states: int = limits.CHECK_MAX_VISITED_STATES,
) -> CheckResult:
    """Is ``history`` linearizable with respect to ``model``?

    Known ops must all take effect between their call and return; unknown-outcome
    ops may take effect after their call or never. UNKNOWN means the time budget or
    the visited-state cap ran out first. Shrinking a violation shares the budget.
    """
    validate(history)
    started = time.monotonic()
    budget = _Budget(started + time_budget_s, max_states)
    partitions = model.partition(history)
    out_of_budget: list[str] = []
    for number, part in enumerate(partitions, start=1):
        budget.visited_states = 0  # the state cap is per partition, the time budget shared
        try:
            failure = _search(part, model, budget)
        except _OutOfBudget as exhausted:
            out_of_budget.append(
                f"partition {number} ({model.describe_partition(part)}): {exhausted}"
            )
            continue
        if failure is None:
            continue
        failing = _witness(part, part[failure.blocked], model, budget)
        explanation = _explain(number, len(partitions), failing, model, budget)
        return CheckResult(
            Verdict.VIOLATION,
            len(partitions),
            len(history),
            tuple(failing),
            explanation,
            time.monotonic() - started,
        )
    elapsed_s = time.monotonic() - started
    if out_of_budget:
        explanation = "no verdict: " + "; ".join(out_of_budget)
        return CheckResult(
            Verdict.UNKNOWN, len(partitions), len(history), (), explanation, elapsed_s
        )
    explanation = f"linearizable: {len(history)} ops in {len(partitions)} partitions"
    return CheckResult(Verdict.OK, len(partitions), len(history), (), explanation, elapsed_s)


def _still_fails(ops: Sequence[Operation], model: Model, budget: _Budget) -> bool:
    try:
        return _search(ops, model, budget) is not None
    except _OutOfBudget:
        return False


def _witness(
    part: Sequence[Operation], blocked: Operation, model: Model, budget: _Budget
) -> list[Operation]:
    """A small failing sub-history: one the model sees directly, else a shrunk one."""
    for candidate in model.witnesses(part)[: limits.CHECK_WITNESS_CANDIDATES]:
        if _still_fails(candidate, model, budget):
            return _shrink(candidate, model, budget)
    return _shrink(_before_blocked(part, blocked, model, budget), model, budget)


def _before_blocked(
    part: Sequence[Operation], blocked: Operation, model: Model, budget: _Budget
) -> Sequence[Operation]:
    """The ops called no later than the op the search got stuck on returned, if they still
    fail on their own: a long history's witness is then found in its first part only."""
    assert blocked.return_ns is not None, "only a known op can block the search"
    kept = [op for op in part if op.call_ns <= blocked.return_ns]
    dropped = [op for op in part if op.call_ns > blocked.return_ns]
    if not dropped or _Observations(kept, model).any_observes(dropped):
        return part
    # The dropped ops made unknown (they may or may not have happened): if that still
    # fails, so does the whole history, and so do the kept ops alone.
    relaxed = [*kept, *(op.with_unknown_outcome() for op in dropped)]
    return kept if _still_fails(relaxed, model, budget) else part


class _Observations:
    """How many of some ops observed each token (a value a write left), so "does any of
    them observe a write of these?" costs the writers' size, not writers x readers model
    calls (which took minutes to shrink a 4,600-op partition)."""

    def __init__(self, readers: Sequence[Operation], model: Model) -> None:
        self._model = model
        self._seen: collections.Counter[Hashable] = collections.Counter()
        for op in readers:
            self._seen.update(model.tokens(op).observed)

    def remove(self, readers: Sequence[Operation]) -> None:
        for op in readers:
            self._seen.subtract(self._model.tokens(op).observed)

    def any_observes(
        self, writers: Sequence[Operation], besides: Sequence[Operation] = ()
    ) -> bool:
        """Whether a counted op, other than those in ``besides``, observed a token one of
        ``writers`` wrote."""
        excluded: collections.Counter[Hashable] = collections.Counter()
        for op in besides:
            excluded.update(self._model.tokens(op).observed)
        return any(
            self._seen[token] - excluded[token] > 0
            for op in writers
            for token in self._model.tokens(op).written
        )


def _shrink(part: Sequence[Operation], model: Model, budget: _Budget) -> list[Operation]:
    """Drop chunks of ops (halving the chunk size down to one) while the rest still fails.

    A chunk is dropped only if the history fails with the chunk's ops made unknown,
    which implies it fails without them, and if no op left observed a write of the
    chunk's. Budget exhaustion keeps what is left.
    """
    ops = sorted(part, key=lambda op: (op.call_ns, op.op_id))
    observations = _Observations(ops, model)

    def droppable(start: int, end: int) -> bool:
        chunk_ops = ops[start:end]
        if observations.any_observes(chunk_ops, besides=chunk_ops):
            return False
        relaxed = [
            op.with_unknown_outcome() if start <= i < end else op for i, op in enumerate(ops)
        ]
        return _still_fails(relaxed, model, budget)

    chunk = max(1, len(ops) // 2)
    while True:
        start, dropped = 0, False
        while start < len(ops):
            if budget.expired():
                return ops  # each attempt would fail fast, but costs O(ops) to set up
            if droppable(start, start + chunk):
                observations.remove(ops[start : start + chunk])
                del ops[start : start + chunk]
                dropped = True
            else:
                start += chunk
        # Dropping an observer can free the writer it protected: repeat single-op
        # passes until nothing more goes.
        if chunk == 1 and not dropped:
            return ops
        chunk = max(1, chunk // 2)


def _explain(
    number: int, partitions: int, failing: Sequence[Operation], model: Model, budget: _Budget
) -> str:
    lines = [
        f"not linearizable: partition {number} of {partitions} "
        f"({model.describe_partition(failing)}); a failing sub-history of {len(failing)} ops:"
    ]
    for op in sorted(failing, key=lambda op: (op.call_ns, op.op_id)):
        returned = "?" if op.return_ns is None else str(op.return_ns)
        lines.append(
            f"  op {op.op_id} client {op.client_id} [{op.call_ns}, {returned}] ns: "
            f"{model.describe(op)}"
        )
    lines.extend("  " + hint for hint in model.hints(failing))
    try:
        failure = _search(failing, model, _Budget(budget.deadline, budget.max_states))
    except _OutOfBudget:
        failure = None
    if failure is not None:
        blocked = failing[failure.blocked]
        prefix = ", ".join(f"op {failing[i].op_id}" for i in failure.prefix) or "nothing"
        lines.append(
            f"  the longest order found linearizes {prefix} (state then: "
            f"{model.describe_state(failure.state)}); op {blocked.op_id} must take effect "
            f"before it returns at {blocked.return_ns} ns, and no remaining order lets it"
        )
    return "\n".join(lines)
