"""The replicated requests and their binary codec (the data of NORMAL Raft entries).

A proposal is ``encode(request_id, request)``; every member ``decode``\\ s the committed
entry and applies it (``raftkv.server.apply``). The request id lets the proposer match
the result of its own proposal; other members ignore it.

Format (all integers are LEB128 varints; signed ones are zigzag-encoded first)::

    entry    = version:u8 request_id:uvarint request
    request  = tag:u8 body
    bytes    = length:uvarint raw

Bodies, by tag (``flags`` is one byte of booleans, bit 0 first):

==========================  ===========================================================
PUT (1)                     key value lease:svarint flags(prev_kv, ignore_value,
                            ignore_lease)
DELETE_RANGE (2)            key range_end flags(prev_kv)
TXN (3)                     count compare*, count op*, count op* (success, failure)
COMPACTION (4)              revision:svarint flags(physical)
LEASE_GRANT (5)             id:svarint ttl_seconds:svarint
LEASE_REVOKE (6)            id:svarint
LEASE_CHECKPOINT (7)        count (id:svarint remaining_ttl_seconds:svarint)*
ALARM (8)                   action:u8 member_id:uvarint alarm:u8
RANGE (9)                   only as a txn op: key range_end limit revision sort_order:u8
                            sort_target:u8 flags(serializable, keys_only, count_only)
                            min_mod max_mod min_create max_create (svarints)
MEMBER_ATTRIBUTES (10)      member_id:uvarint name count client_url*
MEMBER_UPDATE (11)          member_id:uvarint count peer_url*
AUTHORIZED (12)             username auth_revision:uvarint request (a client's request
                            with its credentials, etcd's RequestHeader; never nested)
AUTH_ENABLE (13)            (no body)
AUTH_DISABLE (14)           (no body)
AUTHENTICATE (15)           name token_digest (the SHA-256 of the token's secret)
USER_ADD (16)               name password_hash flags(no_password)
USER_DELETE (17)            name
USER_CHANGE_PASSWORD (18)   name password_hash
USER_GRANT_ROLE (19)        user role
USER_REVOKE_ROLE (20)       name role
ROLE_ADD (21)               name
ROLE_DELETE (22)            role
ROLE_GRANT_PERMISSION (23)  name perm_type:u8 key range_end
ROLE_REVOKE_PERMISSION (24) role key range_end
==========================  ===========================================================

Passwords are never replicated: USER_ADD and USER_CHANGE_PASSWORD carry the bcrypt hash
the receiving member computed, AUTHENTICATE only a digest of the token.

A compare is ``result:u8 target:u8 key range_end version create_revision mod_revision
value lease``; every operand is kept so a decoded request equals the encoded one.

Deterministic (one encoding per request) and strict: decoding rejects an unknown version,
tag or enum value, a truncated or over-long varint, trailing bytes, and txns nested deeper
than ``MAX_TXN_DEPTH``, with ``RequestDecodeError``.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import TypeVar

from raftkv import limits
from raftkv.server.auth.permissions import PermissionType
from raftkv.server.varint import UINT64_MAX, ByteReader, put_svarint, put_uvarint
from raftkv.storage.alarm import AlarmType
from raftkv.storage.errors import RequestTooLargeError
from raftkv.storage.mvcc.txn import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

VERSION = 1
# A txn nests at most this deep; validate_txn's op budget already keeps real ones
# shallower (a nested txn gets what its parent left of MVCC_MAX_TXN_OPS).
MAX_TXN_DEPTH = limits.MVCC_MAX_TXN_OPS

_E = TypeVar("_E", bound=enum.IntEnum)


class RequestDecodeError(ValueError):
    """The entry's data is not a request this version can read."""


@dataclass(frozen=True, slots=True)
class LeaseGrantRequest:
    """etcd's LeaseGrant; the server picks a non-zero ``id`` before proposing."""

    id: int
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeRequest:
    id: int


