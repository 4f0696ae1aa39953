"""The lessor: leases, the keys attached to them, and tick-driven expiry.

Names and behaviour follow etcd's ``server/lease/lessor.go``. Two kinds of state:

* **Replicated state** (id, granted TTL, checkpointed remaining TTL) changes only while
  a committed Raft entry is applied: ``grant``, ``revoke`` and ``apply_checkpoint`` take
  the apply path's ``WriteBatch``, so a lease commits atomically with the KV changes and
  the consistent index. Attached keys are derived from the KV store (``attach`` /
  ``detach`` / ``restore``) and are not persisted here.
* **Primary state** (expiry ticks, the checkpoint schedule) exists only on the leader's
  lessor, between ``promote`` and ``demote``. The primary never revokes on its own: it
  reports expired leases (``expired``) and due checkpoints (``checkpoints``), and the
  server proposes those through Raft.

Pure: time is the caller's tick count, randomness an injected ``random.Random``.
If a batch fails to commit, the node stops (``DiskError`` is fatal), so the in-memory
state is not rolled back.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from raftkv import limits
from raftkv.storage.backend import DB_LEASE
from raftkv.storage.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    RequestError,
)

if TYPE_CHECKING:
    from raftkv.storage.backend import Backend, WriteBatch

NO_LEASE = 0  # etcd's NoLease: a key without a lease; never a valid lease id
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_LEASE_KEY = struct.Struct(">q")  # lease id
_LEASE_VALUE = struct.Struct(">qqq")  # lease id, ttl seconds, remaining ttl seconds (0 = none)


class NotPrimaryError(RequestError):
    """This lessor is not the primary (leader's): forward keepalive/TTL to the leader."""

    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: not leader"


class LeaseExpiredError(LeaseNotFoundError):
    """The lease's TTL ran out on the primary; its revocation is pending.

    etcd's Renew waits for the revocation and then answers "lease not found" (or
    "not primary" if leadership is lost first); this error lets the server choose.
    """


@dataclass(slots=True, eq=False)
class Lease:
    """One lease. Owned by the Lessor: callers read it and never mutate it."""

    id: int
    ttl_seconds: int  # granted TTL: the requested TTL raised to the minimum
    remaining_ttl_seconds: int = 0  # last checkpoint; 0 means none (use ttl_seconds)
    expiry_tick: int | None = None  # set only on the primary
    keys: set[bytes] = field(default_factory=set)

    @property
    def granted_ttl_seconds(self) -> int:
        """etcd's GrantedTTL: the TTL the lease was granted with (after raising)."""
        return self.ttl_seconds

    def restart_ttl_seconds(self) -> int:
        """The TTL a new primary restarts the lease with: the checkpoint if any."""
        return self.remaining_ttl_seconds if self.remaining_ttl_seconds > 0 else self.ttl_seconds


class TimeToLive(NamedTuple):
    ttl_seconds: int  # remaining, truncated to whole seconds; -1 once expired
    granted_ttl_seconds: int
    keys: list[bytes]  # sorted; empty unless asked for


class Renewal(NamedTuple):
    ttl_seconds: int  # the granted TTL the lease was refreshed to
    # The lease carries a checkpointed remaining TTL: the server must propose
    # Checkpoint(lease_id, 0) so a new leader does not restart it from the old
    # checkpoint (etcd proposes it before answering the keepalive).
    clear_checkpoint: bool


class Checkpoint(NamedTuple):
    lease_id: int
    remaining_ttl_seconds: int


def next_lease_id(rng: random.Random, taken: Container[int] = frozenset()) -> int:
    """A random positive int64 lease id, not NO_LEASE and not in `taken` (etcd's choice)."""
    for _ in range(limits.LEASE_ID_ATTEMPTS_MAX):
        lease_id = rng.getrandbits(63)
        if lease_id != NO_LEASE and lease_id not in taken:
            assert 0 < lease_id <= _INT64_MAX
            return lease_id
    raise LeaseExistsError()


def _ceil_div(numerator: int, denominator: int) -> int:
    assert denominator > 0
    return -(-numerator // denominator)


def _encode(lease: Lease) -> tuple[bytes, bytes]:
    key = _LEASE_KEY.pack(lease.id)
    value = _LEASE_VALUE.pack(lease.id, lease.ttl_seconds, lease.remaining_ttl_seconds)
    return key, value


def _decode(key: bytes, value: bytes) -> Lease:
    assert len(key) == _LEASE_KEY.size, f"lease key of {len(key)} bytes"
    assert len(value) == _LEASE_VALUE.size, f"lease value of {len(value)} bytes"
    (key_id,) = _LEASE_KEY.unpack(key)
    lease_id, ttl_seconds, remaining_ttl_seconds = _LEASE_VALUE.unpack(value)
    assert key_id == lease_id != NO_LEASE, f"lease key {key_id} holds lease {lease_id}"
    assert ttl_seconds >= 1
    assert remaining_ttl_seconds >= 0
    return Lease(lease_id, ttl_seconds, remaining_ttl_seconds)


class _TickQueue:
    """Lease ids each due at a tick: a min-heap with lazy deletion.

    Rescheduling pushes a new entry and leaves the old one stale; stale entries are
    skipped when popped, and the heap is rebuilt when they outnumber the live ones.
    """

    def __init__(self) -> None:
        self._due_tick: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (tick, lease id)

    def __len__(self) -> int:
        return len(self._due_tick)

    def schedule(self, lease_id: int, tick: int) -> None:
        self._due_tick[lease_id] = tick
        heapq.heappush(self._heap, (tick, lease_id))
        if len(self._heap) > 2 * len(self._due_tick) + 64:
            self._heap = [(due, lid) for lid, due in self._due_tick.items()]
            heapq.heapify(self._heap)

    def cancel(self, lease_id: int) -> None:
        self._due_tick.pop(lease_id, None)

    def clear(self) -> None:
        self._due_tick.clear()
        self._heap.clear()

    def pop_due(self, now_tick: int, limit: int) -> list[int]:
        """Up to `limit` ids due at or before now_tick, earliest first; they are unscheduled."""
        assert limit >= 0
        popped: list[int] = []
        while self._heap and len(popped) < limit and self._heap[0][0] <= now_tick:
            tick, lease_id = heapq.heappop(self._heap)
            if self._due_tick.get(lease_id) == tick:
                del self._due_tick[lease_id]
                popped.append(lease_id)
        return popped


class Lessor:
    """All leases of one node; the primary role is held while the node leads."""

    def __init__(self, ticks_per_second: int, election_ticks: int) -> None:
        assert ticks_per_second >= 1
        assert election_ticks >= 1
        self.ticks_per_second = ticks_per_second
        self.election_ticks = election_ticks
        # etcd: ceil(1.5 * election timeout) in seconds (2 s for 10 ticks of 100 ms).
        self.min_ttl_seconds = _ceil_div((3 * election_ticks) // 2, ticks_per_second)
        assert self.min_ttl_seconds >= 1
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}  # attached key -> its lease
        self._primary = False
        self._expiry_queue = _TickQueue()  # when expired() next reports a lease
        self._checkpoint_queue = _TickQueue()  # when checkpoints() next reports a lease

    # --- Replicated state: called while applying committed entries ---------------

    def load(self, backend: Backend) -> None:
        """Replace every lease with those in DB_LEASE (restart, snapshot install)."""
        assert not self._primary, "load on the primary; demote first"
        self._leases.clear()
        self._key_lease.clear()
        with backend.read() as txn, txn.cursor(db=backend.db(DB_LEASE)) as cursor:
            for key, value in cursor:
                lease = _decode(bytes(key), bytes(value))
                self._leases[lease.id] = lease

    def restore(
        self, backend: Backend, keys_with_leases: Iterable[tuple[bytes, int]]
    ) -> list[tuple[bytes, int]]:
        """``load``, then attach the KV store's leased keys; returns keys whose lease is gone.

        Revoke deletes a lease and its keys in one batch, so orphans mean corruption;
        the caller decides what to do with them.
        """
        self.load(backend)
        orphans: list[tuple[bytes, int]] = []
        for key, lease_id in keys_with_leases:
            assert lease_id != NO_LEASE, f"key {key!r} listed without a lease"
            if lease_id in self._leases:
                self.attach(lease_id, key)
            else:
                orphans.append((key, lease_id))
        return orphans

    def grant(self, batch: WriteBatch, lease_id: int, ttl_seconds: int, now_tick: int) -> Lease:
        """Create a lease (etcd's Grant). `now_tick` starts its expiry on the primary.

        A TTL below ``min_ttl_seconds`` is raised to it; a TTL above the maximum fails.
        """
        _check_lease_id(lease_id)
        if ttl_seconds > limits.LEASE_MAX_TTL_SECONDS:
            raise LeaseTTLTooLargeError()
        if lease_id in self._leases:
            raise LeaseExistsError()
        lease = Lease(lease_id, max(ttl_seconds, self.min_ttl_seconds))
        self._leases[lease_id] = lease
        _persist(batch, lease)
        if self._primary:
            self._refresh(lease, now_tick, lease.ttl_seconds, extension_ticks=0)
        return lease

    def revoke(self, batch: WriteBatch, lease_id: int) -> list[bytes]:
        """Delete a lease; returns its keys (sorted), which the caller deletes in the same
        revision and batch. Afterwards ``lease_of`` reports NO_LEASE for those keys."""
        lease = self._get(lease_id)
        keys = sorted(lease.keys)
        for key in keys:
            removed = self._key_lease.pop(key)
            assert removed == lease_id
        del self._leases[lease_id]
        self._expiry_queue.cancel(lease_id)
        self._checkpoint_queue.cancel(lease_id)
        deleted = batch.delete(DB_LEASE, _LEASE_KEY.pack(lease_id))
        assert deleted, f"lease {lease_id} was not persisted"
        return keys

    def apply_checkpoint(
        self, batch: WriteBatch, lease_id: int, remaining_ttl_seconds: int
    ) -> bool:
        """Record a lease's remaining TTL (0 clears it); False if the lease is gone.

        A lease revoked after its checkpoint was proposed is not an error (etcd ignores it).
        The expiry on the primary is unchanged; ``promote`` reads the value.
        """
        assert remaining_ttl_seconds >= 0
        lease = self._leases.get(lease_id)
        if lease is None:
            return False
        lease.remaining_ttl_seconds = remaining_ttl_seconds
        _persist(batch, lease)
        return True

    # --- Attached keys: in memory, derived from the KV store ----------------------

    def attach(self, lease_id: int, key: bytes) -> None:
        """Attach a key (a put with this lease). A key is attached to at most one lease:
        the KV store detaches the old lease (``lease_of``) before a put changes it."""
        lease = self._get(lease_id)
        current = self._key_lease.get(key, NO_LEASE)
        assert current in (NO_LEASE, lease_id), f"key {key!r} already on lease {current}"
        lease.keys.add(key)
        self._key_lease[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        """Detach a key (deleted, or put with another lease or none). Idempotent."""
        lease = self._get(lease_id)
        current = self._key_lease.get(key, NO_LEASE)
        assert current in (NO_LEASE, lease_id), f"key {key!r} is on lease {current}"
        lease.keys.discard(key)
        self._key_lease.pop(key, None)

    def lease_of(self, key: bytes) -> int:
        """The lease the key is attached to, or NO_LEASE (etcd's GetLease)."""
        return self._key_lease.get(key, NO_LEASE)

    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[int]:
        """Every lease id, sorted (etcd's Leases; all replicas agree)."""
        return sorted(self._leases)

    def next_lease_id(self, rng: random.Random) -> int:
        """A fresh id for a grant with ID 0, chosen by the server before proposing."""
        return next_lease_id(rng, self._leases)

    # --- Primary role: expiry is tracked only on the leader -----------------------

    @property
    def is_primary(self) -> bool:
        return self._primary

    def promote(self, now_tick: int) -> None:
        """Become primary (this node now leads). Every lease restarts from its checkpointed
        remaining TTL, or its full TTL, plus one election timeout (etcd's Promote)."""
        assert not self._primary, "promote on the primary"
        self._primary = True
        for lease in self._leases.values():
            self._refresh(lease, now_tick, lease.restart_ttl_seconds(), self.election_ticks)

    def demote(self) -> None:
        """Stop being primary: expiry and checkpoints stop being tracked."""
        self._primary = False
        for lease in self._leases.values():
            lease.expiry_tick = None
        self._expiry_queue.clear()
        self._checkpoint_queue.clear()

    def renew(self, lease_id: int, now_tick: int) -> Renewal:
        """A keepalive: restart the lease at its granted TTL (primary only)."""
        self._require_primary()
        lease = self._get(lease_id)
        if self._remaining_ticks(lease, now_tick) <= 0:
            raise LeaseExpiredError()
        self._refresh(lease, now_tick, lease.ttl_seconds, extension_ticks=0)
        return Renewal(lease.ttl_seconds, clear_checkpoint=lease.remaining_ttl_seconds > 0)

    def time_to_live(self, lease_id: int, now_tick: int, keys: bool) -> TimeToLive:
        """etcd's TimeToLive on the primary; the API answers TTL -1 on LeaseNotFoundError."""
        self._require_primary()
        lease = self._get(lease_id)
        remaining_ticks = self._remaining_ticks(lease, now_tick)
        ttl_seconds = remaining_ticks // self.ticks_per_second if remaining_ticks > 0 else -1
        attached = sorted(lease.keys) if keys else []
        return TimeToLive(ttl_seconds, lease.ttl_seconds, attached)

    def expired(self, now_tick: int, limit: int) -> list[int]:
        """Up to `limit` expired leases, earliest first, for the server to revoke via Raft.

        Empty unless primary. A lease handed out is handed out again after
        LEASE_EXPIRED_RETRY_SECONDS if its revocation has not been applied by then.
        """
        assert 0 <= limit <= limits.LEASE_EXPIRED_PER_CALL_MAX
        if not self._primary:
            return []
        lease_ids = self._expiry_queue.pop_due(now_tick, limit)
        retry_tick = now_tick + limits.LEASE_EXPIRED_RETRY_SECONDS * self.ticks_per_second
        for lease_id in lease_ids:
            assert self._remaining_ticks(self._leases[lease_id], now_tick) <= 0
            self._expiry_queue.schedule(lease_id, retry_tick)
        return lease_ids

    def expired_limit(self, pending_revokes: int) -> int:
        """The `limit` for one tick's ``expired`` call: etcd's revoke rate spread over the
        ticks of a second, and at most LEASE_MAX_PENDING_REVOKES revocations in flight."""
        assert pending_revokes >= 0
        per_tick = max(1, limits.LEASE_REVOKE_PER_SECOND // self.ticks_per_second)
        return max(0, min(per_tick, limits.LEASE_MAX_PENDING_REVOKES - pending_revokes))

    def checkpoints(self, now_tick: int, limit: int) -> list[Checkpoint]:
        """Due checkpoints: (lease, remaining TTL rounded up) for the server to propose in
        one batch. Empty unless primary. Each long lease is due every
        LEASE_CHECKPOINT_INTERVAL_SECONDS; one whose remaining TTL is not below its
        granted TTL is skipped (etcd)."""
        assert 0 <= limit <= limits.LEASE_CHECKPOINT_BATCH_MAX
        if not self._primary:
            return []
        due: list[Checkpoint] = []
        for lease_id in self._checkpoint_queue.pop_due(now_tick, limit):
            lease = self._leases[lease_id]
            remaining_ticks = self._remaining_ticks(lease, now_tick)
            remaining_seconds = _ceil_div(remaining_ticks, self.ticks_per_second)
            if 0 < remaining_seconds < lease.ttl_seconds:
                due.append(Checkpoint(lease_id, remaining_seconds))
            self._schedule_checkpoint(lease, now_tick)
        return due

    # --- Helpers -------------------------------------------------------------------

    def _get(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        assert lease.id == lease_id
        return lease

    def _require_primary(self) -> None:
        if not self._primary:
            raise NotPrimaryError()

    def _remaining_ticks(self, lease: Lease, now_tick: int) -> int:
        assert self._primary
        assert lease.expiry_tick is not None, f"lease {lease.id} untracked on the primary"
        return lease.expiry_tick - now_tick

    def _refresh(self, lease: Lease, now_tick: int, ttl_seconds: int, extension_ticks: int) -> None:
        assert self._primary
        assert ttl_seconds >= 1 and extension_ticks >= 0
        lease.expiry_tick = now_tick + ttl_seconds * self.ticks_per_second + extension_ticks
        self._expiry_queue.schedule(lease.id, lease.expiry_tick)
        self._schedule_checkpoint(lease, now_tick)

    def _schedule_checkpoint(self, lease: Lease, now_tick: int) -> None:
        """Checkpoint a lease that will outlive the next interval; forget the others."""
        interval_ticks = limits.LEASE_CHECKPOINT_INTERVAL_SECONDS * self.ticks_per_second
        if self._remaining_ticks(lease, now_tick) > interval_ticks:
            self._checkpoint_queue.schedule(lease.id, now_tick + interval_ticks)
        else:
            self._checkpoint_queue.cancel(lease.id)


def _check_lease_id(lease_id: int) -> None:
    """Grant refuses NO_LEASE like etcd (the server picks an id for ID 0 before proposing)."""
    if lease_id == NO_LEASE:
        raise LeaseNotFoundError()
    assert _INT64_MIN <= lease_id <= _INT64_MAX, f"lease id {lease_id} is not an int64"


def _persist(batch: WriteBatch, lease: Lease) -> None:
    key, value = _encode(lease)
    decoded = _decode(key, value)  # pair assertion: what is written reads back the same
    assert (decoded.id, decoded.ttl_seconds, decoded.remaining_ttl_seconds) == (
        lease.id,
        lease.ttl_seconds,
        lease.remaining_ttl_seconds,
    )
    batch.put(DB_LEASE, key, value)
