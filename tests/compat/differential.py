"""Differential testing against etcd: the operation generator, the normalizer, the comparator.

``OpGenerator(seed).ops(observed)`` yields a seeded random sequence of KV, lease and watch
operations over a small key space. Parameters that depend on the store (revisions in the
past, a known lease, an open watch) are drawn from ``Observed``, which the runner updates
from the reference server's answers (etcd's); both servers must answer the same anyway, so
a seed always replays the same sequence.

``normalize`` turns an answer into JSON-like data that must be equal on both servers: the
header's cluster id, member id and raft term are dropped (they differ by nature), the
header's revision is kept (both stores start empty at revision 1); bytes fields are shown
as Python bytes literals. A few fields are normalized with a reason:

* LeaseTimeToLive ``TTL`` counts down with wall time: it is checked to lie between the
  granted TTL and what the time since the grant (or last keepalive) leaves, then replaced
  by ``"in window"``. Its ``keys`` are sorted (etcd lists them in map order).
* LeaseLeases lists are sorted by ID (etcd lists them in map order).
* Ranges sorted on a target other than the key: the order among results with equal sort
  values is unspecified (etcd 3.5.1's Go 1.16 ``sort.Sort`` is not stable for 7 or more
  results), so each run of equal sort values is put in key order, and the last run of a
  response truncated by ``limit`` is reduced to its sort values (which keys were cut off
  among equals is unspecified too).

``first_difference`` names the first path where two normalized answers differ.
"""

from __future__ import annotations

import enum
import json
import random
from base64 import b64decode
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2

Json = Any  # what MessageToDict returns: dicts, lists, str, int, bool

# --- The key space -------------------------------------------------------------------

PREFIX = b"k/"
PREFIX_KEYS = tuple(b"k/%02d" % index for index in range(12))
# Just outside the prefix on both sides ("k0" is the prefix's range end), and far away.
OUTSIDE_KEYS = (b"a", b"k", b"k0", b"z")
KEYS = PREFIX_KEYS + OUTSIDE_KEYS
VALUE_POOL_SIZE = 6  # values are reused so that VALUE compares sometimes match
VALUE_MAX_BYTES = 6

MIN_OPS = 150
MAX_OPS = 300
WATCH_STREAMS = 3
INITIAL_WATCHES = 3
TXN_MAX_DEPTH = 2
TXN_MAX_BRANCH_OPS = 3
TXN_MAX_COMPARES = 3
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops; one more is refused
# Leases: client-chosen IDs (so both servers use the same), TTLs long enough that none
# expires during a run (an expiry would revoke at an uncontrolled time).
LEASE_ID_BASE = 0x1000
UNKNOWN_LEASE_ID = 0x7FFF_0001
LEASE_MIN_TTL_S = 60
LEASE_MAX_TTL_S = 600
TOO_LARGE_LEASE_TTL_S = 9_000_000_001  # etcd's MaxLeaseTTL is 9,000,000,000 s
UNKNOWN_WATCH_ID = 9999
# Client-chosen watch ids: among the auto-assigned ones, so both kinds interleave.
CHOSEN_WATCH_IDS = tuple(range(1, 9))


