"""Alarms and the backend space quota.

etcd's ``server/etcdserver/api/v3alarm`` (AlarmStore), ``server/storage/quota.go``
(request costs, the quota check) and ``server/etcdserver/apply/{capped,corrupt}.go``
(what is refused while an alarm is raised).

Alarms are replicated state: they change only while a committed Alarm request is
applied, in the apply path's ``WriteBatch``. The quota check (``needs_alarm``) reads this
member's backend size, which differs between members, so it runs *before* proposing,
never while applying; ``check_write`` reads only alarms and is deterministic.

Which request kinds a raised alarm refuses (``check_write``):

==================  =========================  ==========================
kind                NOSPACE active             CORRUPT active
==================  =========================  ==========================
RANGE               accepted                   CorruptClusterError
PUT                 NoSpaceError               CorruptClusterError
DELETE_RANGE        accepted                   CorruptClusterError
TXN, no put         accepted                   CorruptClusterError
TXN with a put      NoSpaceError               CorruptClusterError
COMPACTION          accepted                   CorruptClusterError
LEASE_GRANT         NoSpaceError               CorruptClusterError
LEASE_REVOKE        accepted                   CorruptClusterError
LEASE_CHECKPOINT    accepted                   accepted
ALARM_ACTIVATE      accepted                   accepted
ALARM_DEACTIVATE    accepted                   accepted
AUTH                accepted                   accepted
==================  =========================  ==========================

A TXN "has a put" when its cost is above zero, i.e. when a put appears in its success
or failure branch. CORRUPT takes precedence over NOSPACE. Membership changes are Raft
configuration entries and are never refused.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from raftkv import limits
from raftkv.storage.backend import DB_ALARM, Backend, WriteBatch
from raftkv.storage.errors import NoSpaceError, RequestError

_ALARM_KEY = struct.Struct(">QI")  # member id, alarm type; the value is empty
_MEMBER_ID_MAX = (1 << 64) - 1

# etcd's leaseOverhead: the quota cost of a lease grant.
LEASE_GRANT_COST_BYTES = limits.QUOTA_LEASE_OVERHEAD_BYTES


class AlarmType(enum.IntEnum):
    """etcd's AlarmType (the values are the protobuf's)."""

    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class CorruptClusterError(RequestError):
    grpc_code = "DATA_LOSS"
    message = "etcdserver: corrupt cluster"


@dataclass(frozen=True, slots=True, order=True)
class AlarmMember:
    member_id: int
    alarm: AlarmType


def _encode(member: AlarmMember) -> bytes:
    return _ALARM_KEY.pack(member.member_id, int(member.alarm))


def _decode(key: bytes) -> AlarmMember:
    assert len(key) == _ALARM_KEY.size, f"alarm key of {len(key)} bytes"
    member_id, alarm = _ALARM_KEY.unpack(key)
    member = AlarmMember(member_id, AlarmType(alarm))
    assert member.alarm != AlarmType.NONE, "NONE is never stored"
    return member


class AlarmStore:
    """The raised alarms of every member, persisted in DB_ALARM and cached in memory."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._active: set[AlarmMember] = set()
        self.load()

    def load(self) -> None:
        """Re-read DB_ALARM (restart, snapshot install)."""
        self._active.clear()
        with (
            self._backend.read() as txn,
            txn.cursor(db=self._backend.db(DB_ALARM)) as cursor,
        ):
            for key, value in cursor:
                assert bytes(value) == b"", "alarm values are empty"
                self._active.add(_decode(bytes(key)))

    def activate(self, batch: WriteBatch, member_id: int, alarm: AlarmType) -> AlarmMember | None:
        """Raise an alarm; idempotent. NONE is ignored (returns None), as in etcd."""
        assert 0 <= member_id <= _MEMBER_ID_MAX
        if alarm == AlarmType.NONE:
            return None
        member = AlarmMember(member_id, alarm)
        key = _encode(member)
        assert _decode(key) == member  # pair assertion
        batch.put(DB_ALARM, key, b"")
        self._active.add(member)
        return member

    def deactivate(self, batch: WriteBatch, member_id: int, alarm: AlarmType) -> AlarmMember | None:
        """Clear an alarm (disarm); returns None if it was not raised."""
        assert 0 <= member_id <= _MEMBER_ID_MAX
        member = AlarmMember(member_id, alarm)
        if member not in self._active:
            return None
        deleted = batch.delete(DB_ALARM, _encode(member))
        assert deleted, f"alarm {member} was not persisted"
        self._active.remove(member)
        return member

    def get(self, alarm: AlarmType | None = None) -> list[AlarmMember]:
        """Raised alarms of one type, or all of them for None or NONE; sorted."""
        if alarm is None or alarm == AlarmType.NONE:
            return sorted(self._active)
        return sorted(member for member in self._active if member.alarm == alarm)

    def is_active(self, alarm: AlarmType) -> bool:
        """Whether any member has raised this alarm."""
        assert alarm != AlarmType.NONE
        return any(member.alarm == alarm for member in self._active)


