"""The linearizability checker against hand-written histories, generated correct
executions, and a brute-force reference on small random histories."""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import combinations, permutations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.check.history import HistoryError, HistoryRecorder, Operation, from_events
from raftkv.check.linearizability import CheckResult, Verdict, check
from raftkv.check.models import KVTxnModel, ListAppendModel, Model, RegisterModel

REGISTER = RegisterModel()
TXN = KVTxnModel()
LIST = ListAppendModel()


def op(
    op_id: int,
    call_ns: int,
    return_ns: int | None,
    input: object,
    output: object = None,
    client_id: int | None = None,
) -> Operation:
    client = op_id if client_id is None else client_id
    return Operation(op_id, client, call_ns, return_ns, input, output)


def verdict(history: Sequence[Operation], model: Model) -> Verdict:
    return check(history, model).verdict


# --- Hand-written histories ------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([], REGISTER)
    assert (result.verdict, result.partitions, result.operations) == (Verdict.OK, 0, 0)


def test_sequential_put_then_get_is_ok_and_reading_the_initial_absent_value_is_ok() -> None:
    history = [
        op(1, 0, 1, ("get", "k"), None),
        op(2, 2, 3, ("put", "k", 1)),
        op(3, 4, 5, ("get", "k"), 1),
    ]
    assert verdict(history, REGISTER) is Verdict.OK


def test_stale_read_is_a_violation_with_a_readable_explanation() -> None:
    history = [
        op(1, 0, 10, ("put", "k", 1)),
        op(2, 20, 30, ("put", "k", 2)),
        op(3, 40, 50, ("get", "k"), 1),
        op(4, 0, 60, ("put", "other", 9)),  # another partition, irrelevant
    ]
    result = check(history, REGISTER)
    assert result.verdict is Verdict.VIOLATION
    assert result.partitions == 2 and result.operations == 4
    assert {o.op_id for o in result.failing} == {1, 2, 3}
    assert "key 'k'" in result.explanation
    assert "only writes of 1 were overwritten" in result.explanation
    assert "get('k') -> 1" in result.explanation


def test_the_same_read_overlapping_the_second_write_is_ok() -> None:
    history = [
        op(1, 0, 10, ("put", "k", 1)),
        op(2, 20, 45, ("put", "k", 2)),
        op(3, 40, 50, ("get", "k"), 1),
    ]
    assert verdict(history, REGISTER) is Verdict.OK


def test_touching_intervals_overlap_a_return_at_t_and_a_call_at_t() -> None:
    # put(2) returns at 20 and the get is called at 20: closed intervals overlap,
    # so the get may come before the put; one ns later it may not.
    touching = [
        op(1, 0, 5, ("put", "k", 1)),
        op(2, 10, 20, ("put", "k", 2)),
        op(3, 20, 30, ("get", "k"), 1),
    ]
    assert verdict(touching, REGISTER) is Verdict.OK
    apart = [*touching[:2], op(3, 21, 30, ("get", "k"), 1)]
    assert verdict(apart, REGISTER) is Verdict.VIOLATION


def test_lost_write_a_read_after_a_completed_write_sees_the_old_value() -> None:
    history = [
        op(1, 0, 10, ("put", "k", "old")),
        op(2, 11, 20, ("put", "k", "new")),
        op(3, 25, 30, ("get", "k"), "old"),
        op(4, 31, 40, ("get", "k"), "new"),
    ]
    result = check(history, REGISTER)
    assert result.verdict is Verdict.VIOLATION
    assert 3 in {o.op_id for o in result.failing}


def test_read_of_a_value_never_written_is_a_violation_of_one_op() -> None:
    history = [op(1, 0, 10, ("put", "k", 1)), op(2, 20, 30, ("get", "k"), 7)]
    result = check(history, REGISTER)
    assert result.verdict is Verdict.VIOLATION
    assert [o.op_id for o in result.failing] == [2]
    assert "no op in the history writes 7" in result.explanation


