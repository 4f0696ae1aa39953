"""Sequential specifications for the linearizability checker.

A model is a pure state machine: ``step`` answers whether an op with this input
could have produced this output from this state, and the next state. States must
be hashable and immutable (the checker caches them). ``partition`` splits a
history into independent parts (P-compositionality): ops on disjoint keys never
constrain each other, so each part is checked alone.

Inputs (tuples):
- register ops: ``("get", key)`` -> value or None; ``("put", key, value)`` -> None;
  ``("cas", key, expected, new)`` -> bool (expected None means "absent");
  ``("delete", key)`` -> None, or the number of keys deleted (0 or 1).
- ``("txn", reads, writes)`` with ``reads`` a tuple of keys and ``writes`` a tuple of
  (key, value) pairs -> dict of key -> value-or-None, read before the txn's writes.
- ``("ctxn", guard, writes)``, a guarded multi-key write (etcd's txn with value compares):
  ``guard`` a tuple of (key, expected value-or-None) pairs -> bool, whether every compare
  held and so the writes applied. Unknown, it applies only where the guard holds.
- ``("append", key, element)`` -> None; ``("read", key)`` -> tuple of elements.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from raftkv.check.history import Operation

State = Hashable


class Model(Protocol):
    def init(self) -> State: ...

    def step(self, state: State, input: object, output: object, known: bool) -> State | None:
        """The state after the op, or None if the op cannot return ``output`` here.

        When ``known`` is False the output is ignored (the op's outcome is unknown).
        """
        ...

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]: ...

    def describe(self, op: Operation) -> str: ...

    def describe_state(self, state: State) -> str: ...

    def describe_partition(self, ops: Sequence[Operation]) -> str: ...

    def observed_by(self, writer: Operation, reader: Operation) -> bool:
        """Did ``reader`` observe something only ``writer`` could have written?

        The shrinker keeps such writers, so a stale read stays a stale read rather
        than turning into a read of a value never written.
        """
        ...

    def tokens(self, op: Operation) -> Tokens:
        """What ``op`` may leave for others to read, and what it read: ``observed_by(w, r)``
        is ``w is not r`` and the two sets meeting, which lets the shrinker count instead of
        asking every pair."""
        ...

    def hints(self, ops: Sequence[Operation]) -> list[str]:
        """Plain reasons, if the model can see any, why these ops have no linearization."""
        ...

    def witnesses(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        """Small sub-histories the model can see are not linearizable whatever the other ops
        did (a read of a value every write of which was overwritten before the read was
        called). The checker prefers them to shrinking a long history."""
        ...


@dataclass(frozen=True)
class Tokens:
    written: frozenset[Hashable]
    observed: frozenset[Hashable]


class ModelInputError(ValueError):
    """An op's input is not one this model understands."""


def _keys_of(input: object) -> tuple[Hashable, ...]:
    match input:
        case ("get" | "delete" | "read", key):
            return (key,)
        case ("put" | "append", key, _):
            return (key,)
        case ("cas", key, _, _):
            return (key,)
        case ("txn", reads, writes):
            assert isinstance(reads, tuple) and isinstance(writes, tuple)
            return tuple(reads) + tuple(key for key, _ in writes)
        case ("ctxn", guard, writes):
            assert isinstance(guard, tuple) and isinstance(writes, tuple)
            return tuple(key for key, _ in guard) + tuple(key for key, _ in writes)
    raise ModelInputError(f"unknown input {input!r}")


def _partition_by_shared_keys(ops: Sequence[Operation]) -> list[list[Operation]]:
    """Connected components of ops linked by the keys they touch (union-find on keys)."""
    parent: dict[Hashable, Hashable] = {}

    def root(key: Hashable) -> Hashable:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for op in ops:
        keys = _keys_of(op.input)
        for key in keys:
            parent.setdefault(key, key)
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    groups: dict[object, list[Operation]] = {}
    for op in ops:
        keys = _keys_of(op.input)
        # An op touching no key constrains nothing else: it is its own part.
        group = root(keys[0]) if keys else ("no keys", op.op_id)
        groups.setdefault(group, []).append(op)
    return list(groups.values())


def _describe_output(op: Operation) -> str:
    return f"-> {op.output!r}" if op.known else "-> ? (outcome unknown)"


def _keys_label(ops: Sequence[Operation]) -> str:
    keys = sorted({repr(key) for op in ops for key in _keys_of(op.input)})
    return "key " + keys[0] if len(keys) == 1 else "keys " + ", ".join(keys)


# --- Register (single key) ops, shared by RegisterModel and KVTxnModel --------

_ABSENT = None


def _register_step(
    value: object, input: tuple[object, ...], output: object, known: bool
) -> tuple[bool, object]:
    """(allowed, value after) for a register op on one key holding ``value``."""
    match input:
        case ("get", _):
            return (not known or output == value), value
        case ("put", _, new):
            return (not known or output is None), new
        case ("cas", _, expected, new):
            swapped = value == expected
            if known and output != swapped:
                return False, value
            return True, new if swapped else value
        case ("delete", _):
            deleted = 0 if value is _ABSENT else 1
            allowed = not known or output is None or output == deleted
            return allowed, _ABSENT
    raise ModelInputError(f"not a register op: {input!r}")


def _writes_of(op: Operation, key: Hashable) -> list[object]:
    """Values this op may have written to ``key`` (a failed CAS writes nothing)."""
    match op.input:
        case ("put", k, value) if k == key:
            return [value]
        case ("cas", k, _, new) if k == key and (not op.known or op.output is True):
            return [new]
        case ("delete", k) if k == key:
            return [_ABSENT]
        case ("txn", _, writes):
            assert isinstance(writes, tuple)
            return [value for k, value in writes if k == key]
        case ("ctxn", _, writes) if not op.known or op.output is True:
            assert isinstance(writes, tuple)
            return [value for k, value in writes if k == key]
    return []


def _reads_of(op: Operation) -> list[tuple[Hashable, object]]:
    """(key, value) pairs a completed op observed."""
    if not op.known:
        return []
    match op.input:
        case ("get", key):
            return [(key, op.output)]
        case ("txn", reads, _) if isinstance(op.output, dict):
            assert isinstance(reads, tuple)
            return [(key, op.output.get(key)) for key in reads]
        # A compare that held observed the value it compared against.
        case ("cas", key, expected, _) if op.output is True:
            return [(key, expected)]
        case ("ctxn", guard, _) if op.output is True:
            assert isinstance(guard, tuple)
            return list(guard)
    return []


@dataclass
class _WriteIndex:
    """Who wrote what, for the hints and witnesses: near-linear where a scan of the whole
    history per read (and per writer) was cubic, minutes for a few thousand operations."""

    writers_of: dict[tuple[Hashable, object], list[Operation]]
    completed_writes: dict[Hashable, list[Operation]]  # per key, by call time
    calls_of: dict[Hashable, list[int]]  # the call times of completed_writes

    @classmethod
    def of(cls, ops: Sequence[Operation]) -> _WriteIndex:
        writers_of: dict[tuple[Hashable, object], list[Operation]] = {}
        completed_writes: dict[Hashable, list[Operation]] = {}
        for op in ops:
            for key in _keys_touched(op):
                values = _writes_of(op, key)
                for value in values:
                    writers_of.setdefault((key, value), []).append(op)
                if values and op.return_ns is not None:
                    completed_writes.setdefault(key, []).append(op)
        calls_of: dict[Hashable, list[int]] = {}
        for key, writes in completed_writes.items():
            writes.sort(key=lambda o: o.call_ns)
            calls_of[key] = [o.call_ns for o in writes]
        return cls(writers_of, completed_writes, calls_of)

    def writers(self, key: Hashable, value: object, besides: Operation) -> list[Operation]:
        return [w for w in self.writers_of.get((key, value), []) if w is not besides]

    def overwriter(
        self, writer: Operation, read: Operation, key: Hashable, value: object
    ) -> Operation | None:
        """A completed write of another value to ``key``, called after ``writer`` returned
        and returned before ``read`` was called: ``writer``'s value was surely gone."""
        if writer.return_ns is None:
            return None
        writes = self.completed_writes.get(key, [])
        start = bisect.bisect_right(self.calls_of.get(key, []), writer.return_ns)
        for op in writes[start:]:
            if op.call_ns >= read.call_ns:
                break
            assert op.return_ns is not None
            if op.return_ns < read.call_ns and all(v != value for v in _writes_of(op, key)):
                return op
        return None


def _register_hints(ops: Sequence[Operation]) -> list[str]:
    """Reads whose value was never written, or was certainly overwritten before the read."""
    index = _WriteIndex.of(ops)
    hints: list[str] = []
    for read in ops:
        for key, value in _reads_of(read):
            writers = index.writers(key, value, besides=read)
            if not writers:
                if value is not _ABSENT:
                    hints.append(
                        f"op {read.op_id} read {key!r} = {value!r}, "
                        f"but no op in the history writes {value!r} to {key!r}"
                    )
                continue
            overwritten = [index.overwriter(w, read, key, value) for w in writers]
            if all(later is not None for later in overwritten) and value is not _ABSENT:
                pairs = ", ".join(
                    f"op {w.op_id} by op {later.op_id}"
                    for w, later in zip(writers, overwritten, strict=True)
                    if later is not None
                )
                hints.append(
                    f"op {read.op_id} read {key!r} = {value!r}, but the only writes of "
                    f"{value!r} were overwritten before the read was called ({pairs})"
                )
    return hints


def _stale_read_witnesses(ops: Sequence[Operation]) -> list[list[Operation]]:
    """[writer(s), overwriter(s), read] for each read of a value every writer of which was
    surely overwritten before the read was called (values are unique per write, so nothing
    else can explain the read)."""
    index = _WriteIndex.of(ops)
    witnesses: list[list[Operation]] = []
    for read in ops:
        for key, value in _reads_of(read):
            writers = index.writers(key, value, besides=read)
            if value is _ABSENT or not writers:
                continue
            later = [index.overwriter(w, read, key, value) for w in writers]
            if all(op is not None for op in later):
                chosen = {id(op): op for op in [*writers, *later, read] if op is not None}
                _add_observed_writers(chosen, index.writers_of)
                witnesses.append(sorted(chosen.values(), key=lambda o: (o.call_ns, o.op_id)))
    return sorted(witnesses, key=len)


def _add_observed_writers(
    chosen: dict[int, Operation], writers_of: dict[tuple[Hashable, object], list[Operation]]
) -> None:
    """Close the witness: a CAS in it that succeeded on "x" brings the writes of "x" (and so
    on), or it would fail for the wrong reason (a CAS from nothing)."""
    pending = list(chosen.values())
    while pending:
        op = pending.pop()
        for key, value in _reads_of(op):
            if value is _ABSENT:
                continue
            for writer in writers_of.get((key, value), []):
                if id(writer) not in chosen and writer is not op:
                    chosen[id(writer)] = writer
                    pending.append(writer)


def _keys_touched(op: Operation) -> tuple[Hashable, ...]:
    try:
        return _keys_of(op.input)
    except ModelInputError:
        return ()


def _observed_through(
    tokens: Callable[[Operation], Tokens], writer: Operation, reader: Operation
) -> bool:
    """``observed_by`` for every model: one definition, the one the shrinker counts."""
    return writer is not reader and not tokens(writer).written.isdisjoint(tokens(reader).observed)


def _register_tokens(op: Operation) -> Tokens:
    written = {
        (key, value)
        for key in _keys_touched(op)
        for value in _writes_of(op, key)
        if value is not _ABSENT
    }
    observed = {(key, value) for key, value in _reads_of(op) if value is not _ABSENT}
    return Tokens(frozenset(written), frozenset(observed))


class RegisterModel:
    """One register per key: get, put, cas, delete.

    State: a 1-tuple of the key's value (None = absent), never None itself, since
    ``step`` returns None for "not allowed".
    """

    def init(self) -> State:
        return (_ABSENT,)

    def step(self, state: State, input: object, output: object, known: bool) -> State | None:
        assert isinstance(state, tuple) and isinstance(input, tuple)
        allowed, after = _register_step(state[0], input, output, known)
        return (after,) if allowed else None

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _partition_by_shared_keys(ops)

    def describe(self, op: Operation) -> str:
        assert isinstance(op.input, tuple)
        name, *args = op.input
        return f"{name}({', '.join(repr(a) for a in args)}) {_describe_output(op)}"

    def describe_state(self, state: State) -> str:
        assert isinstance(state, tuple)
        return "absent" if state[0] is _ABSENT else repr(state[0])

    def describe_partition(self, ops: Sequence[Operation]) -> str:
        return _keys_label(ops)

    def observed_by(self, writer: Operation, reader: Operation) -> bool:
        return _observed_through(_register_tokens, writer, reader)

    def tokens(self, op: Operation) -> Tokens:
        return _register_tokens(op)

    def hints(self, ops: Sequence[Operation]) -> list[str]:
        return _register_hints(ops)

    def witnesses(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _stale_read_witnesses(ops)


class KVTxnModel:
    """Several keys, with atomic multi-key txns and the register ops.

    State: a frozenset of (key, value) pairs for the present keys.
    """

    def init(self) -> State:
        return frozenset()

    def step(self, state: State, input: object, output: object, known: bool) -> State | None:
        assert isinstance(state, frozenset) and isinstance(input, tuple)
        values: dict[Hashable, object] = dict(state)
        if input[0] == "txn":
            _, reads, writes = input
            assert isinstance(reads, tuple) and isinstance(writes, tuple)
            if known:
                observed = {key: values.get(key) for key in reads}
                if output != observed:
                    return None
            for key, value in writes:
                values[key] = value
        elif input[0] == "ctxn":
            _, guard, writes = input
            assert isinstance(guard, tuple) and isinstance(writes, tuple)
            holds = all(values.get(key) == expected for key, expected in guard)
            if known and output != holds:
                return None
            if holds:
                values.update(writes)
        else:
            key = _keys_of(input)[0]
            allowed, after = _register_step(values.get(key), input, output, known)
            if not allowed:
                return None
            values[key] = after
        return frozenset((k, v) for k, v in values.items() if v is not _ABSENT)

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _partition_by_shared_keys(ops)

    def describe(self, op: Operation) -> str:
        assert isinstance(op.input, tuple)
        if op.input[0] == "txn":
            _, reads, writes = op.input
            return f"txn(reads={reads!r}, writes={writes!r}) {_describe_output(op)}"
        if op.input[0] == "ctxn":
            _, guard, writes = op.input
            return f"txn(if {guard!r} then {writes!r}) {_describe_output(op)}"
        return RegisterModel().describe(op)

    def describe_state(self, state: State) -> str:
        assert isinstance(state, frozenset)
        return "{" + ", ".join(sorted(f"{k!r}: {v!r}" for k, v in state)) + "}"

    def describe_partition(self, ops: Sequence[Operation]) -> str:
        return _keys_label(ops)

    def observed_by(self, writer: Operation, reader: Operation) -> bool:
        return _observed_through(_register_tokens, writer, reader)

    def tokens(self, op: Operation) -> Tokens:
        return _register_tokens(op)

    def hints(self, ops: Sequence[Operation]) -> list[str]:
        return _register_hints(ops) + _torn_txn_hints(ops)

    def witnesses(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _stale_read_witnesses(ops)


def _torn_txn_hints(ops: Sequence[Operation]) -> list[str]:
    """A read that sees some, not all, of one multi-key write whose values are unique.

    Only readers of two keys or more can see part of a write: they are indexed by key once,
    so a writer meets only the readers of its keys (pairing every writer with every op, and
    listing the op's reads each time, took minutes on a 5,000-op failing partition)."""
    readers_by_key: dict[Hashable, list[int]] = {}
    reads: list[dict[Hashable, object]] = []
    for position, reader in enumerate(ops):
        seen = dict(_reads_of(reader))
        reads.append(seen)
        if len(seen) >= 2:
            for key in seen:
                readers_by_key.setdefault(key, []).append(position)
    hints: list[str] = []
    for writer in ops:
        if not (isinstance(writer.input, tuple) and writer.input[0] in ("txn", "ctxn")):
            continue
        if writer.input[0] == "ctxn" and writer.known and writer.output is not True:
            continue  # its guard failed: it wrote nothing
        writes = writer.input[2]
        assert isinstance(writes, tuple)
        if len(writes) < 2:
            continue
        candidates = {p for key, _ in writes for p in readers_by_key.get(key, ())}
        for position in sorted(candidates):
            seen = reads[position]
            keys = [key for key, _ in writes if key in seen]
            hits = [key for key, value in writes if key in seen and seen[key] == value]
            if len(keys) >= 2 and 0 < len(hits) < len(keys):
                hints.append(
                    f"op {ops[position].op_id} saw op {writer.op_id}'s write to "
                    f"{', '.join(repr(k) for k in hits)} but not to "
                    f"{', '.join(repr(k) for k in keys if k not in hits)} (a torn transaction, "
                    "unless another op rewrote those keys in between)"
                )
    return hints


class ListAppendModel:
    """One append-only list per key. State: the tuple of elements."""

    def init(self) -> State:
        return ()

    def step(self, state: State, input: object, output: object, known: bool) -> State | None:
        assert isinstance(state, tuple) and isinstance(input, tuple)
        match input:
            case ("append", _, element):
                if known and output is not None:
                    return None
                return (*state, element)
            case ("read", _):
                return state if not known or output == state else None
        raise ModelInputError(f"not a list-append op: {input!r}")

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _partition_by_shared_keys(ops)

    def describe(self, op: Operation) -> str:
        return RegisterModel().describe(op)

    def describe_state(self, state: State) -> str:
        return repr(state)

    def describe_partition(self, ops: Sequence[Operation]) -> str:
        return _keys_label(ops)

    def observed_by(self, writer: Operation, reader: Operation) -> bool:
        return _observed_through(self.tokens, writer, reader)

    def tokens(self, op: Operation) -> Tokens:
        written: frozenset[Hashable] = frozenset()
        observed: frozenset[Hashable] = frozenset()
        if _is(op, "append"):
            assert isinstance(op.input, tuple)
            written = frozenset({(op.input[1], op.input[2])})
        elif _is(op, "read") and op.known and isinstance(op.output, tuple):
            assert isinstance(op.input, tuple)
            observed = frozenset((op.input[1], element) for element in op.output)
        return Tokens(written, observed)

    def hints(self, ops: Sequence[Operation]) -> list[str]:
        appended = {op.input[2] for op in ops if _is(op, "append")}  # type: ignore[index]
        hints: list[str] = []
        reads = [op for op in ops if _is(op, "read") and op.known]
        for read in reads:
            assert isinstance(read.output, tuple)
            stray = [e for e in read.output if e not in appended]
            if stray:
                hints.append(f"op {read.op_id} read elements never appended: {stray!r}")
        for first, second in _pairs(reads):
            assert isinstance(first.output, tuple) and isinstance(second.output, tuple)
            short, long = sorted((first.output, second.output), key=len)
            if long[: len(short)] != short:
                hints.append(
                    f"ops {first.op_id} and {second.op_id} read lists where neither is a "
                    f"prefix of the other: {first.output!r} vs {second.output!r}"
                )
        return hints

    def witnesses(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return []  # the hints name list anomalies; no direct witness yet


def _is(op: Operation, name: str) -> bool:
    return isinstance(op.input, tuple) and bool(op.input) and op.input[0] == name


def _pairs(items: Sequence[Operation]) -> Iterable[tuple[Operation, Operation]]:
    for i, first in enumerate(items):
        for second in items[i + 1 :]:
            yield first, second