@dataclass(frozen=True, slots=True)
class LeaseCheckpointRequest:
    """The primary's checkpoints: (lease id, remaining TTL in seconds; 0 clears)."""

    checkpoints: tuple[tuple[int, int], ...] = ()


class AlarmAction(enum.IntEnum):
    """etcd's AlarmRequest.AlarmAction (GET is served locally, never replicated)."""

    ACTIVATE = 1
    DEACTIVATE = 2


@dataclass(frozen=True, slots=True)
class AlarmRequest:
    action: AlarmAction
    member_id: int
    alarm: AlarmType


@dataclass(frozen=True, slots=True)
class MemberAttributesRequest:
    """A started member publishes its name and client URLs (etcd's attribute update)."""

    member_id: int
    name: str
    client_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MemberUpdateRequest:
    """etcd's MemberUpdate: new peer URLs for a member (no membership change)."""

    member_id: int
    peer_urls: tuple[str, ...]


# --- Auth (etcd's InternalRaftRequest auth fields) --------------------------------------


@dataclass(frozen=True, slots=True)
class AuthEnableRequest:
    pass


@dataclass(frozen=True, slots=True)
class AuthDisableRequest:
    pass


@dataclass(frozen=True, slots=True)
class AuthenticateRequest:
    """Registers a token on every member; the password was checked before proposing."""

    name: str
    token_digest: bytes


@dataclass(frozen=True, slots=True)
class UserAddRequest:
    name: str
    password_hash: bytes  # bcrypt's; empty for a no-password user
    no_password: bool = False


@dataclass(frozen=True, slots=True)
class UserDeleteRequest:
    name: str


@dataclass(frozen=True, slots=True)
class UserChangePasswordRequest:
    name: str
    password_hash: bytes


@dataclass(frozen=True, slots=True)
class UserGrantRoleRequest:
    user: str
    role: str


@dataclass(frozen=True, slots=True)
class UserRevokeRoleRequest:
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class RoleAddRequest:
    name: str


@dataclass(frozen=True, slots=True)
class RoleDeleteRequest:
    role: str


@dataclass(frozen=True, slots=True)
class RoleGrantPermissionRequest:
    name: str
    perm_type: PermissionType
    key: bytes
    range_end: bytes


@dataclass(frozen=True, slots=True)
class RoleRevokePermissionRequest:
    role: str
    key: bytes
    range_end: bytes


AuthManagementRequest = (
    AuthEnableRequest
    | AuthDisableRequest
    | UserAddRequest
    | UserDeleteRequest
    | UserChangePasswordRequest
    | UserGrantRoleRequest
    | UserRevokeRoleRequest
    | RoleAddRequest
    | RoleDeleteRequest
    | RoleGrantPermissionRequest
    | RoleRevokePermissionRequest
)
"""The requests only root may make once auth is enabled (etcd's needAdminPermission)."""

AUTH_MANAGEMENT_REQUESTS = (
    AuthEnableRequest,
    AuthDisableRequest,
    UserAddRequest,
    UserDeleteRequest,
    UserChangePasswordRequest,
    UserGrantRoleRequest,
    UserRevokeRoleRequest,
    RoleAddRequest,
    RoleDeleteRequest,
    RoleGrantPermissionRequest,
    RoleRevokePermissionRequest,
)

PlainRequest = (
    PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseCheckpointRequest
    | AlarmRequest
    | MemberAttributesRequest
    | MemberUpdateRequest
    | AuthenticateRequest
    | AuthManagementRequest
)


@dataclass(frozen=True, slots=True)
class AuthorizedRequest:
    """A client's request with its credentials (etcd's RequestHeader): the user name
    ("" for none) and the auth revision its token was checked at (0: no credentials).
    Requests the member makes itself (lease expiry, checkpoints, alarms, attributes,
    auto compaction) are proposed bare and are not subject to permissions."""

    username: str
    auth_revision: int
    request: PlainRequest


Request = PlainRequest | AuthorizedRequest