def test_double_cas_success_from_the_same_expected_value_is_a_violation() -> None:
    history = [
        op(1, 0, 10, ("put", "k", 0)),
        op(2, 20, 40, ("cas", "k", 0, 1), True),
        op(3, 25, 45, ("cas", "k", 0, 2), True),
    ]
    assert verdict(history, REGISTER) is Verdict.VIOLATION
    one_wins = [*history[:2], op(3, 25, 45, ("cas", "k", 0, 2), False)]
    assert verdict(one_wins, REGISTER) is Verdict.OK


def test_delete_and_its_count() -> None:
    history = [
        op(1, 0, 1, ("put", "k", 1)),
        op(2, 2, 3, ("delete", "k"), 1),
        op(3, 4, 5, ("delete", "k"), 0),
        op(4, 6, 7, ("get", "k"), None),
    ]
    assert verdict(history, REGISTER) is Verdict.OK
    wrong_count = [*history[:2], op(3, 4, 5, ("delete", "k"), 1)]
    assert verdict(wrong_count, REGISTER) is Verdict.VIOLATION


def test_overlapping_ops_with_one_consistent_order_are_ok() -> None:
    # Three concurrent writes; reads pin the order to 3, 1, 2.
    history = [
        op(1, 0, 100, ("put", "k", 1)),
        op(2, 0, 100, ("put", "k", 2)),
        op(3, 0, 100, ("put", "k", 3)),
        op(4, 10, 20, ("get", "k"), 3),
        op(5, 30, 40, ("get", "k"), 1),
        op(6, 110, 120, ("get", "k"), 2),
    ]
    assert verdict(history, REGISTER) is Verdict.OK
    impossible = [*history[:5], op(6, 110, 120, ("get", "k"), 3)]
    assert verdict(impossible, REGISTER) is Verdict.VIOLATION


def test_timed_out_write_that_later_shows_up_is_ok() -> None:
    history = [op(1, 0, None, ("put", "k", 5)), op(2, 1000, 1010, ("get", "k"), 5)]
    assert verdict(history, REGISTER) is Verdict.OK


def test_timed_out_write_that_never_shows_up_is_ok() -> None:
    history = [op(1, 0, None, ("put", "k", 5)), op(2, 1000, 1010, ("get", "k"), None)]
    assert verdict(history, REGISTER) is Verdict.OK


def test_timed_out_write_cannot_take_effect_before_its_call() -> None:
    history = [op(1, 0, 10, ("get", "k"), 5), op(2, 20, None, ("put", "k", 5))]
    assert verdict(history, REGISTER) is Verdict.VIOLATION


def test_timed_out_write_cannot_flicker() -> None:
    # Seen, then unseen: the unknown write took effect once, and nothing overwrote it.
    history = [
        op(1, 0, None, ("put", "k", 5)),
        op(2, 10, 20, ("get", "k"), 5),
        op(3, 30, 40, ("get", "k"), None),
    ]
    assert verdict(history, REGISTER) is Verdict.VIOLATION


def test_unknown_outcome_ignores_the_recorded_output() -> None:
    # An unknown CAS whose recorded output says "failed" may still have swapped.
    history = [
        op(1, 0, 1, ("put", "k", 0)),
        Operation(2, 2, 2, None, ("cas", "k", 0, 1), False),
        op(3, 10, 11, ("get", "k"), 1),
    ]
    assert verdict(history, REGISTER) is Verdict.OK


def test_non_atomic_txn_a_reader_sees_half_of_a_two_key_write() -> None:
    history = [
        op(1, 0, 10, ("txn", (), (("a", 1), ("b", 1))), {}),
        op(2, 5, 15, ("txn", ("a", "b"), ()), {"a": 1, "b": None}),
    ]
    result = check(history, TXN)
    assert result.verdict is Verdict.VIOLATION
    assert "torn transaction" in result.explanation
    whole = [history[0], op(2, 5, 15, ("txn", ("a", "b"), ()), {"a": 1, "b": 1})]
    assert verdict(whole, TXN) is Verdict.OK
    none = [history[0], op(2, 5, 15, ("txn", ("a", "b"), ()), {"a": None, "b": None})]
    assert verdict(none, TXN) is Verdict.OK


