"""etcd's bucket layout: bucket names, keys and value encodings (pure functions).

Facts, from etcd's ``server/storage/schema`` and ``server/storage/mvcc`` (3.5):

- ``key``: key = revision, 8-byte big-endian main, ``_``, 8-byte big-endian sub (17 bytes),
  plus ``t`` for a tombstone; value = ``mvccpb.KeyValue`` protobuf (a tombstone's holds
  only the key).
- ``meta``: ``consistent_index`` and ``term`` (8-byte big-endian), ``scheduledCompactRev``
  and ``finishedCompactRev`` (a 17-byte revision with sub 0). etcd derives the current
  revision from the last ``key`` record (or the compaction, if that is later).
- ``lease``: key = lease id, 8-byte big-endian; value = ``leasepb.Lease`` {ID = 1, TTL = 2,
  RemainingTTL = 3}, all int64.
- ``alarm``: key = ``etcdserverpb.AlarmMember`` protobuf, value empty.
- ``members``: key = member id in lowercase hex; value = JSON {id, peerURLs, isLearner
  (omitted when false), name, clientURLs (omitted when empty)}. ``members_removed``: key as
  ``members``, value ``removed``. ``cluster``: ``clusterVersion`` = e.g. ``3.5.0``.
- ``auth``: ``authEnabled`` = 0x00 or 0x01, ``authRevision`` = 8-byte big-endian;
  ``authUsers``, ``authRoles``: ``authpb.User`` and ``authpb.Role`` protobufs keyed by
  name. raftkv's backend keeps the same three tables in the same encoding.
"""

from __future__ import annotations

import json
import struct

from google.protobuf.message import DecodeError

from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.storage.etcdsnap import protowire
from raftkv.storage.etcdsnap.errors import SnapshotFormatError
from raftkv.storage.members import MemberRecord
from raftkv.storage.mvcc.txn import KeyValue

BUCKET_KEY = b"key"
BUCKET_META = b"meta"
BUCKET_LEASE = b"lease"
BUCKET_ALARM = b"alarm"
BUCKET_CLUSTER = b"cluster"
BUCKET_MEMBERS = b"members"
BUCKET_MEMBERS_REMOVED = b"members_removed"
BUCKET_AUTH = b"auth"
BUCKET_AUTH_USERS = b"authUsers"
BUCKET_AUTH_ROLES = b"authRoles"
# What a raftkv snapshot holds: every bucket etcd 3.5 creates, in bbolt's (byte) order.
BUCKETS = tuple(
    sorted(
        (
            BUCKET_KEY,
            BUCKET_META,
            BUCKET_LEASE,
            BUCKET_ALARM,
            BUCKET_CLUSTER,
            BUCKET_MEMBERS,
            BUCKET_MEMBERS_REMOVED,
            BUCKET_AUTH,
            BUCKET_AUTH_USERS,
            BUCKET_AUTH_ROLES,
        )
    )
)

META_CONSISTENT_INDEX = b"consistent_index"
META_TERM = b"term"
META_SCHEDULED_COMPACT = b"scheduledCompactRev"
META_FINISHED_COMPACT = b"finishedCompactRev"
CLUSTER_VERSION_KEY = b"clusterVersion"
# The cluster version raftkv's API speaks (etcd stores major.minor.0).
CLUSTER_VERSION = b"3.5.0"
AUTH_ENABLED_KEY = b"authEnabled"
AUTH_REVISION_KEY = b"authRevision"
AUTH_DISABLED = b"\x00"
AUTH_ENABLED = b"\x01"
# What a store that never changed holds: auth disabled at revision 1 (as a fresh etcd).
AUTH_INITIAL_REVISION = 1
MEMBER_REMOVED = b"removed"

_U64 = struct.Struct(">Q")
_REVISION = struct.Struct(">QcQ")  # main, b"_", sub
REVISION_KEY_BYTES = _REVISION.size
TOMBSTONE_MARK = b"t"
_INT64_MAX = (1 << 63) - 1

assert REVISION_KEY_BYTES == 17

LEASE_FIELD_ID = 1
LEASE_FIELD_TTL = 2
LEASE_FIELD_REMAINING_TTL = 3


# --- Revisions and integers ---------------------------------------------------------------


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    assert 0 <= main <= _INT64_MAX and 0 <= sub <= _INT64_MAX
    key = _REVISION.pack(main, b"_", sub)
    return key + TOMBSTONE_MARK if tombstone else key


def parse_revision_key(key: bytes) -> tuple[int, int, bool]:
    """(main, sub, is tombstone) of a ``key`` bucket key."""
    tombstone = len(key) == REVISION_KEY_BYTES + 1
    if not (len(key) == REVISION_KEY_BYTES or (tombstone and key.endswith(TOMBSTONE_MARK))):
        raise SnapshotFormatError(f"key bucket: {key.hex()} is not a revision")
    main, separator, sub = _REVISION.unpack_from(key)
    if separator != b"_" or main > _INT64_MAX or sub > _INT64_MAX:
        raise SnapshotFormatError(f"key bucket: {key.hex()} is not a revision")
    return main, sub, tombstone


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(data: bytes, what: str) -> int:
    if len(data) != _U64.size:
        raise SnapshotFormatError(f"{what}: {len(data)} bytes, not 8")
    return int(_U64.unpack(data)[0])


def encode_compact_revision(main: int) -> bytes:
    return revision_key(main, 0)


