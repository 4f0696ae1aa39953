"""Alarms persisted in DB_ALARM, and the quota guard on real LMDB backends."""

from __future__ import annotations

import pytest

from raftkv import limits
from raftkv.storage.alarm import (
    LEASE_GRANT_COST_BYTES,
    AlarmMember,
    AlarmStore,
    AlarmType,
    CorruptClusterError,
    QuotaGuard,
    RequestKind,
    put_cost_bytes,
    txn_cost_bytes,
)
from raftkv.storage.backend import DB_KEY, Backend
from raftkv.storage.errors import NoSpaceError
from tests.lease.conftest import MAP_SIZE_BYTES, Reopen

PUT_COST = put_cost_bytes(b"key", b"value")

# (kind, cost) of every request kind, with the decision under NOSPACE.
NOSPACE_ACCEPTS = [
    (RequestKind.RANGE, 0),
    (RequestKind.DELETE_RANGE, 0),
    (RequestKind.TXN, 0),  # reads and deletes only
    (RequestKind.COMPACTION, 0),
    (RequestKind.LEASE_REVOKE, 0),
    (RequestKind.LEASE_CHECKPOINT, 0),
    (RequestKind.ALARM_ACTIVATE, 0),
    (RequestKind.ALARM_DEACTIVATE, 0),
    (RequestKind.AUTH, 0),
]
NOSPACE_REFUSES = [
    (RequestKind.PUT, PUT_COST),
    (RequestKind.TXN, PUT_COST),  # a put in either branch
    (RequestKind.LEASE_GRANT, LEASE_GRANT_COST_BYTES),
]


def activate(backend: Backend, alarms: AlarmStore, member_id: int, alarm: AlarmType) -> None:
    with backend.write() as batch:
        alarms.activate(batch, member_id, alarm)


def deactivate(
    backend: Backend, alarms: AlarmStore, member_id: int, alarm: AlarmType
) -> AlarmMember | None:
    with backend.write() as batch:
        return alarms.deactivate(batch, member_id, alarm)


# --- AlarmStore --------------------------------------------------------------------------


def test_alarms_persist_across_reopen(backend: Backend, reopen: Reopen) -> None:
    alarms = AlarmStore(backend)
    activate(backend, alarms, 2, AlarmType.NOSPACE)
    activate(backend, alarms, 1, AlarmType.NOSPACE)
    activate(backend, alarms, 1, AlarmType.CORRUPT)
    activate(backend, alarms, 1, AlarmType.NOSPACE)  # idempotent
    assert deactivate(backend, alarms, 1, AlarmType.CORRUPT) == AlarmMember(1, AlarmType.CORRUPT)

    backend = reopen(backend)
    restarted = AlarmStore(backend)
    nospace = [AlarmMember(1, AlarmType.NOSPACE), AlarmMember(2, AlarmType.NOSPACE)]
    assert restarted.get() == nospace
    assert restarted.get(AlarmType.NONE) == nospace
    assert restarted.get(AlarmType.NOSPACE) == nospace
    assert restarted.get(AlarmType.CORRUPT) == []
    assert restarted.is_active(AlarmType.NOSPACE)
    assert not restarted.is_active(AlarmType.CORRUPT)


def test_activate_none_and_deactivate_absent_are_no_ops(backend: Backend) -> None:
    alarms = AlarmStore(backend)
    with backend.write() as batch:
        assert alarms.activate(batch, 1, AlarmType.NONE) is None
    assert deactivate(backend, alarms, 1, AlarmType.NOSPACE) is None
    assert alarms.get() == []


# --- QuotaGuard.check_write ----------------------------------------------------------------


