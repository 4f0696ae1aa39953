"""Txn: compares, branches, revisions, nested txns, checks, and validation."""

from __future__ import annotations

import pytest

from raftkv.storage.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
    TooManyOpsError,
)
from raftkv.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
    validate_txn,
)
from tests.mvcc.helpers import KV

EQUAL, GREATER, LESS, NOT_EQUAL = (
    CompareResult.EQUAL,
    CompareResult.GREATER,
    CompareResult.LESS,
    CompareResult.NOT_EQUAL,
)


def cmp(key: bytes, target: CompareTarget, result: CompareResult, **operand: object) -> Compare:
    return Compare(result, target, key, **operand)  # type: ignore[arg-type]


def succeeds(kv: KV, compare: Compare) -> bool:
    return kv.txn(compare=[compare]).succeeded


@pytest.fixture
def stored(kv: KV) -> KV:
    """a: value "m", create 2, mod 3, version 2, lease 7."""
    kv.put(b"a", b"x")
    kv.put(b"a", b"m", lease=7)
    return kv


# --- Compares ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "operand", "below", "equal", "above"),
    [
        (CompareTarget.VERSION, "version", 1, 2, 3),
        (CompareTarget.CREATE, "create_revision", 1, 2, 3),
        (CompareTarget.MOD, "mod_revision", 2, 3, 4),
        (CompareTarget.LEASE, "lease", 6, 7, 8),
        (CompareTarget.VALUE, "value", b"l", b"m", b"n"),
    ],
)
def test_compare_results_on_each_target(
    stored: KV, target: CompareTarget, operand: str, below: object, equal: object, above: object
) -> None:
    def check(result: CompareResult, value: object) -> bool:
        return succeeds(stored, cmp(b"a", target, result, **{operand: value}))

    assert check(EQUAL, equal) and not check(EQUAL, below)
    assert check(NOT_EQUAL, below) and not check(NOT_EQUAL, equal)
    assert check(GREATER, below) and not check(GREATER, equal)
    assert check(LESS, above) and not check(LESS, equal)


def test_missing_key_compares_as_zero(kv: KV) -> None:
    assert succeeds(kv, cmp(b"a", CompareTarget.VERSION, EQUAL, version=0))
    assert succeeds(kv, cmp(b"a", CompareTarget.CREATE, EQUAL, create_revision=0))
    assert succeeds(kv, cmp(b"a", CompareTarget.MOD, LESS, mod_revision=1))


def test_value_compare_on_a_missing_key_always_fails(kv: KV) -> None:
    assert not succeeds(kv, cmp(b"a", CompareTarget.VALUE, EQUAL, value=b""))
    assert not succeeds(kv, cmp(b"a", CompareTarget.VALUE, NOT_EQUAL, value=b"x"))


def test_compare_over_a_range_needs_every_key(kv: KV) -> None:
    kv.put(b"a1", b"x")
    kv.put(b"a2", b"x")
    assert succeeds(kv, cmp(b"a", CompareTarget.VALUE, EQUAL, value=b"x", range_end=b"b"))
    kv.put(b"a3", b"y")
    assert not succeeds(kv, cmp(b"a", CompareTarget.VALUE, EQUAL, value=b"x", range_end=b"b"))


def test_all_compares_must_hold(stored: KV) -> None:
    response = stored.txn(
        compare=[
            cmp(b"a", CompareTarget.VERSION, EQUAL, version=2),
            cmp(b"a", CompareTarget.LEASE, EQUAL, lease=8),
        ]
    )
    assert not response.succeeded


def test_unknown_compare_result_holds(stored: KV) -> None:
    # etcd's compareKV returns true for a result it does not know.
    assert succeeds(stored, cmp(b"a", CompareTarget.VERSION, 9, version=100))  # type: ignore[arg-type]


# --- Branches and revisions --------------------------------------------------------------


def test_empty_txn_succeeds_without_a_revision(kv: KV) -> None:
    assert kv.txn() == TxnResponse(1, True, ())
    assert kv.store.current_revision == 1


def test_failed_compare_runs_the_failure_branch(kv: KV) -> None:
    response = kv.txn(
        compare=[cmp(b"a", CompareTarget.VERSION, GREATER, version=0)],
        success=[PutRequest(b"yes")],
        failure=[PutRequest(b"no")],
    )
    assert not response.succeeded
    assert kv.pairs() == [(b"no", b"")]


