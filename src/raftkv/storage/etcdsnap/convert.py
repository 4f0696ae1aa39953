"""The pure mapping between raftkv's backend records and etcd's bucket records.

raftkv → etcd (a snapshot): every DB_KEY record becomes a ``key`` record at the same
(main, sub) revision, tombstones included; the compacted revision becomes
``finishedCompactRev`` and ``scheduledCompactRev``; the consistent index and its term go
to ``meta``; leases, alarms and members to their buckets; ``cluster`` holds version 3.5.0.
The auth tables are etcd's buckets in etcd's encoding and are copied byte for byte (a store
that never changed lacks the ``auth`` records; it is written as a fresh etcd's: disabled at
revision 1). raftkv's current revision is not stored: etcd derives it, and so does the way
back.

etcd → raftkv (a restore): the same in reverse. The current revision is the last ``key``
record's main revision or the finished compaction, whichever is later (etcd's rule). Auth
records are checked (``layout.check_auth_*``) and copied byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from raftkv.storage.alarm import AlarmMember, AlarmType
from raftkv.storage.backend import ConsistentIndex
from raftkv.storage.etcdsnap import layout
from raftkv.storage.etcdsnap.errors import SnapshotFormatError, SnapshotIncompatibleError
from raftkv.storage.members import MemberRecord
from raftkv.storage.mvcc import encoding, revision
from raftkv.storage.mvcc.txn import KeyValue

Record = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    id: int
    ttl_seconds: int
    remaining_ttl_seconds: int = 0  # 0: no checkpoint


@dataclass(frozen=True, slots=True)
class EtcdMeta:
    consistent_index: int = 0
    term: int = 0
    scheduled_compact_revision: int | None = None
    finished_compact_revision: int | None = None


# --- raftkv -> etcd -----------------------------------------------------------------------


def key_record_to_etcd(raftkv_key: bytes, raftkv_value: bytes) -> Record:
    packed, tombstone = revision.parse_revision_key(raftkv_key)
    kv = encoding.decode(raftkv_value)
    main, sub = revision.main_of(packed), revision.sub_of(packed)
    assert kv.mod_revision == main, f"DB_KEY record at {main} says mod_revision {kv.mod_revision}"
    value = layout.encode_tombstone(kv.key) if tombstone else layout.encode_key_value(kv)
    return layout.revision_key(main, sub, tombstone), value


def meta_to_etcd(consistent: ConsistentIndex, compacted_revision: int) -> list[Record]:
    records = [
        (layout.META_CONSISTENT_INDEX, layout.encode_u64(consistent.index)),
        (layout.META_TERM, layout.encode_u64(consistent.term)),
    ]
    if compacted_revision >= 0:
        compacted = layout.encode_compact_revision(compacted_revision)
        records.append((layout.META_FINISHED_COMPACT, compacted))
        records.append((layout.META_SCHEDULED_COMPACT, compacted))
    return sorted(records)


def leases_to_etcd(leases: Iterable[LeaseRecord]) -> list[Record]:
    return sorted(
        (
            layout.encode_u64(lease.id),
            layout.encode_lease(lease.id, lease.ttl_seconds, lease.remaining_ttl_seconds),
        )
        for lease in leases
    )


def alarms_to_etcd(alarms: Iterable[AlarmMember]) -> list[Record]:
    return sorted((layout.encode_alarm(a.member_id, int(a.alarm)), b"") for a in alarms)


def members_to_etcd(members: Iterable[MemberRecord]) -> list[Record]:
    return sorted((layout.member_key(m.id), layout.encode_member(m)) for m in members)


def cluster_to_etcd() -> list[Record]:
    return [(layout.CLUSTER_VERSION_KEY, layout.CLUSTER_VERSION)]


def auth_to_etcd(records: Iterable[Record]) -> list[Record]:
    """raftkv's ``auth`` table as etcd's bucket: the same records, and a fresh store's
    (disabled, revision 1) for those never written."""
    values = {
        layout.AUTH_ENABLED_KEY: layout.AUTH_DISABLED,
        layout.AUTH_REVISION_KEY: layout.encode_u64(layout.AUTH_INITIAL_REVISION),
    }
    values.update(records)
    for key, value in values.items():
        layout.check_auth_meta(key, value)
    return sorted(values.items())


# --- etcd -> raftkv -----------------------------------------------------------------------


def key_record_from_etcd(etcd_key: bytes, etcd_value: bytes) -> tuple[int, bytes, bytes]:
    """(main revision, DB_KEY key, DB_KEY value) of a ``key`` bucket record."""
    main, sub, tombstone = layout.parse_revision_key(etcd_key)
    where = f"key bucket: revision {main}.{sub}"
    if main > revision.MAIN_MAX or sub >= revision.SUB_LIMIT:
        raise SnapshotIncompatibleError(
            f"{where}: raftkv keeps main revisions up to {revision.MAIN_MAX} and "
            f"{revision.SUB_LIMIT} changes per revision"
        )
    kv = layout.decode_key_value(etcd_value, where)
    if not kv.key:
        raise SnapshotFormatError(f"{where}: a record without a key")
    if tombstone:
        value = encoding.encode_tombstone(kv.key, main)
    else:
        if kv.mod_revision != main or not 0 < kv.create_revision <= main or kv.version < 1:
            raise SnapshotFormatError(
                f"{where}: inconsistent record (create {kv.create_revision}, "
                f"mod {kv.mod_revision}, version {kv.version})"
            )
        value = encoding.encode(
            KeyValue(kv.key, kv.create_revision, main, kv.version, kv.value, kv.lease)
        )
    return main, revision.revision_key(revision.pack(main, sub), tombstone), value


def meta_from_etcd(records: Iterable[Record]) -> EtcdMeta:
    values = dict(records)

    def compaction(key: bytes) -> int | None:
        raw = values.get(key)
        return None if raw is None else layout.decode_compact_revision(raw, key.decode())

    index = values.get(layout.META_CONSISTENT_INDEX)
    term = values.get(layout.META_TERM)
    return EtcdMeta(
        consistent_index=0 if index is None else layout.decode_u64(index, "consistent_index"),
        term=0 if term is None else layout.decode_u64(term, "term"),
        scheduled_compact_revision=compaction(layout.META_SCHEDULED_COMPACT),
        finished_compact_revision=compaction(layout.META_FINISHED_COMPACT),
    )


def lease_from_etcd(key: bytes, value: bytes) -> LeaseRecord:
    lease_id, ttl_seconds, remaining_ttl_seconds = layout.decode_lease(key, value)
    if lease_id <= 0:
        raise SnapshotIncompatibleError(f"lease bucket: lease id {lease_id} (raftkv's are > 0)")
    if ttl_seconds < 1 or remaining_ttl_seconds < 0:
        raise SnapshotFormatError(
            f"lease bucket: lease {lease_id} with TTL {ttl_seconds} "
            f"(remaining {remaining_ttl_seconds})"
        )
    return LeaseRecord(lease_id, ttl_seconds, remaining_ttl_seconds)


def alarm_from_etcd(key: bytes) -> AlarmMember:
    member_id, alarm_type = layout.decode_alarm(key)
    try:
        alarm = AlarmType(alarm_type)
    except ValueError:
        raise SnapshotIncompatibleError(f"alarm bucket: unknown alarm type {alarm_type}") from None
    return AlarmMember(member_id, alarm)