def decode_compact_revision(data: bytes, what: str) -> int:
    if len(data) != REVISION_KEY_BYTES:
        raise SnapshotFormatError(f"{what}: {len(data)} bytes, not a revision")
    main, _, _ = parse_revision_key(data)
    return main


# --- Records ------------------------------------------------------------------------------


def encode_key_value(kv: KeyValue) -> bytes:
    message = kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )
    return message.SerializeToString(deterministic=True)


def encode_tombstone(key: bytes) -> bytes:
    return kv_pb2.KeyValue(key=key).SerializeToString(deterministic=True)


def decode_key_value(data: bytes, where: str) -> KeyValue:
    message = kv_pb2.KeyValue()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise SnapshotFormatError(f"{where}: not a mvccpb.KeyValue: {error}") from error
    return KeyValue(
        key=message.key,
        create_revision=message.create_revision,
        mod_revision=message.mod_revision,
        version=message.version,
        value=message.value,
        lease=message.lease,
    )


def encode_lease(lease_id: int, ttl_seconds: int, remaining_ttl_seconds: int) -> bytes:
    return protowire.encode_int64_fields(
        (
            (LEASE_FIELD_ID, lease_id),
            (LEASE_FIELD_TTL, ttl_seconds),
            (LEASE_FIELD_REMAINING_TTL, remaining_ttl_seconds),
        )
    )


def decode_lease(key: bytes, value: bytes) -> tuple[int, int, int]:
    """(id, ttl seconds, remaining ttl seconds) of a ``lease`` record."""
    where = f"lease bucket: {key.hex()}"
    fields = protowire.decode_int64_fields(value, where)
    lease_id = fields.get(LEASE_FIELD_ID, 0)
    key_id = decode_u64(key, where)
    if key_id != lease_id & ((1 << 64) - 1):
        raise SnapshotFormatError(f"{where}: holds lease {lease_id}")
    return (
        lease_id,
        fields.get(LEASE_FIELD_TTL, 0),
        fields.get(LEASE_FIELD_REMAINING_TTL, 0),
    )


def encode_alarm(member_id: int, alarm_type: int) -> bytes:
    message = rpc_pb2.AlarmMember(memberID=member_id, alarm=alarm_type)  # type: ignore[arg-type]
    return message.SerializeToString(deterministic=True)


def decode_alarm(key: bytes) -> tuple[int, int]:
    """(member id, alarm type) of an ``alarm`` key."""
    message = rpc_pb2.AlarmMember()
    try:
        message.ParseFromString(key)
    except DecodeError as error:
        raise SnapshotFormatError(f"alarm bucket: {key.hex()}: {error}") from error
    return message.memberID, int(message.alarm)


def member_key(member_id: int) -> bytes:
    return f"{member_id:x}".encode()


def encode_member(member: MemberRecord) -> bytes:
    body: dict[str, object] = {"id": member.id, "peerURLs": list(member.peer_urls)}
    if member.is_learner:
        body["isLearner"] = True
    if member.name:
        body["name"] = member.name
    if member.client_urls:
        body["clientURLs"] = list(member.client_urls)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_member(key: bytes, value: bytes) -> MemberRecord:
    where = f"members bucket: {key!r}"
    try:
        member_id = int(key.decode("ascii"), 16)
        body = json.loads(value)
        return MemberRecord(
            id=member_id,
            name=str(body.get("name", "")),
            peer_urls=tuple(str(url) for url in body.get("peerURLs") or ()),
            client_urls=tuple(str(url) for url in body.get("clientURLs") or ()),
            is_learner=bool(body.get("isLearner", False)),
        )
    except (ValueError, AttributeError) as error:
        raise SnapshotFormatError(f"{where}: {error}") from error


# --- Auth ---------------------------------------------------------------------------------


def check_auth_meta(key: bytes, value: bytes) -> None:
    """An ``auth`` bucket record: the enabled flag (one byte, 0 or 1) or the revision."""
    if key == AUTH_ENABLED_KEY:
        if value not in (AUTH_DISABLED, AUTH_ENABLED):
            raise SnapshotFormatError(f"auth bucket: authEnabled is {value.hex()}, not 00 or 01")
    elif key == AUTH_REVISION_KEY:
        decode_u64(value, "auth bucket: authRevision")
    else:
        raise SnapshotFormatError(f"auth bucket: unknown key {key!r}")


def check_auth_user(key: bytes, value: bytes) -> None:
    """An ``authUsers`` record: an ``authpb.User`` named as its key."""
    user = auth_pb2.User()
    try:
        user.ParseFromString(value)
    except DecodeError as error:
        raise SnapshotFormatError(f"authUsers bucket: {key!r}: {error}") from error
    if not key or user.name != key:
        raise SnapshotFormatError(f"authUsers bucket: {key!r} holds user {user.name!r}")


def check_auth_role(key: bytes, value: bytes) -> None:
    """An ``authRoles`` record: an ``authpb.Role`` named as its key, known permission types."""
    role = auth_pb2.Role()
    try:
        role.ParseFromString(value)
    except DecodeError as error:
        raise SnapshotFormatError(f"authRoles bucket: {key!r}: {error}") from error
    if not key or role.name != key:
        raise SnapshotFormatError(f"authRoles bucket: {key!r} holds role {role.name!r}")
    known = set(auth_pb2.Permission.Type.values())
    for permission in role.keyPermission:
        if permission.permType not in known:
            raise SnapshotFormatError(
                f"authRoles bucket: {key!r} grants unknown permission type {permission.permType}"
            )