def test_txn_reads_see_the_state_before_its_own_writes() -> None:
    history = [
        op(1, 0, 1, ("put", "a", 1)),
        op(2, 2, 3, ("txn", ("a",), (("a", 2),)), {"a": 1}),
        op(3, 4, 5, ("get", "a"), 2),
    ]
    assert verdict(history, TXN) is Verdict.OK


def test_guarded_transfers_that_conserve_the_total_are_ok() -> None:
    # Two accounts of 10: a transfer of 3 from a to b, then a stale one that fails its guard.
    history = [
        op(1, 0, 1, ("txn", (), (("a", 10), ("b", 10))), {}),
        op(2, 2, 3, ("ctxn", (("a", 10), ("b", 10)), (("a", 7), ("b", 13))), True),
        op(3, 4, 5, ("ctxn", (("a", 10), ("b", 10)), (("a", 5), ("b", 15))), False),
        op(4, 6, 7, ("txn", ("a", "b"), ()), {"a": 7, "b": 13}),
    ]
    assert verdict(history, TXN) is Verdict.OK


def test_two_guarded_transfers_from_the_same_balances_cannot_both_succeed() -> None:
    history = [
        op(1, 0, 1, ("txn", (), (("a", 10), ("b", 10))), {}),
        op(2, 2, 5, ("ctxn", (("a", 10), ("b", 10)), (("a", 7), ("b", 13))), True),
        op(3, 2, 5, ("ctxn", (("a", 10), ("b", 10)), (("a", 5), ("b", 15))), True),
    ]
    assert verdict(history, TXN) is Verdict.VIOLATION


def test_an_unknown_guarded_transfer_applies_only_where_its_guard_holds() -> None:
    # The unknown transfer's guard (a=10) no longer holds after op 2, so it cannot be the
    # reason a later read sees a=4.
    base = [
        op(1, 0, 1, ("txn", (), (("a", 10), ("b", 10))), {}),
        op(2, 2, 3, ("ctxn", (("a", 10), ("b", 10)), (("a", 7), ("b", 13))), True),
        op(3, 4, None, ("ctxn", (("a", 10), ("b", 10)), (("a", 4), ("b", 16)))),
    ]
    assert verdict([*base, op(4, 6, 7, ("txn", ("a", "b"), ()), {"a": 4, "b": 16})], TXN) is (
        Verdict.VIOLATION
    )
    assert verdict([*base, op(4, 6, 7, ("txn", ("a", "b"), ()), {"a": 7, "b": 13})], TXN) is (
        Verdict.OK
    )


def test_a_reader_seeing_half_of_a_guarded_transfer_is_a_torn_transaction() -> None:
    history = [
        op(1, 0, 1, ("txn", (), (("a", 10), ("b", 10))), {}),
        op(2, 2, 5, ("ctxn", (("a", 10), ("b", 10)), (("a", 7), ("b", 13))), True),
        op(3, 3, 6, ("txn", ("a", "b"), ()), {"a": 7, "b": 10}),
    ]
    result = check(history, TXN)
    assert result.verdict is Verdict.VIOLATION
    assert "torn transaction" in result.explanation


def test_shrinking_keeps_the_write_a_successful_cas_compared_against() -> None:
    # The stale read (op 4) is the violation; the CAS that succeeded on "x" must keep the
    # put of "x" in the shrunk history, or the CAS alone would look like the culprit.
    history = [
        op(1, 0, 1, ("put", "k", "x")),
        op(2, 2, 3, ("cas", "k", "x", "y"), True),
        op(3, 4, 5, ("put", "k", "z")),
        op(4, 6, 7, ("get", "k"), "y"),
    ]
    result = check(history, REGISTER)
    assert result.verdict is Verdict.VIOLATION
    ids = {o.op_id for o in result.failing}
    assert 2 not in ids or 1 in ids, result.explanation
    assert 4 in ids, result.explanation