def test_txn_writes_share_one_revision(kv: KV) -> None:
    response = kv.txn(success=[PutRequest(b"a"), PutRequest(b"b"), DeleteRangeRequest(b"c")])
    assert response.revision == 2
    assert [item.mod_revision for item in kv.get(b"a", range_end=b"\0").kvs] == [2, 2]
    assert kv.stored_revisions() == [(2, False), (2, False)]


def test_sub_responses_carry_revisions(kv: KV) -> None:
    kv.put(b"a", b"0")
    response = kv.txn(
        success=[
            RangeRequest(b"a"),
            PutRequest(b"a", b"1"),
            RangeRequest(b"a"),
            DeleteRangeRequest(b"zz"),
        ]
    )
    assert response == TxnResponse(
        3,
        True,
        (
            RangeResponse((KeyValue(b"a", 2, 2, 1, b"0"),), False, 1, 2),
            PutResponse(3),
            RangeResponse((KeyValue(b"a", 2, 3, 2, b"1"),), False, 1, 3),
            DeleteRangeResponse(3, 0),
        ),
    )


def test_read_only_txn_makes_no_revision(kv: KV) -> None:
    kv.put(b"a")
    response = kv.txn(success=[RangeRequest(b"a")])
    assert response.revision == 2
    assert kv.store.current_revision == 2


def test_delete_sees_a_put_earlier_in_the_txn(kv: KV) -> None:
    response = kv.txn(success=[PutRequest(b"a"), DeleteRangeRequest(b"a", range_end=b"\0")])
    assert response.responses[1] == DeleteRangeResponse(2, 1)
    assert kv.pairs() == []


def test_read_txn_answers_like_txn(stored: KV) -> None:
    request = TxnRequest(
        compare=(cmp(b"a", CompareTarget.VERSION, EQUAL, version=2),),
        success=(RangeRequest(b"a"),),
    )
    local = stored.store.read_txn(request)
    with stored.backend.write() as batch:
        applied = stored.store.txn(batch, request)
    assert local == applied


# --- Nested txns -------------------------------------------------------------------------


def test_nested_txn_takes_its_own_branch(kv: KV) -> None:
    nested = TxnRequest(
        compare=(cmp(b"a", CompareTarget.VERSION, EQUAL, version=5),),
        success=(PutRequest(b"inner-yes"),),
        failure=(PutRequest(b"inner-no"),),
    )
    response = kv.txn(success=[PutRequest(b"outer"), nested])
    assert kv.pairs() == [(b"inner-no", b""), (b"outer", b"")]
    assert response.responses[1] == TxnResponse(0, False, (PutResponse(2),))


def test_nested_compares_see_the_store_before_the_txn(kv: KV) -> None:
    # etcd evaluates every compare before any write (compareToPath).
    nested = TxnRequest(
        compare=(cmp(b"a", CompareTarget.VERSION, EQUAL, version=0),),
        success=(PutRequest(b"saw-nothing"),),
        failure=(PutRequest(b"saw-a"),),
    )
    kv.txn(success=[PutRequest(b"a"), nested])
    assert kv.pairs() == [(b"a", b""), (b"saw-nothing", b"")]


# --- Checks before writing (etcd's checkTxn) -------------------------------------------------


def test_range_at_a_future_revision_fails_the_txn_before_it_writes(kv: KV) -> None:
    with pytest.raises(FutureRevisionError):
        kv.txn(success=[PutRequest(b"a"), RangeRequest(b"a", revision=5)])
    assert kv.store.current_revision == 1
    assert kv.pairs() == []