def prefix_end(prefix: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd for prefixes that do not end in 0xff."""
    assert prefix and prefix[-1] != 0xFF, prefix
    return prefix[:-1] + bytes([prefix[-1] + 1])


# --- Operations ----------------------------------------------------------------------


class OpKind(enum.Enum):
    RANGE = "Range"
    PUT = "Put"
    DELETE_RANGE = "DeleteRange"
    TXN = "Txn"
    COMPACT = "Compact"
    LEASE_GRANT = "LeaseGrant"
    LEASE_REVOKE = "LeaseRevoke"
    LEASE_TIME_TO_LIVE = "LeaseTimeToLive"
    LEASE_LEASES = "LeaseLeases"
    LEASE_KEEPALIVE = "LeaseKeepAlive"
    WATCH_CREATE = "WatchCreate"
    WATCH_CANCEL = "WatchCancel"


@dataclass(frozen=True)
class Op:
    index: int
    kind: OpKind
    request: Message
    stream: int = -1  # watch ops: which of the WATCH_STREAMS streams

    @property
    def is_serializable_read(self) -> bool:
        """Served from the member's state without a read barrier: a serializable Range,
        or a Txn whose every op is one, as etcd's isTxnSerializable says (so also a Txn
        with compares only)."""
        request = self.request
        if isinstance(request, rpc_pb2.RangeRequest):
            return request.serializable
        if isinstance(request, rpc_pb2.TxnRequest):
            return all(
                op.HasField("request_range") and op.request_range.serializable
                for op in (*request.success, *request.failure)
            )
        return False

    def describe(self) -> str:
        where = f" on watch stream {self.stream}" if self.stream >= 0 else ""
        return f"#{self.index} {self.kind.value}{where} {json.dumps(readable(self.request))}"


@dataclass
class Observed:
    """What the reference server's answers so far say about the store."""

    revision: int = 1
    compact_revision: int = 0
    leases: dict[int, int] = field(default_factory=dict)  # id -> granted TTL
    # stream -> ids of its watches that are open and not doomed by a compaction
    watches: dict[int, list[int]] = field(default_factory=dict)
    # stream -> ids of its watches canceled by a compaction (etcd keeps these ids taken
    # until the client cancels them, raftkv frees them: a documented difference)
    doomed_watches: dict[int, set[int]] = field(default_factory=dict)

    def record(self, op: Op, answer: Message | None) -> None:
        """Update from the reference's answer to ``op`` (None: it failed)."""
        if answer is None:
            return
        header = getattr(answer, "header", None)
        if header is not None and header.revision > self.revision:
            self.revision = header.revision
        request = op.request
        if isinstance(request, rpc_pb2.CompactionRequest):
            self.compact_revision = request.revision
        elif isinstance(request, rpc_pb2.LeaseGrantRequest):
            self.leases[request.ID] = request.TTL
        elif isinstance(request, rpc_pb2.LeaseRevokeRequest):
            self.leases.pop(request.ID, None)
        elif isinstance(answer, rpc_pb2.WatchResponse):
            self._record_watch(op, answer)

    def _record_watch(self, op: Op, answer: rpc_pb2.WatchResponse) -> None:
        watches = self.watches.setdefault(op.stream, [])
        if isinstance(op.request, rpc_pb2.WatchCancelRequest):
            if answer.canceled and answer.watch_id in watches:
                watches.remove(answer.watch_id)
            return
        assert isinstance(op.request, rpc_pb2.WatchCreateRequest), op
        start = op.request.start_revision
        doomed = 0 < start < self.compact_revision  # it is canceled at once, by compaction
        if answer.created and not answer.canceled:
            if doomed:
                self.doomed_watches.setdefault(op.stream, set()).add(answer.watch_id)
            else:
                watches.append(answer.watch_id)


def catches_up(op: Op, observed: Observed) -> bool:
    """Whether ``op`` creates a watch that starts in the past (it must catch up)."""
    request = op.request
    return (
        isinstance(request, rpc_pb2.WatchCreateRequest)
        and 0 < request.start_revision <= observed.revision
    )


_OP_WEIGHTS = {
    OpKind.PUT: 25,
    OpKind.RANGE: 20,
    OpKind.DELETE_RANGE: 7,
    OpKind.TXN: 16,
    OpKind.COMPACT: 3,
    OpKind.LEASE_GRANT: 5,
    OpKind.LEASE_REVOKE: 3,
    OpKind.LEASE_TIME_TO_LIVE: 3,
    OpKind.LEASE_LEASES: 2,
    OpKind.LEASE_KEEPALIVE: 2,
    OpKind.WATCH_CREATE: 4,
    OpKind.WATCH_CANCEL: 2,
}