class _Tag(enum.IntEnum):
    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACTION = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    LEASE_CHECKPOINT = 7
    ALARM = 8
    RANGE = 9
    MEMBER_ATTRIBUTES = 10
    MEMBER_UPDATE = 11
    AUTHORIZED = 12
    AUTH_ENABLE = 13
    AUTH_DISABLE = 14
    AUTHENTICATE = 15
    USER_ADD = 16
    USER_DELETE = 17
    USER_CHANGE_PASSWORD = 18
    USER_GRANT_ROLE = 19
    USER_REVOKE_ROLE = 20
    ROLE_ADD = 21
    ROLE_DELETE = 22
    ROLE_GRANT_PERMISSION = 23
    ROLE_REVOKE_PERMISSION = 24


# --- Encoding ------------------------------------------------------------------------


def encode(request_id: int, request: Request, max_bytes: int = limits.MAX_REQUEST_BYTES) -> bytes:
    """The entry data for ``request``; RequestTooLargeError beyond ``max_bytes`` (the
    server's --max-request-bytes, at most MAX_REQUEST_BYTES_CEILING)."""
    assert 0 <= request_id <= UINT64_MAX, f"request id {request_id} is not a uint64"
    assert 0 < max_bytes <= limits.MAX_REQUEST_BYTES_CEILING
    out = bytearray([VERSION])
    put_uvarint(out, request_id)
    _put_request(out, request)
    if len(out) > max_bytes:
        raise RequestTooLargeError()
    return bytes(out)


def _put_request(out: bytearray, request: Request) -> None:
    match request:
        case PutRequest() | DeleteRangeRequest() | TxnRequest():
            _put_op(out, request, depth=0)
        case CompactionRequest():
            out.append(_Tag.COMPACTION)
            put_svarint(out, request.revision)
            _put_flags(out, request.physical)
        case LeaseGrantRequest():
            out.append(_Tag.LEASE_GRANT)
            put_svarint(out, request.id)
            put_svarint(out, request.ttl_seconds)
        case LeaseRevokeRequest():
            out.append(_Tag.LEASE_REVOKE)
            put_svarint(out, request.id)
        case LeaseCheckpointRequest():
            out.append(_Tag.LEASE_CHECKPOINT)
            put_uvarint(out, len(request.checkpoints))
            for lease_id, remaining in request.checkpoints:
                put_svarint(out, lease_id)
                put_svarint(out, remaining)
        case AlarmRequest():
            out.append(_Tag.ALARM)
            out.append(int(request.action))
            assert 0 <= request.member_id <= UINT64_MAX
            put_uvarint(out, request.member_id)
            out.append(int(request.alarm))
        case MemberAttributesRequest():
            out.append(_Tag.MEMBER_ATTRIBUTES)
            put_uvarint(out, request.member_id)
            _put_bytes(out, request.name.encode())
            _put_strings(out, request.client_urls)
        case MemberUpdateRequest():
            out.append(_Tag.MEMBER_UPDATE)
            put_uvarint(out, request.member_id)
            _put_strings(out, request.peer_urls)
        case AuthorizedRequest():
            assert not isinstance(request.request, AuthorizedRequest), "never nested"
            out.append(_Tag.AUTHORIZED)
            _put_text(out, request.username)
            put_uvarint(out, request.auth_revision)
            _put_request(out, request.request)
        case _:
            _put_auth_request(out, request)