def test_txn_partitions_are_connected_components_of_keys() -> None:
    history = [
        op(1, 0, 1, ("put", "a", 1)),
        op(2, 0, 1, ("put", "b", 1)),
        op(3, 0, 1, ("put", "c", 1)),
        op(4, 2, 3, ("txn", ("a",), (("b", 2),)), {"a": 1}),
    ]
    result = check(history, TXN)
    assert (result.verdict, result.partitions) == (Verdict.OK, 2)


def test_list_append_reads_must_be_prefix_consistent() -> None:
    history = [
        op(1, 0, 10, ("append", "l", 1)),
        op(2, 0, 10, ("append", "l", 2)),
        op(3, 20, 30, ("read", "l"), (2, 1)),
    ]
    assert verdict(history, LIST) is Verdict.OK
    torn = [*history, op(4, 20, 30, ("read", "l"), (1, 2))]
    result = check(torn, LIST)
    assert result.verdict is Verdict.VIOLATION
    assert "neither is a prefix" in result.explanation
    phantom = [*history[:2], op(3, 20, 30, ("read", "l"), (1, 3))]
    assert "never appended" in check(phantom, LIST).explanation


def test_malformed_histories_are_refused() -> None:
    with pytest.raises(HistoryError):
        check([op(1, 10, 5, ("get", "k"))], REGISTER)
    with pytest.raises(HistoryError):
        check([op(1, 0, 5, ("get", "k")), op(1, 6, 7, ("get", "k"))], REGISTER)


def test_history_builders() -> None:
    recorder = HistoryRecorder()
    first = recorder.invoke(1, ("put", "k", 1), call_ns=0)
    second = recorder.invoke(2, ("get", "k"), call_ns=1)
    recorder.complete(second, 1, return_ns=5)
    recorder.invoke(3, ("put", "k", 2), call_ns=6)  # never completes
    history = recorder.finish()
    assert [(o.op_id, o.return_ns) for o in history] == [(first, None), (second, 5), (2, None)]
    assert verdict(history, REGISTER) is Verdict.OK
    events: list[tuple[str, int, int, int, object]] = [
        ("invoke", 1, 1, 0, ("put", "k", 1)),
        ("invoke", 2, 2, 1, ("get", "k")),
        ("ok", 1, 1, 3, None),
        ("unknown", 2, 2, 4, None),
        ("invoke", 3, 3, 5, ("get", "k")),
    ]
    built = from_events(events)
    assert [(o.op_id, o.return_ns, o.output) for o in built] == [
        (1, 3, None),
        (2, None, None),
        (3, None, None),
    ]


# --- Bounds ------------------------------------------------------------------------


def _adversarial_history(writers: int) -> list[Operation]:
    """Many concurrent writes and a concurrent read of a value no one wrote: the search
    must try every subset of writes before it can say no."""
    history = [op(i, 0, 1000, ("put", "k", i)) for i in range(writers)]
    history.append(op(writers, 0, 1000, ("get", "k"), -1))
    return history


def _sequential_puts_and_gets(count: int) -> list[Operation]:
    """Ops 1..count on one key, one after another: odd ones put "v<id>", even ones get the
    latest value (a linearizable history)."""
    history: list[Operation] = []
    latest: str | None = None
    for op_id in range(1, count + 1):
        call = op_id * 10
        if op_id % 2:
            latest = f"v{op_id}"
            history.append(op(op_id, call, call + 5, ("put", "k", latest)))
        else:
            history.append(op(op_id, call, call + 5, ("get", "k"), latest))
    return history


def test_tiny_time_budget_on_a_huge_adversarial_history_gives_unknown_quickly() -> None:
    started = time.monotonic()
    result = check(_adversarial_history(60), REGISTER, time_budget_s=0.2)
    assert result.verdict is Verdict.UNKNOWN
    assert "time budget" in result.explanation
    assert time.monotonic() - started < 2.0


def test_shrinking_a_violation_stops_at_the_time_budget() -> None:
    # 6,000 sequential ops on one key, then a read of a value nobody wrote: the violation
    # is found at once, but no direct witness exists, so it is shrunk, one O(ops) attempt at
    # a time; past the budget the shrinking keeps what it has (it took 23 s when it went on).
    history = _sequential_puts_and_gets(6000)
    history.append(op(6001, 60010, 60015, ("get", "k"), "never"))
    started = time.monotonic()
    result = check(history, REGISTER, time_budget_s=0.5)
    assert result.verdict is Verdict.VIOLATION
    assert time.monotonic() - started < 5.0