class OpGenerator:
    """A seeded random operation sequence; see the module docstring."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self.op_count = self._rng.randint(MIN_OPS, MAX_OPS)
        self._values = [self._fresh_value() for _ in range(VALUE_POOL_SIZE)]
        self._leases_granted = 0

    def ops(self, observed: Observed) -> Iterator[Op]:
        """The operations, each drawn from ``observed`` as it is when the op is due."""
        kinds = list(_OP_WEIGHTS)
        weights = list(_OP_WEIGHTS.values())
        for index in range(self.op_count):
            if index < INITIAL_WATCHES:
                yield self._watch_create(index, observed, stream=index % WATCH_STREAMS)
                continue
            kind = self._rng.choices(kinds, weights)[0]
            yield self._op(index, kind, observed)

    def _op(self, index: int, kind: OpKind, observed: Observed) -> Op:
        match kind:
            case OpKind.RANGE:
                return Op(index, kind, self._range(observed))
            case OpKind.PUT:
                return Op(index, kind, self._put(observed, self._key(allow_empty=True)))
            case OpKind.DELETE_RANGE:
                return Op(index, kind, self._delete_range(*self._key_range(allow_empty=True)))
            case OpKind.TXN:
                return Op(index, kind, self._top_txn(observed))
            case OpKind.COMPACT:
                return Op(index, kind, self._compact(observed))
            case OpKind.LEASE_GRANT:
                return Op(index, kind, self._lease_grant(observed))
            case OpKind.LEASE_REVOKE:
                return Op(index, kind, rpc_pb2.LeaseRevokeRequest(ID=self._lease_id(observed)))
            case OpKind.LEASE_TIME_TO_LIVE:
                keys = self._rng.random() < 0.8
                request = rpc_pb2.LeaseTimeToLiveRequest(ID=self._lease_id(observed), keys=keys)
                return Op(index, kind, request)
            case OpKind.LEASE_LEASES:
                return Op(index, kind, rpc_pb2.LeaseLeasesRequest())
            case OpKind.LEASE_KEEPALIVE:
                return Op(index, kind, rpc_pb2.LeaseKeepAliveRequest(ID=self._lease_id(observed)))
            case OpKind.WATCH_CREATE:
                stream = self._rng.randrange(WATCH_STREAMS)
                return self._watch_create(index, observed, stream)
            case OpKind.WATCH_CANCEL:
                return self._watch_cancel(index, observed)
        raise AssertionError(kind)

    # --- Keys, values, revisions ---------------------------------------------------------

    def _fresh_value(self) -> bytes:
        return self._rng.randbytes(self._rng.randint(0, VALUE_MAX_BYTES))

    def _value(self) -> bytes:
        if self._rng.random() < 0.8:
            return self._rng.choice(self._values)
        return self._fresh_value()

    def _key(self, allow_empty: bool = False) -> bytes:
        if allow_empty and self._rng.random() < 0.01:
            return b""  # "etcdserver: key is not provided"
        return self._rng.choice(KEYS)

    def _key_range(self, allow_empty: bool = False) -> tuple[bytes, bytes]:
        """(key, range_end): single key, prefix, from-key, all keys, an interval, an
        empty interval (end before key)."""
        draw = self._rng.random()
        if draw < 0.45:
            return self._key(allow_empty), b""
        if draw < 0.58:
            return PREFIX, prefix_end(PREFIX)
        if draw < 0.66:
            sub_prefix = PREFIX + b"%d" % self._rng.randint(0, 1)
            return sub_prefix, prefix_end(sub_prefix)
        if draw < 0.74:
            return self._key(), b"\0"
        if draw < 0.80:
            return b"\0", b"\0"
        low, high = sorted(self._rng.sample(KEYS, 2))
        if draw < 0.95:
            return low, high
        return high, low

    def _revision(self, observed: Observed) -> int:
        """A readable revision (often), a compacted one, a future one, or <= 0 (latest)."""
        current, compacted = observed.revision, observed.compact_revision
        draw = self._rng.random()
        if draw < 0.55:
            return self._rng.randint(max(compacted, 1), current)
        if draw < 0.70 and compacted > 1:
            return self._rng.randint(1, compacted - 1)
        if draw < 0.90:
            return current + self._rng.randint(1, 3)
        return self._rng.choice([0, -1])

    def _lease_id(self, observed: Observed) -> int:
        if observed.leases and self._rng.random() < 0.8:
            return self._rng.choice(sorted(observed.leases))
        return UNKNOWN_LEASE_ID

    # --- KV requests --------------------------------------------------------------------

    def _range(self, observed: Observed) -> rpc_pb2.RangeRequest:
        rng = self._rng
        key, range_end = self._key_range(allow_empty=True)
        request = rpc_pb2.RangeRequest(key=key, range_end=range_end)
        if rng.random() < 0.3:
            request.limit = rng.randint(1, 5)
        if rng.random() < 0.35:
            request.sort_target = rng.randrange(5)  # type: ignore[assignment]
            request.sort_order = rng.randrange(3)  # type: ignore[assignment]
        # keys_only hides the values a VALUE sort orders by, and the comparator needs them.
        if rng.random() < 0.15 and request.sort_target != rpc_pb2.RangeRequest.VALUE:
            request.keys_only = True
        if rng.random() < 0.1:
            request.count_only = True
        if rng.random() < 0.3:
            request.revision = self._revision(observed)
        for name in ("min_mod_revision", "max_mod_revision"):
            if rng.random() < 0.1:
                setattr(request, name, rng.randint(0, observed.revision + 1))
        for name in ("min_create_revision", "max_create_revision"):
            if rng.random() < 0.1:
                setattr(request, name, rng.randint(0, observed.revision + 1))
        request.serializable = rng.random() < 0.2
        return request

    def _put(self, observed: Observed, key: bytes) -> rpc_pb2.PutRequest:
        rng = self._rng
        request = rpc_pb2.PutRequest(key=key, value=self._value(), prev_kv=rng.random() < 0.3)
        draw = rng.random()
        if draw < 0.15 and observed.leases:
            request.lease = rng.choice(sorted(observed.leases))
        elif draw < 0.18:
            request.lease = UNKNOWN_LEASE_ID  # "requested lease not found"
        if rng.random() < 0.08:
            request.ignore_value = True  # "key not found" if the key does not exist
            if rng.random() < 0.7:
                request.value = b""  # else "value is provided"
        if rng.random() < 0.08:
            request.ignore_lease = True
            if rng.random() < 0.7:
                request.lease = 0  # else "lease is provided" (when it has one)
        return request

    def _delete_range(self, key: bytes, range_end: bytes) -> rpc_pb2.DeleteRangeRequest:
        return rpc_pb2.DeleteRangeRequest(
            key=key, range_end=range_end, prev_kv=self._rng.random() < 0.4
        )

    def _compact(self, observed: Observed) -> rpc_pb2.CompactionRequest:
        current, compacted = observed.revision, observed.compact_revision
        draw = self._rng.random()
        if draw < 0.6 and current > compacted:
            revision = self._rng.randint(compacted + 1, current)
        elif draw < 0.75:
            revision = current + self._rng.randint(1, 3)  # "required revision is a future revision"
        elif compacted > 0:
            revision = self._rng.randint(1, compacted)  # "required revision has been compacted"
        else:
            revision = current
        # physical: etcd answers once the compaction reached its backend. Without it a
        # watch or read at the compacted revision races etcd's background compaction.
        return rpc_pb2.CompactionRequest(revision=revision, physical=True)

    # --- Txn ----------------------------------------------------------------------------

    def _top_txn(self, observed: Observed) -> rpc_pb2.TxnRequest:
        draw = self._rng.random()
        if draw < 0.02:
            # "too many operations in txn request"
            ops = [
                rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=self._key()))
                for _ in range(MAX_TXN_OPS + 1)
            ]
            return rpc_pb2.TxnRequest(success=ops)
        txn = self._txn(observed, depth=0, taken=_Taken())
        if draw < 0.07:
            self._add_duplicate(txn)
        return txn

    def _txn(self, observed: Observed, depth: int, taken: _Taken) -> rpc_pb2.TxnRequest:
        rng = self._rng
        txn = rpc_pb2.TxnRequest()
        for _ in range(rng.randint(0, TXN_MAX_COMPARES)):
            txn.compare.append(self._compare(observed))
        branch_taken = []
        for branch in (txn.success, txn.failure):
            mine = taken.copy()
            for _ in range(rng.randint(0, TXN_MAX_BRANCH_OPS)):
                branch.append(self._request_op(observed, depth, mine))
            branch_taken.append(mine)
        for mine in branch_taken:
            taken.merge(mine)
        return txn

    def _request_op(self, observed: Observed, depth: int, taken: _Taken) -> rpc_pb2.RequestOp:
        draw = self._rng.random()
        if draw < 0.1 and depth < TXN_MAX_DEPTH:
            return rpc_pb2.RequestOp(request_txn=self._txn(observed, depth + 1, taken))
        if draw < 0.4:
            return rpc_pb2.RequestOp(request_range=self._range(observed))
        if draw < 0.8:
            free = [key for key in KEYS if taken.allows_put(key)]
            if free:
                key = self._rng.choice(free)
                taken.puts.add(key)
                return rpc_pb2.RequestOp(request_put=self._put(observed, key))
        for _ in range(3):  # a delete that covers none of the branch's puts
            key, range_end = self._key_range()
            if taken.allows_delete(key, range_end):
                taken.add_delete(key, range_end)
                return rpc_pb2.RequestOp(request_delete_range=self._delete_range(key, range_end))
        return rpc_pb2.RequestOp(request_range=self._range(observed))

    def _add_duplicate(self, txn: rpc_pb2.TxnRequest) -> None:
        """Write a key the success branch already writes: "duplicate key given in txn"."""
        for op in txn.success:
            if op.HasField("request_put"):
                duplicate = rpc_pb2.PutRequest(key=op.request_put.key, value=self._value())
                txn.success.append(rpc_pb2.RequestOp(request_put=duplicate))
                return
        key = self._key()
        txn.success.append(rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key)))
        txn.success.append(
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
        )

    def _compare(self, observed: Observed) -> rpc_pb2.Compare:
        rng = self._rng
        compare = rpc_pb2.Compare(
            result=rng.randrange(4),  # type: ignore[arg-type]
            target=rng.randrange(5),  # type: ignore[arg-type]
            key=self._key(allow_empty=True),
        )
        if rng.random() < 0.2:
            compare.key, compare.range_end = self._key_range()
        match compare.target:
            case rpc_pb2.Compare.VERSION:
                compare.version = rng.randint(0, 3)
            case rpc_pb2.Compare.CREATE:
                compare.create_revision = rng.randint(0, observed.revision + 1)
            case rpc_pb2.Compare.MOD:
                compare.mod_revision = rng.randint(0, observed.revision + 1)
            case rpc_pb2.Compare.VALUE:
                compare.value = self._value()
            case rpc_pb2.Compare.LEASE:
                compare.lease = rng.choice([0, self._lease_id(observed)])
        return compare

    # --- Leases and watches -------------------------------------------------------------

    def _lease_grant(self, observed: Observed) -> rpc_pb2.LeaseGrantRequest:
        rng = self._rng
        ttl_s = rng.randint(LEASE_MIN_TTL_S, LEASE_MAX_TTL_S)
        draw = rng.random()
        if draw < 0.1 and observed.leases:
            lease_id = rng.choice(sorted(observed.leases))  # "lease already exists"
        else:
            self._leases_granted += 1
            lease_id = LEASE_ID_BASE + 7 * self._leases_granted
        if draw > 0.95:
            ttl_s = TOO_LARGE_LEASE_TTL_S  # "too large lease TTL"
        return rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=ttl_s)

    def _watch_create(self, index: int, observed: Observed, stream: int) -> Op:
        rng = self._rng
        if rng.random() < 0.03:
            key, range_end = b"", b"\0"  # every key
        else:
            key, range_end = self._key_range()
        request = rpc_pb2.WatchCreateRequest(
            key=key,
            range_end=range_end,
            prev_kv=rng.random() < 0.4,
            fragment=rng.random() < 0.2,
            # The runner's sync point on etcd is the periodic progress notification.
            progress_notify=True,
        )
        draw = rng.random()
        if draw < 0.12:
            request.filters.append(rpc_pb2.WatchCreateRequest.NOPUT)
        elif draw < 0.24:
            request.filters.append(rpc_pb2.WatchCreateRequest.NODELETE)
        elif draw < 0.27:
            request.filters.extend(
                [rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE]
            )
        if index >= INITIAL_WATCHES:
            request.start_revision = self._watch_start(observed)
        doomed = 0 < request.start_revision < observed.compact_revision
        if rng.random() < 0.1 and not doomed:
            # A client-chosen id: free, or taken by an open watch ("duplicate watch ID").
            # Not one a compaction freed on raftkv only, nor on a doomed watch whose id
            # auto-assignment would then skip on etcd only (docs/compatibility.md).
            taken = observed.doomed_watches.get(stream, set())
            request.watch_id = rng.choice([i for i in CHOSEN_WATCH_IDS if i not in taken])
        return Op(index, OpKind.WATCH_CREATE, request, stream)

    def _watch_start(self, observed: Observed) -> int:
        current, compacted = observed.revision, observed.compact_revision
        draw = self._rng.random()
        if draw < 0.35:
            return 0  # from now on
        if draw < 0.70:
            return self._rng.randint(max(compacted, 1), current)
        if draw < 0.80 and compacted > 1:
            return self._rng.randint(1, compacted - 1)  # canceled with compact_revision
        if draw < 0.90:
            return current + self._rng.randint(1, 2)
        return max(compacted, 1)

    def _watch_cancel(self, index: int, observed: Observed) -> Op:
        open_watches = [
            (stream, watch_id)
            for stream, ids in sorted(observed.watches.items())
            for watch_id in ids
        ]
        if open_watches and self._rng.random() < 0.95:
            stream, watch_id = self._rng.choice(open_watches)
        else:
            # Neither server answers the cancel of an unknown watch.
            stream, watch_id = self._rng.randrange(WATCH_STREAMS), UNKNOWN_WATCH_ID
        request = rpc_pb2.WatchCancelRequest(watch_id=watch_id)
        return Op(index, OpKind.WATCH_CANCEL, request, stream)


class _Taken:
    """The keys a txn branch puts and the intervals it deletes, so that generated txns
    are not refused as "duplicate key" unless on purpose. A delete to b"\\0" covers
    nothing, as in etcd's check."""

    def __init__(self) -> None:
        self.puts: set[bytes] = set()
        self.deletes: list[tuple[bytes, bytes]] = []

    def copy(self) -> _Taken:
        other = _Taken()
        other.puts = set(self.puts)
        other.deletes = list(self.deletes)
        return other

    def merge(self, other: _Taken) -> None:
        self.puts |= other.puts
        self.deletes.extend(d for d in other.deletes if d not in self.deletes)

    def allows_put(self, key: bytes) -> bool:
        return key not in self.puts and not any(lo <= key < hi for lo, hi in self.deletes)

    def allows_delete(self, key: bytes, range_end: bytes) -> bool:
        low, high = _delete_interval(key, range_end)
        return not any(low <= put < high for put in self.puts)

    def add_delete(self, key: bytes, range_end: bytes) -> None:
        self.deletes.append(_delete_interval(key, range_end))


