"""The client's public data types: results, events, members, and the txn builders.

All are frozen dataclasses of plain Python values; no protobuf object appears in the
public API. Keys and values given by callers may be `str` (encoded as UTF-8) or `bytes`;
keys and values returned are always `bytes`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

KeyLike = str | bytes


def to_bytes(data: KeyLike) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix` (etcd's rule: drop
    trailing 0xff bytes, increment the last byte; "\\0" means "to the end")."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def resolve_range(key: KeyLike, range_end: KeyLike | None, prefix: bool) -> tuple[bytes, bytes]:
    """(key, range_end) bytes for the request; an empty prefix selects all keys."""
    if prefix and range_end is not None:
        raise ValueError("give either prefix=True or range_end, not both")
    key_bytes = to_bytes(key)
    if prefix:
        if not key_bytes:
            return b"\0", b"\0"
        return key_bytes, prefix_range_end(key_bytes)
    return key_bytes, b"" if range_end is None else to_bytes(range_end)


# --- Results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    cluster_id: int
    member_id: int
    revision: int  # the store revision when the request was applied (0 for non-KV calls)
    raft_term: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # 1 on creation, +1 per change; a deleted key's tombstone has version 0
    lease: int  # 0 = no lease


@dataclass(frozen=True, slots=True)
class RangeResult:
    header: ResponseHeader
    kvs: tuple[KeyValue, ...]
    more: bool  # more keys matched than `limit` returned
    count: int  # keys matched, ignoring limit


@dataclass(frozen=True, slots=True)
class PutResult:
    header: ResponseHeader
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: ResponseHeader
    deleted: int
    prev_kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    header: ResponseHeader
    succeeded: bool
    # One result per op of the branch that ran, in order.
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...]


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: the key, with mod_revision = the deletion's revision
    prev_kv: KeyValue | None  # only when the watch asked for prev_kv


@dataclass(frozen=True, slots=True)
class WatchResponse:
    header: ResponseHeader
    events: tuple[Event, ...]  # empty for a progress notification
    compact_revision: int

    @property
    def revision(self) -> int:
        """The store revision when the response was sent (a progress notification's
        promise: every event up to here has been delivered)."""
        return self.header.revision


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # seconds


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    id: int
    ttl: int  # remaining seconds; -1 if the lease has expired or does not exist
    granted_ttl: int
    keys: tuple[bytes, ...]  # only when asked for


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True, slots=True)
class MemberAddResult:
    header: ResponseHeader
    member: Member
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Status:
    header: ResponseHeader
    version: str
    db_size: int
    leader: int  # member id of the leader as this member sees it, 0 if none
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: tuple[str, ...]
    db_size_in_use: int
    is_learner: bool

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.header.member_id


class AlarmType(enum.IntEnum):
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: AlarmType


@dataclass(frozen=True, slots=True)
class LeaderKey:
    """The server-side Election service's handle on a campaign's key."""

    name: bytes
    key: bytes
    rev: int  # create revision of the key
    lease: int


# --- Range options -----------------------------------------------------------------


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


# --- Txn builders --------------------------------------------------------------------


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn condition. Build it with the comparison operators on a target:

    Compare.value("k") == "x"        Compare.version("k") > 0
    Compare.mod_revision("k") < 5    Compare.create_revision("k") == 0
    Compare.lease("k") != 0          Compare.value("a", range_end="b") == "x"
    """

    key: bytes
    range_end: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes

    @staticmethod
    def value(key: KeyLike, *, range_end: KeyLike | None = None) -> CompareOperand:
        return CompareOperand(to_bytes(key), _optional_bytes(range_end), CompareTarget.VALUE)

    @staticmethod
    def version(key: KeyLike, *, range_end: KeyLike | None = None) -> CompareOperand:
        return CompareOperand(to_bytes(key), _optional_bytes(range_end), CompareTarget.VERSION)

    @staticmethod
    def create_revision(key: KeyLike, *, range_end: KeyLike | None = None) -> CompareOperand:
        return CompareOperand(to_bytes(key), _optional_bytes(range_end), CompareTarget.CREATE)

    @staticmethod
    def mod_revision(key: KeyLike, *, range_end: KeyLike | None = None) -> CompareOperand:
        return CompareOperand(to_bytes(key), _optional_bytes(range_end), CompareTarget.MOD)

    @staticmethod
    def lease(key: KeyLike, *, range_end: KeyLike | None = None) -> CompareOperand:
        return CompareOperand(to_bytes(key), _optional_bytes(range_end), CompareTarget.LEASE)


def _optional_bytes(data: KeyLike | None) -> bytes:
    return b"" if data is None else to_bytes(data)


@dataclass(frozen=True, slots=True, eq=False)
class CompareOperand:
    """The left side of a txn comparison; its operators return a `Compare`.

    `==` and `!=` build a condition instead of answering a question, which is why they
    override object's bool-returning signatures.
    """

    key: bytes
    range_end: bytes
    target: CompareTarget

    def _compare(self, result: CompareResult, operand: object) -> Compare:
        if self.target is CompareTarget.VALUE:
            if not isinstance(operand, str | bytes):
                raise TypeError(f"a value comparison needs str or bytes, not {operand!r}")
            return Compare(self.key, self.range_end, self.target, result, to_bytes(operand))
        if not isinstance(operand, int) or isinstance(operand, bool):
            raise TypeError(f"a {self.target.name} comparison needs an int, not {operand!r}")
        return Compare(self.key, self.range_end, self.target, result, operand)

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._compare(CompareResult.EQUAL, operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._compare(CompareResult.NOT_EQUAL, operand)

    def __gt__(self, operand: object) -> Compare:
        return self._compare(CompareResult.GREATER, operand)

    def __lt__(self, operand: object) -> Compare:
        return self._compare(CompareResult.LESS, operand)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class GetOp:
    key: bytes
    range_end: bytes = b""
    revision: int = 0
    limit: int = 0
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutOp:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class TxnOp:
    compare: tuple[Compare, ...]
    success: tuple[RequestOp, ...]
    failure: tuple[RequestOp, ...]


RequestOp = GetOp | PutOp | DeleteOp | TxnOp


class Op:
    """Constructors for txn operations (same options as the client's methods)."""

    @staticmethod
    def get(
        key: KeyLike,
        *,
        range_end: KeyLike | None = None,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> GetOp:
        key_bytes, end = resolve_range(key, range_end, prefix)
        return GetOp(
            key_bytes,
            end,
            revision,
            limit,
            serializable,
            keys_only,
            count_only,
            sort_order,
            sort_target,
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        )

    @staticmethod
    def put(
        key: KeyLike,
        value: KeyLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutOp:
        return PutOp(to_bytes(key), to_bytes(value), lease, prev_kv, ignore_value, ignore_lease)

    @staticmethod
    def delete(
        key: KeyLike,
        *,
        range_end: KeyLike | None = None,
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteOp:
        key_bytes, end = resolve_range(key, range_end, prefix)
        return DeleteOp(key_bytes, end, prev_kv)

    @staticmethod
    def txn(
        compare: Sequence[Compare] = (),
        success: Sequence[RequestOp] = (),
        failure: Sequence[RequestOp] = (),
    ) -> TxnOp:
        return TxnOp(tuple(compare), tuple(success), tuple(failure))


def is_read_only(op: RequestOp) -> bool:
    """True if the op (with every nested op) only reads, so repeating it is safe."""
    if isinstance(op, GetOp):
        return True
    if isinstance(op, TxnOp):
        return all(is_read_only(inner) for inner in (*op.success, *op.failure))
    return False