def test_state_cap_gives_unknown() -> None:
    result = check(_adversarial_history(30), REGISTER, max_states=1000)
    assert result.verdict is Verdict.UNKNOWN
    assert "1000 states" in result.explanation


def test_a_violation_in_another_partition_beats_an_unknown_one() -> None:
    stale = [
        op(100, 0, 10, ("put", "z", 1)),
        op(101, 20, 30, ("put", "z", 2)),
        op(102, 40, 50, ("get", "z"), 1),
    ]
    result = check(_adversarial_history(30) + stale, REGISTER, max_states=1000)
    assert result.verdict is Verdict.VIOLATION


# --- A brute-force reference checker ---------------------------------------------


def brute_force_linearizable(history: Sequence[Operation], model: Model) -> bool:
    """Each partition (a model's state covers one) has some linearization."""
    return all(_brute_force_part(part, model) for part in model.partition(history))


def _brute_force_part(history: Sequence[Operation], model: Model) -> bool:
    """Every subset of unknown ops, every order of the chosen ops that keeps real time."""
    known = [o for o in history if o.known]
    unknown = [o for o in history if not o.known]
    for size in range(len(unknown) + 1):
        for chosen in combinations(unknown, size):
            for order in permutations(known + list(chosen)):
                if _respects_real_time(order) and _legal(order, model):
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1 :]:
            # `earlier` is placed after `later`: wrong if it returned before `later` was called.
            if earlier.return_ns is not None and earlier.return_ns < later.call_ns:
                return False
    return True


def _legal(order: Sequence[Operation], model: Model) -> bool:
    state = model.init()
    for o in order:
        after = model.step(state, o.input, o.output, o.known)
        if after is None:
            return False
        state = after
    return True


# --- Random histories ----------------------------------------------------------------

VALUES = (1, 2, 3)
KEYS = ("a", "b")


def register_inputs(keys: tuple[str, ...]) -> st.SearchStrategy[tuple[object, ...]]:
    key = st.sampled_from(keys)
    value = st.sampled_from(VALUES)
    return st.one_of(
        st.tuples(st.just("get"), key),
        st.tuples(st.just("put"), key, value),
        st.tuples(st.just("cas"), key, st.sampled_from((None, *VALUES)), value),
        st.tuples(st.just("delete"), key),
    )


def txn_inputs() -> st.SearchStrategy[tuple[object, ...]]:
    txn = st.tuples(
        st.just("txn"),
        st.lists(st.sampled_from(KEYS), unique=True, max_size=2).map(tuple),
        st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=2).map(
            lambda writes: tuple(dict(writes).items())
        ),
    )
    return st.one_of(register_inputs(KEYS), txn)


def list_inputs() -> st.SearchStrategy[tuple[object, ...]]:
    key = st.sampled_from(KEYS)
    return st.one_of(
        st.tuples(st.just("append"), key, st.integers(0, 1000)),
        st.tuples(st.just("read"), key),
    )


def sequential_output(store: dict[object, object], input: tuple[object, ...]) -> object:
    """An independent sequential spec: a plain dict (lists are tuples, absent is None)."""
    match input:
        case ("get", key) | ("read", key):
            return store.get(key, () if input[0] == "read" else None)
        case ("put", key, value):
            store[key] = value
            return None
        case ("cas", key, expected, new):
            if store.get(key) != expected:
                return False
            store[key] = new
            return True
        case ("delete", key):
            return 1 if store.pop(key, None) is not None else 0
        case ("append", key, element):
            store[key] = (*store.get(key, ()), element)  # type: ignore[misc]
            return None
        case ("txn", reads, writes):
            observed = {k: store.get(k) for k in reads}  # type: ignore[attr-defined]
            for k, v in writes:  # type: ignore[attr-defined]
                store[k] = v
            return observed
    raise AssertionError(input)