def _delete_interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes]:
    if not range_end:
        return key, key + b"\0"
    return key, range_end  # empty when range_end <= key, b"\0" included


# --- Normalization -------------------------------------------------------------------

MEMBER_HEADER_FIELDS = frozenset({"cluster_id", "member_id", "raft_term"})
BYTES_FIELDS = frozenset({"key", "value", "range_end", "keys"})
TTL_IN_WINDOW = "in window"
_SORT_FIELDS = {
    rpc_pb2.RangeRequest.VERSION: "version",
    rpc_pb2.RangeRequest.CREATE: "create_revision",
    rpc_pb2.RangeRequest.MOD: "mod_revision",
    rpc_pb2.RangeRequest.VALUE: "value",
}


def readable(message: Message) -> Json:
    """The message as JSON-like data: proto field names, bytes as Python literals, and
    headers without the fields that differ between servers."""
    return _readable(MessageToDict(message, preserving_proto_field_name=True), "")


def _readable(value: Json, name: str) -> Json:
    if isinstance(value, dict):
        return {
            key: _readable(item, key)
            for key, item in value.items()
            if not (name == "header" and key in MEMBER_HEADER_FIELDS)
        }
    if isinstance(value, list):
        return [_readable(item, name) for item in value]
    if name in BYTES_FIELDS and isinstance(value, str):
        return repr(b64decode(value))
    return value