def _put_auth_request(out: bytearray, request: Request) -> None:
    match request:
        case AuthEnableRequest():
            out.append(_Tag.AUTH_ENABLE)
        case AuthDisableRequest():
            out.append(_Tag.AUTH_DISABLE)
        case AuthenticateRequest():
            out.append(_Tag.AUTHENTICATE)
            _put_text(out, request.name)
            _put_bytes(out, request.token_digest)
        case UserAddRequest():
            out.append(_Tag.USER_ADD)
            _put_text(out, request.name)
            _put_bytes(out, request.password_hash)
            _put_flags(out, request.no_password)
        case UserDeleteRequest():
            out.append(_Tag.USER_DELETE)
            _put_text(out, request.name)
        case UserChangePasswordRequest():
            out.append(_Tag.USER_CHANGE_PASSWORD)
            _put_text(out, request.name)
            _put_bytes(out, request.password_hash)
        case UserGrantRoleRequest():
            out.append(_Tag.USER_GRANT_ROLE)
            _put_text(out, request.user)
            _put_text(out, request.role)
        case UserRevokeRoleRequest():
            out.append(_Tag.USER_REVOKE_ROLE)
            _put_text(out, request.name)
            _put_text(out, request.role)
        case RoleAddRequest():
            out.append(_Tag.ROLE_ADD)
            _put_text(out, request.name)
        case RoleDeleteRequest():
            out.append(_Tag.ROLE_DELETE)
            _put_text(out, request.role)
        case RoleGrantPermissionRequest():
            out.append(_Tag.ROLE_GRANT_PERMISSION)
            _put_text(out, request.name)
            out.append(int(request.perm_type))
            _put_bytes(out, request.key)
            _put_bytes(out, request.range_end)
        case RoleRevokePermissionRequest():
            out.append(_Tag.ROLE_REVOKE_PERMISSION)
            _put_text(out, request.role)
            _put_bytes(out, request.key)
            _put_bytes(out, request.range_end)
        case _:
            raise TypeError(f"not a replicated request: {request!r}")


def _put_text(out: bytearray, value: str) -> None:
    _put_bytes(out, value.encode())


def _put_strings(out: bytearray, values: tuple[str, ...]) -> None:
    put_uvarint(out, len(values))
    for value in values:
        _put_bytes(out, value.encode())


def _put_op(out: bytearray, op: RequestOp, depth: int) -> None:
    match op:
        case PutRequest():
            out.append(_Tag.PUT)
            _put_bytes(out, op.key)
            _put_bytes(out, op.value)
            put_svarint(out, op.lease)
            _put_flags(out, op.prev_kv, op.ignore_value, op.ignore_lease)
        case DeleteRangeRequest():
            out.append(_Tag.DELETE_RANGE)
            _put_bytes(out, op.key)
            _put_bytes(out, op.range_end)
            _put_flags(out, op.prev_kv)
        case RangeRequest():
            out.append(_Tag.RANGE)
            _put_bytes(out, op.key)
            _put_bytes(out, op.range_end)
            put_svarint(out, op.limit)
            put_svarint(out, op.revision)
            out.append(int(op.sort_order))
            out.append(int(op.sort_target))
            _put_flags(out, op.serializable, op.keys_only, op.count_only)
            for value in (
                op.min_mod_revision,
                op.max_mod_revision,
                op.min_create_revision,
                op.max_create_revision,
            ):
                put_svarint(out, value)
        case TxnRequest():
            if depth >= MAX_TXN_DEPTH:
                raise RequestTooLargeError("etcdserver: txn nested too deep")
            out.append(_Tag.TXN)
            put_uvarint(out, len(op.compare))
            for compare in op.compare:
                _put_compare(out, compare)
            for branch in (op.success, op.failure):
                put_uvarint(out, len(branch))
                for nested in branch:
                    _put_op(out, nested, depth + 1)
        case _:
            raise TypeError(f"not a txn op: {op!r}")


def _put_compare(out: bytearray, compare: Compare) -> None:
    out.append(int(compare.result))
    out.append(int(compare.target))
    _put_bytes(out, compare.key)
    _put_bytes(out, compare.range_end)
    put_svarint(out, compare.version)
    put_svarint(out, compare.create_revision)
    put_svarint(out, compare.mod_revision)
    _put_bytes(out, compare.value)
    put_svarint(out, compare.lease)


def _put_bytes(out: bytearray, value: bytes) -> None:
    put_uvarint(out, len(value))
    out += value


def _put_flags(out: bytearray, *flags: bool) -> None:
    out.append(sum(1 << bit for bit, flag in enumerate(flags) if flag))