@st.composite
def correct_histories(
    draw: st.DrawFn, inputs: st.SearchStrategy[tuple[object, ...]], max_ops: int
) -> list[Operation]:
    """Ops with random intervals and a linearization point inside each; outputs are
    computed by executing the ops in linearization-point order. Some ops lose their
    outcome; some of those never take effect at all."""
    count = draw(st.integers(1, max_ops))
    planned = []
    for op_id in range(count):
        call_ns = draw(st.integers(0, 100))
        point_ns = call_ns + draw(st.integers(0, 30))
        return_ns = point_ns + draw(st.integers(0, 30))
        fate = draw(st.sampled_from(("known",) * 8 + ("unknown", "lost")))
        planned.append((point_ns, op_id, call_ns, return_ns, draw(inputs), fate))
    store: dict[object, object] = {}
    history = []
    for _, op_id, call_ns, return_ns, input, fate in sorted(planned):
        output = None if fate == "lost" else sequential_output(store, input)
        if fate == "known":
            history.append(Operation(op_id, op_id % 3, call_ns, return_ns, input, output))
        else:
            history.append(Operation(op_id, op_id % 3, call_ns, None, input, None))
    return history


@st.composite
def random_histories(
    draw: st.DrawFn, inputs: st.SearchStrategy[tuple[object, ...]], max_ops: int
) -> list[Operation]:
    """Small histories with random outputs: often not linearizable."""
    count = draw(st.integers(1, max_ops))
    history = []
    unknown_left = 2
    for op_id in range(count):
        call_ns = draw(st.integers(0, 20))
        input = draw(inputs)
        if unknown_left and draw(st.integers(0, 4)) == 0:
            unknown_left -= 1
            history.append(Operation(op_id, 0, call_ns, None, input, None))
            continue
        return_ns = call_ns + draw(st.integers(0, 10))
        history.append(Operation(op_id, 0, call_ns, return_ns, input, draw(outputs_for(input))))
    return history


def outputs_for(input: tuple[object, ...]) -> st.SearchStrategy[object]:
    value = st.sampled_from((None, *VALUES))
    match input[0]:
        case "get":
            return value
        case "cas":
            return st.booleans()
        case "delete":
            return st.sampled_from((None, 0, 1))
        case "txn":
            reads = input[1]
            assert isinstance(reads, tuple)
            return st.fixed_dictionaries({k: value for k in reads})
        case "read":
            return st.lists(st.integers(0, 3), max_size=2).map(tuple)
    return st.none()


def short_list_inputs() -> st.SearchStrategy[tuple[object, ...]]:
    key = st.sampled_from(KEYS)
    return st.one_of(
        st.tuples(st.just("append"), key, st.integers(0, 3)),
        st.tuples(st.just("read"), key),
    )