@dataclass(frozen=True)
class TtlWindow:
    """The TTLs a LeaseTimeToLive answer may report: granted minus the time since the
    grant (or last keepalive), rounded down, and a second of slack, up to granted."""

    low: int
    high: int


def normalize(op: Op, answer: Message, ttl_window: TtlWindow | None = None) -> Json:
    """What must be equal on both servers for ``answer`` to ``op``."""
    data = readable(answer)
    request = op.request
    if isinstance(answer, rpc_pb2.LeaseTimeToLiveResponse):
        _normalize_time_to_live(data, answer, ttl_window)
    elif isinstance(answer, rpc_pb2.LeaseLeasesResponse):
        data["leases"] = sorted(data.get("leases", []), key=lambda lease: int(lease["ID"]))
    elif isinstance(request, rpc_pb2.RangeRequest):
        _normalize_range(request, data)
    elif isinstance(request, rpc_pb2.TxnRequest):
        _normalize_txn(request, data)
    return data


def _normalize_time_to_live(
    data: Json, answer: rpc_pb2.LeaseTimeToLiveResponse, window: TtlWindow | None
) -> None:
    if "keys" in data:
        data["keys"] = sorted(data["keys"])
    if answer.TTL < 0 or window is None:
        return
    if window.low <= answer.TTL <= window.high:
        data["TTL"] = TTL_IN_WINDOW
    else:
        data["TTL_window"] = [window.low, window.high]