# --- Decoding ------------------------------------------------------------------------


def decode(data: bytes) -> tuple[int, Request]:
    """(request id, request) of an entry's data; RequestDecodeError if malformed."""
    reader = _Reader(data)
    version = reader.byte()
    if version != VERSION:
        raise RequestDecodeError(f"request version {version}, expected {VERSION}")
    request_id = reader.uvarint()
    request = reader.request()
    if not reader.at_end():
        raise RequestDecodeError(f"{len(data) - reader.pos} trailing bytes")
    return request_id, request


# Every entry applied is decoded on every member: looking an enum member up by calling the
# enum, and building a flags list, were a fifth of a put's decoding.
@functools.cache
def _members_by_value(kind: type[_E]) -> dict[int, _E]:
    return {member.value: member for member in kind}


@functools.cache
def _flag_tuples(count: int) -> tuple[tuple[bool, ...], ...]:
    """For each byte value below 2**count, its low ``count`` bits as booleans."""
    bits = range(count)
    return tuple(tuple(bool(value >> bit & 1) for bit in bits) for value in range(1 << count))


class _Reader(ByteReader):
    error = RequestDecodeError
    what = "request"

    def flags(self, count: int) -> tuple[bool, ...]:
        value = self.byte()
        if value >> count:
            raise RequestDecodeError(f"unknown flag bits {value:#x}")
        return _flag_tuples(count)[value]

    def enum_byte(self, kind: type[_E]) -> _E:
        value = self.byte()
        member: _E | None = _members_by_value(kind).get(value)
        if member is None:
            raise RequestDecodeError(f"{value} is not a {kind.__name__}")
        return member

    def request(self) -> Request:
        tag = self.enum_byte(_Tag)
        if tag is _Tag.AUTHORIZED:
            username, auth_revision = self.text(), self.uvarint()
            inner_tag = self.enum_byte(_Tag)
            if inner_tag is _Tag.AUTHORIZED:
                raise RequestDecodeError("an authorized request inside another")
            inner = self.plain_request(inner_tag)
            return AuthorizedRequest(username, auth_revision, inner)
        return self.plain_request(tag)

    def plain_request(self, tag: _Tag) -> PlainRequest:
        if tag >= _Tag.AUTH_ENABLE:
            return self.auth_request(tag)
        match tag:
            case _Tag.PUT | _Tag.DELETE_RANGE | _Tag.TXN:
                op = self.op_body(tag, depth=0)
                assert not isinstance(op, RangeRequest)
                return op
            case _Tag.COMPACTION:
                revision = self.svarint()
                (physical,) = self.flags(1)
                return CompactionRequest(revision, physical)
            case _Tag.LEASE_GRANT:
                return LeaseGrantRequest(self.svarint(), self.svarint())
            case _Tag.LEASE_REVOKE:
                return LeaseRevokeRequest(self.svarint())
            case _Tag.LEASE_CHECKPOINT:
                count = self.uvarint()
                points = [(self.svarint(), self.svarint()) for _ in self.bounded(count)]
                return LeaseCheckpointRequest(tuple(points))
            case _Tag.ALARM:
                action = self.enum_byte(AlarmAction)
                member_id = self.uvarint()
                alarm = self.enum_byte(AlarmType)
                return AlarmRequest(action, member_id, alarm)
            case _Tag.MEMBER_ATTRIBUTES:
                member_id = self.uvarint()
                name = self.text()
                return MemberAttributesRequest(member_id, name, self.strings())
            case _Tag.MEMBER_UPDATE:
                member_id = self.uvarint()
                return MemberUpdateRequest(member_id, self.strings())
            case _Tag.RANGE:
                raise RequestDecodeError("a range is replicated only inside a txn")
        raise AssertionError(f"unhandled tag {tag!r}")

    def auth_request(self, tag: _Tag) -> PlainRequest:
        match tag:
            case _Tag.AUTH_ENABLE:
                return AuthEnableRequest()
            case _Tag.AUTH_DISABLE:
                return AuthDisableRequest()
            case _Tag.AUTHENTICATE:
                return AuthenticateRequest(self.text(), self.raw())
            case _Tag.USER_ADD:
                name, password_hash = self.text(), self.raw()
                (no_password,) = self.flags(1)
                return UserAddRequest(name, password_hash, no_password)
            case _Tag.USER_DELETE:
                return UserDeleteRequest(self.text())
            case _Tag.USER_CHANGE_PASSWORD:
                return UserChangePasswordRequest(self.text(), self.raw())
            case _Tag.USER_GRANT_ROLE:
                return UserGrantRoleRequest(self.text(), self.text())
            case _Tag.USER_REVOKE_ROLE:
                return UserRevokeRoleRequest(self.text(), self.text())
            case _Tag.ROLE_ADD:
                return RoleAddRequest(self.text())
            case _Tag.ROLE_DELETE:
                return RoleDeleteRequest(self.text())
            case _Tag.ROLE_GRANT_PERMISSION:
                name = self.text()
                perm_type = self.enum_byte(PermissionType)
                return RoleGrantPermissionRequest(name, perm_type, self.raw(), self.raw())
            case _Tag.ROLE_REVOKE_PERMISSION:
                return RoleRevokePermissionRequest(self.text(), self.raw(), self.raw())
        raise RequestDecodeError(f"{tag.name} is not an auth request")

    def text(self) -> str:
        try:
            return self.raw().decode()
        except UnicodeDecodeError as error:
            raise RequestDecodeError(f"text field is not UTF-8: {error}") from error

    def strings(self) -> tuple[str, ...]:
        return tuple(self.text() for _ in self.bounded(self.uvarint()))

    def bounded(self, count: int) -> range:
        # Every item takes at least one byte: a larger count is malformed.
        if count > len(self.data) - self.pos:
            raise RequestDecodeError(f"count {count} exceeds the remaining bytes")
        return range(count)

    def op(self, depth: int) -> RequestOp:
        return self.op_body(self.enum_byte(_Tag), depth)

    def op_body(self, tag: _Tag, depth: int) -> RequestOp:
        match tag:
            case _Tag.PUT:
                key, value, lease = self.raw(), self.raw(), self.svarint()
                prev_kv, ignore_value, ignore_lease = self.flags(3)
                return PutRequest(key, value, lease, prev_kv, ignore_value, ignore_lease)
            case _Tag.DELETE_RANGE:
                key, range_end = self.raw(), self.raw()
                (prev_kv,) = self.flags(1)
                return DeleteRangeRequest(key, range_end, prev_kv)
            case _Tag.RANGE:
                key, range_end = self.raw(), self.raw()
                limit, revision = self.svarint(), self.svarint()
                sort_order = self.enum_byte(SortOrder)
                sort_target = self.enum_byte(SortTarget)
                serializable, keys_only, count_only = self.flags(3)
                bounds = [self.svarint() for _ in range(4)]
                return RangeRequest(
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable,
                    keys_only,
                    count_only,
                    *bounds,
                )
            case _Tag.TXN:
                if depth >= MAX_TXN_DEPTH:
                    raise RequestDecodeError("txn nested too deep")
                compares = tuple(self.compare() for _ in self.bounded(self.uvarint()))
                success = tuple(self.op(depth + 1) for _ in self.bounded(self.uvarint()))
                failure = tuple(self.op(depth + 1) for _ in self.bounded(self.uvarint()))
                return TxnRequest(compares, success, failure)
        raise RequestDecodeError(f"{tag.name} is not a txn op")

    def compare(self) -> Compare:
        result = self.enum_byte(CompareResult)
        target = self.enum_byte(CompareTarget)
        key, range_end = self.raw(), self.raw()
        version, create_revision, mod_revision = self.svarint(), self.svarint(), self.svarint()
        value = self.raw()
        lease = self.svarint()
        return Compare(
            result, target, key, range_end, version, create_revision, mod_revision, value, lease
        )