MODELS: dict[
    str, tuple[Model, st.SearchStrategy[tuple[object, ...]], st.SearchStrategy[tuple[object, ...]]]
] = {
    "register": (REGISTER, register_inputs(KEYS), register_inputs(KEYS)),
    "txn": (TXN, txn_inputs(), txn_inputs()),
    "list": (LIST, list_inputs(), short_list_inputs()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_histories_from_a_correct_execution_are_linearizable(name: str) -> None:
    model, inputs, _ = MODELS[name]

    @settings(max_examples=60, deadline=None)
    @given(correct_histories(inputs, max_ops=16))
    def run(history: list[Operation]) -> None:
        result = check(history, model)
        assert result.verdict is Verdict.OK, result.explanation

    run()


def test_a_read_of_a_value_never_written_makes_a_correct_history_a_violation() -> None:
    @settings(max_examples=30, deadline=None)
    @given(correct_histories(register_inputs(KEYS), max_ops=10), st.data())
    def run(history: list[Operation], data: st.DataObject) -> None:
        reads = [i for i, o in enumerate(history) if o.known and o.input[0] == "get"]  # type: ignore[index]
        if not reads:
            return
        target = data.draw(st.sampled_from(reads))
        mutated = list(history)
        original = mutated[target]
        mutated[target] = Operation(
            original.op_id,
            original.client_id,
            original.call_ns,
            original.return_ns,
            original.input,
            99,
        )
        result = check(mutated, REGISTER)
        assert result.verdict is Verdict.VIOLATION
        # The witness may be another op the mutated read made impossible (e.g. a later
        # delete that counted the key); whatever it is, it must truly fail.
        assert set(result.failing) <= set(mutated)
        if len(result.failing) <= 7:
            assert not brute_force_linearizable(result.failing, REGISTER)

    run()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_verdicts_match_a_brute_force_checker_on_small_random_histories(name: str) -> None:
    model, _, inputs = MODELS[name]

    @settings(max_examples=150, deadline=None)
    @given(random_histories(inputs, max_ops=6))
    def run(history: list[Operation]) -> None:
        result = check(history, model)
        expected = brute_force_linearizable(history, model)
        assert result.verdict is (Verdict.OK if expected else Verdict.VIOLATION), history
        if result.verdict is Verdict.VIOLATION:
            _assert_minimal_failing(result, model)

    run()


def _assert_minimal_failing(result: CheckResult, model: Model) -> None:
    """The witness fails, and relaxing any one op of it (to an unknown outcome) makes it
    linearizable, except writes the shrinker keeps because a remaining op observed them."""
    failing = list(result.failing)
    assert not brute_force_linearizable(failing, model)
    for i in range(len(failing)):
        if any(model.observed_by(failing[i], other) for other in failing):
            continue
        relaxed = [o.with_unknown_outcome() if j == i else o for j, o in enumerate(failing)]
        assert brute_force_linearizable(relaxed, model)


def test_a_stale_read_deep_in_a_long_history_gets_a_three_op_witness() -> None:
    # 3,000 sequential ops on one key; one read returns the value before the latest write.
    history = _sequential_puts_and_gets(3000)
    stale = history[1501]  # a get; the put before it overwrote op 1499's value
    history[1501] = op(stale.op_id, stale.call_ns, stale.return_ns, ("get", "k"), "v1499")
    result = check(history, REGISTER, time_budget_s=60)
    assert result.verdict is Verdict.VIOLATION
    assert [o.op_id for o in result.failing] == [1499, 1501, 1502], result.explanation
    assert "overwritten before the read was called" in result.explanation


def _hints_by_definition(ops: Sequence[Operation]) -> list[str]:
    """The register hints written as their definition reads: every op scanned for each
    read and each writer (what the indexed version must agree with)."""
    from raftkv.check import models

    def overwriter(writer: Operation, read: Operation, key: object, value: object) -> bool:
        if writer.return_ns is None:
            return False
        return any(
            o.return_ns is not None
            and models._writes_of(o, key)
            and writer.return_ns < o.call_ns
            and o.return_ns < read.call_ns
            and all(v != value for v in models._writes_of(o, key))
            for o in ops
        )

    hints = []
    for read in ops:
        for key, value in models._reads_of(read):
            writers = [o for o in ops if o is not read and value in models._writes_of(o, key)]
            if not writers:
                if value is not models._ABSENT:
                    hints.append(f"op {read.op_id} never written")
            elif value is not models._ABSENT and all(
                overwriter(w, read, key, value) for w in writers
            ):
                hints.append(f"op {read.op_id} overwritten")
    return hints


@st.composite
def unique_value_histories(draw: st.DrawFn) -> list[Operation]:
    """As raftkv verify writes: every put writes a value of its own; every get reads one
    of the values written so far (or nothing), so some reads are of overwritten values."""
    history: list[Operation] = []
    written: list[int] = []
    for op_id in range(draw(st.integers(1, 16))):
        call_ns = draw(st.integers(0, 60))
        return_ns = None if draw(st.integers(0, 9)) == 0 else call_ns + draw(st.integers(0, 6))
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()):
            written.append(op_id)
            history.append(Operation(op_id, op_id, call_ns, return_ns, ("put", key, op_id), None))
        else:
            value = draw(st.sampled_from([None, *written])) if return_ns is not None else None
            history.append(Operation(op_id, op_id, call_ns, return_ns, ("get", key), value))
    return history


def test_register_hints_match_their_definition_on_random_histories() -> None:
    from raftkv.check import models

    @settings(max_examples=400, deadline=None)
    @given(unique_value_histories())
    def run(history: list[Operation]) -> None:
        got = [
            f"op {h.split()[1]} {'never written' if 'no op in' in h else 'overwritten'}"
            for h in models._register_hints(history)
        ]
        assert got == _hints_by_definition(history)

    run()


def _observed_by_definition(model: Model, writer: Operation, reader: Operation) -> bool:
    """Did ``reader`` observe something only ``writer`` could have written, as each model
    defines it, pair by pair (what the models' tokens must reproduce)."""
    from raftkv.check import models

    if writer is reader:
        return False
    if isinstance(model, ListAppendModel):
        if not (writer.input[0] == "append" and reader.input[0] == "read" and reader.known):
            return False
        assert isinstance(writer.input, tuple) and isinstance(reader.output, tuple)
        return writer.input[1] == reader.input[1] and writer.input[2] in reader.output
    return any(
        value is not models._ABSENT and value in models._writes_of(writer, key)
        for key, value in models._reads_of(reader)
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_observed_by_from_tokens_matches_its_definition_on_every_pair(name: str) -> None:
    """The shrinker counts tokens instead of asking about every pair, and observed_by is
    derived from the same tokens: both must say what the pairwise definition says."""
    model, _, inputs = MODELS[name]

    @settings(max_examples=150, deadline=None)
    @given(random_histories(inputs, max_ops=8))
    def run(history: list[Operation]) -> None:
        for writer in history:
            for reader in history:
                expected = _observed_by_definition(model, writer, reader)
                assert model.observed_by(writer, reader) == expected, (writer, reader)

    run()


def _torn_hints_by_definition(ops: Sequence[Operation]) -> list[str]:
    """Torn-transaction hints as their definition reads: every multi-key writer against
    every op (what the indexed version must agree with, hint for hint and in order)."""
    from raftkv.check import models

    hints = []
    for writer in ops:
        if writer.input[0] not in ("txn", "ctxn"):
            continue
        if writer.input[0] == "ctxn" and writer.known and writer.output is not True:
            continue
        writes = writer.input[2]
        if len(writes) < 2:
            continue
        for reader in ops:
            seen = dict(models._reads_of(reader))
            keys = [key for key, _ in writes if key in seen]
            hits = [key for key, value in writes if key in seen and seen[key] == value]
            if len(keys) >= 2 and 0 < len(hits) < len(keys):
                hints.append(f"{reader.op_id} {writer.op_id} {hits}")
    return hints


def test_torn_transaction_hints_match_their_definition_on_random_histories() -> None:
    import random
    import re

    from raftkv.check import models

    found = 0
    for seed in range(300):
        rng = random.Random(seed)
        history: list[Operation] = []
        values: dict[str, list[int]] = {key: [] for key in "abc"}
        for op_id in range(rng.randint(1, 14)):
            keys = rng.sample("abc", rng.randint(1, 3))
            if rng.random() < 0.5:
                writes = tuple((key, op_id * 10 + i) for i, key in enumerate(keys))
                for key, value in writes:
                    values[key].append(value)
                kind = rng.choice(["txn", "ctxn"])
                first = () if kind == "txn" else ((keys[0], rng.choice([None, 1])),)
                output = {} if kind == "txn" else rng.choice([True, False])
                history.append(op(op_id, op_id, op_id + 1, (kind, first, writes), output))
            else:
                seen = {key: rng.choice([None, *values[key]]) for key in keys}
                history.append(op(op_id, op_id, op_id + 1, ("txn", tuple(keys), ()), seen))
        indexed = [
            " ".join(re.findall(r"op (\d+)", hint)[:2]) for hint in models._torn_txn_hints(history)
        ]
        expected = [" ".join(h.split()[:2]) for h in _torn_hints_by_definition(history)]
        assert indexed == expected, seed
        found += len(expected)
    assert found > 50, "the histories must hold torn reads for the comparison to mean much"