def _normalize_txn(request: rpc_pb2.TxnRequest, data: Json) -> None:
    branch = request.success if data.get("succeeded", False) else request.failure
    for op, response in zip(branch, data.get("responses", []), strict=False):
        if op.HasField("request_range") and "response_range" in response:
            _normalize_range(op.request_range, response["response_range"])
        elif op.HasField("request_txn") and "response_txn" in response:
            _normalize_txn(op.request_txn, response["response_txn"])


def _normalize_range(request: rpc_pb2.RangeRequest, data: Json) -> None:
    """Put runs of equal sort values in key order; reduce a truncated last run to its
    sort values (see the module docstring)."""
    sort_field = _SORT_FIELDS.get(request.sort_target)
    kvs = data.get("kvs")
    if sort_field is None or not kvs:
        return
    runs: list[list[Json]] = []
    for kv in kvs:
        if runs and runs[-1][0].get(sort_field) == kv.get(sort_field):
            runs[-1].append(kv)
        else:
            runs.append([kv])
    normalized: list[Json] = []
    for number, run in enumerate(runs):
        if data.get("more", False) and number == len(runs) - 1:
            normalized.extend({"tied_" + sort_field: kv.get(sort_field)} for kv in run)
        else:
            normalized.extend(sorted(run, key=lambda kv: kv["key"]))
    data["kvs"] = normalized


# --- Comparison ----------------------------------------------------------------------


def first_difference(left: Json, right: Json, path: str = "") -> str | None:
    """The first path where ``left`` and ``right`` differ, with both values; None if equal."""
    here = path or "(top)"
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                return f"{path}.{key}: {left.get(key, '(absent)')!r} != " + repr(
                    right.get(key, "(absent)")
                )
            found = first_difference(left[key], right[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        for number, (left_item, right_item) in enumerate(zip(left, right, strict=False)):
            found = first_difference(left_item, right_item, f"{path}[{number}]")
            if found is not None:
                return found
        if len(left) != len(right):
            return f"{here}: {len(left)} items != {len(right)} items"
        return None
    if type(left) is not type(right) or left != right:
        return f"{here}: {left!r} != {right!r}"
    return None