class RequestKind(enum.Enum):
    """What an applied request does, as far as alarms are concerned."""

    RANGE = "range"
    PUT = "put"
    DELETE_RANGE = "delete_range"
    TXN = "txn"
    COMPACTION = "compaction"
    LEASE_GRANT = "lease_grant"
    LEASE_REVOKE = "lease_revoke"
    LEASE_CHECKPOINT = "lease_checkpoint"
    ALARM_ACTIVATE = "alarm_activate"
    ALARM_DEACTIVATE = "alarm_deactivate"
    AUTH = "auth"


# Kinds that may cost quota bytes; every other kind costs 0 (etcd's Cost).
COSTED_KINDS = frozenset({RequestKind.PUT, RequestKind.TXN, RequestKind.LEASE_GRANT})
# etcd's applierV3Corrupt overrides exactly these.
REFUSED_WHEN_CORRUPT = frozenset(
    {
        RequestKind.RANGE,
        RequestKind.PUT,
        RequestKind.DELETE_RANGE,
        RequestKind.TXN,
        RequestKind.COMPACTION,
        RequestKind.LEASE_GRANT,
        RequestKind.LEASE_REVOKE,
    }
)


def allowed_under_nospace(kind: RequestKind, cost_bytes: int) -> bool:
    """etcd's applierV3Capped: Put and LeaseGrant are refused, and a Txn with a cost."""
    if kind in (RequestKind.PUT, RequestKind.LEASE_GRANT):
        return False
    if kind == RequestKind.TXN:
        return cost_bytes == 0
    return True


def put_cost_bytes(key: bytes, value: bytes) -> int:
    """etcd's costPut: the key's metadata estimate plus its key and value bytes."""
    return limits.QUOTA_KV_OVERHEAD_BYTES + len(key) + len(value)


def txn_cost_bytes(success_costs: Iterable[int], failure_costs: Iterable[int]) -> int:
    """etcd's costTxn: the costlier branch. Pass each branch's put costs, including the
    puts of nested txns (etcd forgets those; counting them is stricter)."""
    success_bytes = sum(success_costs)
    failure_bytes = sum(failure_costs)
    assert success_bytes >= 0 and failure_bytes >= 0
    return max(success_bytes, failure_bytes)


class QuotaGuard:
    """The space quota: proposes NOSPACE before the backend outgrows it, and refuses
    the writes an active alarm forbids."""

    def __init__(
        self,
        backend: Backend,
        quota_bytes: int,
        alarms: AlarmStore,
    ) -> None:
        # etcd's default is limits.BACKEND_QUOTA_BYTES_DEFAULT.
        assert 0 < quota_bytes <= backend.map_size_bytes, "quota must fit the LMDB map"
        self._backend = backend
        self.quota_bytes = quota_bytes
        self.alarms = alarms  # the node's one AlarmStore: its cache is the truth

    def check_write(self, kind: RequestKind, extra_bytes: int) -> None:
        """Apply path: raise if a raised alarm refuses this request (table in the module
        doc). `extra_bytes` is the request's cost (put_cost_bytes, txn_cost_bytes,
        LEASE_GRANT_COST_BYTES), 0 for the kinds that cost nothing. Deterministic."""
        assert extra_bytes >= 0
        if kind not in COSTED_KINDS:
            assert extra_bytes == 0, f"{kind} costs no quota"
        if kind in (RequestKind.PUT, RequestKind.LEASE_GRANT):
            assert extra_bytes > 0, f"{kind} always costs quota"
        if kind in REFUSED_WHEN_CORRUPT and self.alarms.is_active(AlarmType.CORRUPT):
            raise CorruptClusterError()
        if not allowed_under_nospace(kind, extra_bytes) and self.alarms.is_active(
            AlarmType.NOSPACE
        ):
            raise NoSpaceError()

    def needs_alarm(self, extra_bytes: int) -> bool:
        """Before proposing: True when this member's backend plus the request's cost
        reaches the quota (etcd's !Available). The server then proposes
        ALARM_ACTIVATE NOSPACE for this member and answers NoSpaceError."""
        assert extra_bytes >= 0
        if extra_bytes == 0:
            return False  # reads and deletes pass, whatever the size
        return self._backend.size_bytes() + extra_bytes >= self.quota_bytes

    def remaining_bytes(self) -> int:
        """etcd's Remaining: quota left (negative once exceeded)."""
        return self.quota_bytes - self._backend.size_bytes()