@pytest.fixture
def guard(backend: Backend) -> QuotaGuard:
    return QuotaGuard(backend, limits.BACKEND_QUOTA_BYTES_DEFAULT // 1024, AlarmStore(backend))


@pytest.mark.parametrize(("kind", "cost"), NOSPACE_ACCEPTS + NOSPACE_REFUSES)
def test_everything_passes_without_alarms(guard: QuotaGuard, kind: RequestKind, cost: int) -> None:
    guard.check_write(kind, cost)


@pytest.mark.parametrize(("kind", "cost"), NOSPACE_ACCEPTS)
def test_nospace_accepts_reads_deletes_compaction_revoke_and_disarm(
    backend: Backend, guard: QuotaGuard, kind: RequestKind, cost: int
) -> None:
    activate(backend, guard.alarms, 1, AlarmType.NOSPACE)
    guard.check_write(kind, cost)


@pytest.mark.parametrize(("kind", "cost"), NOSPACE_REFUSES)
def test_nospace_refuses_puts_and_grants(
    backend: Backend, guard: QuotaGuard, kind: RequestKind, cost: int
) -> None:
    activate(backend, guard.alarms, 1, AlarmType.NOSPACE)
    with pytest.raises(NoSpaceError, match="database space exceeded") as raised:
        guard.check_write(kind, cost)
    assert raised.value.grpc_code == "RESOURCE_EXHAUSTED"


def test_disarm_accepts_puts_again(backend: Backend, guard: QuotaGuard) -> None:
    activate(backend, guard.alarms, 1, AlarmType.NOSPACE)
    activate(backend, guard.alarms, 2, AlarmType.NOSPACE)
    guard.check_write(RequestKind.ALARM_DEACTIVATE, 0)
    deactivate(backend, guard.alarms, 1, AlarmType.NOSPACE)
    with pytest.raises(NoSpaceError):  # member 2 still has it raised
        guard.check_write(RequestKind.PUT, PUT_COST)
    deactivate(backend, guard.alarms, 2, AlarmType.NOSPACE)
    guard.check_write(RequestKind.PUT, PUT_COST)


@pytest.mark.parametrize(("kind", "cost"), NOSPACE_ACCEPTS + NOSPACE_REFUSES)
def test_corrupt_refuses_all_but_alarms_auth_and_checkpoints(
    backend: Backend, guard: QuotaGuard, kind: RequestKind, cost: int
) -> None:
    activate(backend, guard.alarms, 1, AlarmType.NOSPACE)
    activate(backend, guard.alarms, 1, AlarmType.CORRUPT)
    survivors = {
        RequestKind.LEASE_CHECKPOINT,
        RequestKind.ALARM_ACTIVATE,
        RequestKind.ALARM_DEACTIVATE,
        RequestKind.AUTH,
    }
    if kind in survivors:
        guard.check_write(kind, cost)
    else:
        with pytest.raises(CorruptClusterError, match="corrupt cluster"):
            guard.check_write(kind, cost)


def test_costs_must_match_the_kind(guard: QuotaGuard) -> None:
    with pytest.raises(AssertionError):
        guard.check_write(RequestKind.DELETE_RANGE, 10)
    with pytest.raises(AssertionError):
        guard.check_write(RequestKind.PUT, 0)


def test_costs() -> None:
    assert put_cost_bytes(b"ab", b"cde") == limits.QUOTA_KV_OVERHEAD_BYTES + 5
    assert txn_cost_bytes([10, 20], [25]) == 30
    assert txn_cost_bytes([], [7]) == 7
    assert txn_cost_bytes([], []) == 0


# --- QuotaGuard.needs_alarm ----------------------------------------------------------------


def test_needs_alarm_when_the_request_reaches_the_quota(backend: Backend) -> None:
    quota_bytes = backend.size_bytes() + 1000
    guard = QuotaGuard(backend, quota_bytes, AlarmStore(backend))
    assert guard.remaining_bytes() == 1000
    assert not guard.needs_alarm(0)  # costless requests always pass
    assert not guard.needs_alarm(999)
    assert guard.needs_alarm(1000)


def test_needs_alarm_as_the_backend_grows(backend: Backend) -> None:
    guard = QuotaGuard(backend, 1 * limits.MIB, AlarmStore(backend))
    assert not guard.needs_alarm(PUT_COST)
    value = b"v" * 4096
    for index in range(400):  # about 1.6 MiB of values
        with backend.write() as batch:
            batch.put(DB_KEY, index.to_bytes(4, "big"), value)
    assert guard.remaining_bytes() < 0
    assert guard.needs_alarm(PUT_COST)
    assert not guard.needs_alarm(0)


def test_quota_must_fit_the_map(backend: Backend) -> None:
    with pytest.raises(AssertionError):
        QuotaGuard(backend, MAP_SIZE_BYTES + 1, AlarmStore(backend))