def test_range_below_the_compaction_fails_the_txn(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.compact(3)
    with pytest.raises(CompactedError):
        kv.txn(success=[RangeRequest(b"a", revision=2)])


def test_negative_revision_in_a_txn_is_compared_with_the_compaction(kv: KV) -> None:
    # etcd's checkRange does not treat a negative revision as "latest": below the
    # compacted revision (-1 before any compaction) it is compacted.
    kv.put(b"a")
    assert kv.txn(success=[RangeRequest(b"a", revision=-1)]).succeeded
    with pytest.raises(CompactedError):
        kv.txn(success=[RangeRequest(b"a", revision=-2)])


def test_ignore_value_of_a_missing_key_fails_the_txn(kv: KV) -> None:
    with pytest.raises(KeyNotFoundError):
        kv.txn(success=[PutRequest(b"b"), PutRequest(b"a", ignore_value=True)])
    assert kv.pairs() == []


def test_unknown_lease_fails_the_txn(kv: KV) -> None:
    with pytest.raises(LeaseNotFoundError):
        kv.txn(success=[PutRequest(b"a", lease=99)])


def test_checks_follow_the_branch_taken(kv: KV) -> None:
    response = kv.txn(failure=[PutRequest(b"a", lease=99)], success=[PutRequest(b"b")])
    assert response.succeeded


def test_ignore_value_after_a_delete_from_key_on_fails_before_writing(kv: KV) -> None:
    # etcd's duplicate check lets this through and its apply panics; we refuse it.
    kv.put(b"b", b"1")
    request = TxnRequest(
        success=(DeleteRangeRequest(b"a", range_end=b"\0"), PutRequest(b"b", ignore_value=True))
    )
    validate_txn(request)
    with kv.backend.write() as batch:
        with pytest.raises(KeyNotFoundError):
            kv.store.txn(batch, request)
        kv.store.put(batch, PutRequest(b"c"))  # nothing was written: the batch goes on
    assert kv.pairs() == [(b"b", b"1"), (b"c", b"")]


# --- Validation before proposing (etcd's checkTxnRequest and checkIntervals) --------------------


def ops(count: int) -> tuple[PutRequest, ...]:
    return tuple(PutRequest(b"k%d" % i) for i in range(count))


def test_validate_txn_accepts_max_ops_per_list() -> None:
    validate_txn(TxnRequest(success=ops(128), failure=ops(128)))


@pytest.mark.parametrize("field", ["compare", "success", "failure"])
def test_validate_txn_refuses_too_many_ops(field: str) -> None:
    items: tuple[object, ...] = ops(129)
    if field == "compare":
        items = tuple(cmp(b"k", CompareTarget.VERSION, EQUAL) for _ in range(129))
    with pytest.raises(TooManyOpsError) as error:
        validate_txn(TxnRequest(**{field: items}))  # type: ignore[arg-type]
    assert str(error.value) == "etcdserver: too many operations in txn request"


def test_nested_txn_gets_the_ops_its_parent_left() -> None:
    nested = TxnRequest(success=ops(3))
    validate_txn(TxnRequest(success=(nested,)), max_txn_ops=4)
    with pytest.raises(TooManyOpsError):
        validate_txn(TxnRequest(success=(nested, PutRequest(b"x"))), max_txn_ops=4)


def test_validate_txn_refuses_an_empty_compare_key() -> None:
    with pytest.raises(EmptyKeyError):
        validate_txn(TxnRequest(compare=(cmp(b"", CompareTarget.VERSION, EQUAL),)))


def test_validate_txn_checks_each_op() -> None:
    with pytest.raises(EmptyKeyError):
        validate_txn(TxnRequest(failure=(DeleteRangeRequest(b""),)))


def duplicate(*branch: object) -> bool:
    try:
        validate_txn(TxnRequest(success=branch))  # type: ignore[arg-type]
    except DuplicateKeyError as error:
        assert str(error) == "etcdserver: duplicate key given in txn request"
        return True
    return False


def test_same_key_put_twice_is_a_duplicate() -> None:
    assert duplicate(PutRequest(b"a"), PutRequest(b"a"))


def test_put_inside_a_deleted_range_is_a_duplicate() -> None:
    assert duplicate(DeleteRangeRequest(b"a", range_end=b"c"), PutRequest(b"b"))
    assert duplicate(PutRequest(b"a"), DeleteRangeRequest(b"a"))


def test_put_outside_a_deleted_range_is_fine() -> None:
    assert not duplicate(DeleteRangeRequest(b"a", range_end=b"c"), PutRequest(b"c"))


def test_overlapping_deletes_are_fine() -> None:
    assert not duplicate(DeleteRangeRequest(b"a", range_end=b"c"), DeleteRangeRequest(b"b"))


def test_nested_put_of_an_outer_key_is_a_duplicate() -> None:
    assert duplicate(PutRequest(b"a"), TxnRequest(success=(PutRequest(b"a"),)))
    assert duplicate(DeleteRangeRequest(b"a"), TxnRequest(failure=(PutRequest(b"a"),)))


def test_nested_delete_of_an_outer_put_is_a_duplicate() -> None:
    assert duplicate(PutRequest(b"b"), TxnRequest(success=(DeleteRangeRequest(b"a", b"c"),)))


def test_both_branches_of_a_nested_txn_may_put_the_same_key() -> None:
    nested = TxnRequest(success=(PutRequest(b"a"),), failure=(PutRequest(b"a"),))
    assert not duplicate(nested)


def test_delete_from_key_on_does_not_count_as_covering_keys() -> None:
    # etcd's interval tree reads range_end b"\0" literally: an empty interval.
    assert not duplicate(DeleteRangeRequest(b"a", range_end=b"\0"), PutRequest(b"b"))
