"""Histories of client operations, as the linearizability checker reads them.

An operation is one client request: its input, the interval [call_ns, return_ns]
(closed: an op that returned at t overlaps one called at t), and its output. An op
whose outcome is unknown (timeout, crashed client) has ``return_ns = None``: it may
have taken effect at any time after its call, or never, and its output means nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace


class HistoryError(ValueError):
    """A history is malformed: an op returns before its call, an id repeats, ..."""


@dataclass(frozen=True, slots=True)
class Operation:
    op_id: int
    client_id: int
    call_ns: int
    return_ns: int | None  # None: outcome unknown (may apply any time after the call, or never)
    input: object
    output: object  # ignored when return_ns is None

    @property
    def known(self) -> bool:
        return self.return_ns is not None

    def with_unknown_outcome(self) -> Operation:
        return replace(self, return_ns=None, output=None)


def validate(history: Sequence[Operation]) -> None:
    seen: set[int] = set()
    for op in history:
        if op.op_id in seen:
            raise HistoryError(f"op id {op.op_id} appears twice")
        seen.add(op.op_id)
        if op.return_ns is not None and op.return_ns < op.call_ns:
            raise HistoryError(
                f"op {op.op_id} returns at {op.return_ns} ns, before its call at {op.call_ns} ns"
            )


@dataclass(slots=True)
class HistoryRecorder:
    """Builds a history from invoke/complete events, e.g. in a test client.

    ``invoke`` returns the op id; ``complete`` records the output; ``finish`` turns
    every op still pending (timed out, crashed) into an unknown-outcome op.
    """

    _next_op_id: int = 0
    _pending: dict[int, tuple[int, int, object]] = field(default_factory=dict)
    _done: list[Operation] = field(default_factory=list)

    def invoke(self, client_id: int, input: object, call_ns: int) -> int:
        op_id = self._next_op_id
        self._next_op_id += 1
        self._pending[op_id] = (client_id, call_ns, input)
        return op_id

    def complete(self, op_id: int, output: object, return_ns: int) -> None:
        client_id, call_ns, input = self._pending.pop(op_id)
        self._done.append(Operation(op_id, client_id, call_ns, return_ns, input, output))

    def abandon(self, op_id: int) -> None:
        """The outcome will never be known (timeout, connection lost)."""
        client_id, call_ns, input = self._pending.pop(op_id)
        self._done.append(Operation(op_id, client_id, call_ns, None, input, None))

    def finish(self) -> list[Operation]:
        for op_id in list(self._pending):
            self.abandon(op_id)
        return sorted(self._done, key=lambda op: (op.call_ns, op.op_id))


def from_events(
    events: Iterable[tuple[str, int, int, int, object]],
) -> list[Operation]:
    """Ops from ``(kind, op_id, client_id, time_ns, payload)`` events.

    ``kind`` is "invoke" (payload = input), "ok" (payload = output) or "unknown"
    (payload ignored). Invocations never completed become unknown-outcome ops.
    """
    pending: dict[int, tuple[int, int, object]] = {}
    done: list[Operation] = []
    for kind, op_id, client_id, time_ns, payload in events:
        if kind == "invoke":
            if op_id in pending:
                raise HistoryError(f"op {op_id} invoked twice")
            pending[op_id] = (client_id, time_ns, payload)
            continue
        if op_id not in pending:
            raise HistoryError(f"op {op_id} completed but never invoked")
        client, call_ns, input = pending.pop(op_id)
        if kind == "ok":
            done.append(Operation(op_id, client, call_ns, time_ns, input, payload))
        elif kind == "unknown":
            done.append(Operation(op_id, client, call_ns, None, input, None))
        else:
            raise HistoryError(f"unknown event kind {kind!r}")
    for op_id, (client, call_ns, input) in pending.items():
        done.append(Operation(op_id, client, call_ns, None, input, None))
    history = sorted(done, key=lambda op: (op.call_ns, op.op_id))
    validate(history)
    return history
