"""The lessor on real LMDB backends: replicated state, attached keys, the primary role.

Ticks are 100 ms (10 per second) and the election timeout is 10 ticks, etcd's defaults:
the minimum TTL is ceil(1.5 * 1 s) = 2 s and promote extends leases by 10 ticks.
"""

from __future__ import annotations

import random

import pytest

from raftkv import limits
from raftkv.storage.backend import DB_LEASE, Backend
from raftkv.storage.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
)
from raftkv.storage.lease import (
    NO_LEASE,
    Checkpoint,
    LeaseExpiredError,
    Lessor,
    NotPrimaryError,
    Renewal,
    TimeToLive,
    next_lease_id,
)
from tests.lease.conftest import Reopen

TPS = 10  # ticks per second
ELECTION_TICKS = 10
INTERVAL_TICKS = limits.LEASE_CHECKPOINT_INTERVAL_SECONDS * TPS
RETRY_TICKS = limits.LEASE_EXPIRED_RETRY_SECONDS * TPS


def new_lessor() -> Lessor:
    return Lessor(ticks_per_second=TPS, election_ticks=ELECTION_TICKS)


def grant(backend: Backend, lessor: Lessor, lease_id: int, ttl: int, now_tick: int = 0) -> int:
    with backend.write() as batch:
        return lessor.grant(batch, lease_id, ttl, now_tick).ttl_seconds


def revoke(backend: Backend, lessor: Lessor, lease_id: int) -> list[bytes]:
    with backend.write() as batch:
        return lessor.revoke(batch, lease_id)


def checkpoint(backend: Backend, lessor: Lessor, lease_id: int, remaining: int) -> bool:
    with backend.write() as batch:
        return lessor.apply_checkpoint(batch, lease_id, remaining)


def stored_lease_count(backend: Backend) -> int:
    with backend.read() as txn:
        return int(txn.stat(backend.db(DB_LEASE))["entries"])


# --- Replicated state ----------------------------------------------------------------


def test_grant_revoke_and_listing(backend: Backend) -> None:
    lessor = new_lessor()
    assert grant(backend, lessor, 7, 30) == 30
    assert grant(backend, lessor, 3, 60) == 60
    assert lessor.leases() == [3, 7]
    assert stored_lease_count(backend) == 2
    assert revoke(backend, lessor, 7) == []
    assert lessor.leases() == [3]
    assert lessor.lookup(7) is None
    assert stored_lease_count(backend) == 1


def test_grant_errors_leave_nothing_behind(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 10)
    with pytest.raises(LeaseExistsError, match="lease already exists"):
        grant(backend, lessor, 1, 20)
    with pytest.raises(LeaseNotFoundError):  # id 0 means "server picks"; never applied
        grant(backend, lessor, NO_LEASE, 10)
    lease = lessor.lookup(1)
    assert lease is not None and lease.ttl_seconds == 10
    assert stored_lease_count(backend) == 1


@pytest.mark.parametrize("ttl", [-5, 0, 1])
def test_ttl_below_minimum_is_raised(backend: Backend, ttl: int) -> None:
    lessor = new_lessor()
    assert lessor.min_ttl_seconds == 2
    assert grant(backend, lessor, 1, ttl) == 2
    lease = lessor.lookup(1)
    assert lease is not None and lease.granted_ttl_seconds == 2


@pytest.mark.parametrize(
    ("ticks_per_second", "election_ticks", "min_ttl_seconds"),
    [(10, 10, 2), (10, 20, 3), (10, 3, 1), (1, 1, 1), (1, 5, 7), (100, 1000, 15)],
)
def test_min_ttl_is_one_and_a_half_election_timeouts(
    ticks_per_second: int, election_ticks: int, min_ttl_seconds: int
) -> None:
    lessor = Lessor(ticks_per_second=ticks_per_second, election_ticks=election_ticks)
    assert lessor.min_ttl_seconds == min_ttl_seconds


def test_ttl_above_maximum_is_refused(backend: Backend) -> None:
    lessor = new_lessor()
    assert grant(backend, lessor, 1, limits.LEASE_MAX_TTL_SECONDS) == 9_000_000_000
    with pytest.raises(LeaseTTLTooLargeError, match="too large lease TTL"):
        grant(backend, lessor, 2, limits.LEASE_MAX_TTL_SECONDS + 1)
    assert lessor.leases() == [1]


def test_revoke_unknown_lease(backend: Backend) -> None:
    with pytest.raises(LeaseNotFoundError, match="requested lease not found"):
        revoke(backend, new_lessor(), 42)


def test_leases_survive_reopen(backend: Backend, reopen: Reopen) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 10)
    grant(backend, lessor, -9, 1)  # any non-zero int64 may be chosen by a client
    grant(backend, lessor, 2, 900)
    checkpoint(backend, lessor, 2, 400)
    revoke(backend, lessor, 1)

    backend = reopen(backend)
    restarted = new_lessor()
    restarted.load(backend)
    assert restarted.leases() == [-9, 2]
    short, long = restarted.lookup(-9), restarted.lookup(2)
    assert short is not None and (short.ttl_seconds, short.remaining_ttl_seconds) == (2, 0)
    assert long is not None and (long.ttl_seconds, long.remaining_ttl_seconds) == (900, 400)
    assert long.expiry_tick is None  # not primary


def test_aborted_batch_persists_nothing(backend: Backend) -> None:
    lessor = new_lessor()
    with pytest.raises(RuntimeError), backend.write() as batch:
        lessor.grant(batch, 5, 10, now_tick=0)
        raise RuntimeError("a later step of the same entry failed")
    assert stored_lease_count(backend) == 0


# --- Attached keys ---------------------------------------------------------------------


def test_attach_detach_and_revoke_returns_keys(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 10)
    for key in (b"c", b"a", b"b"):
        lessor.attach(1, key)
    lessor.attach(1, b"a")  # a put of the same key with the same lease
    lessor.detach(1, b"b")
    lessor.detach(1, b"b")  # idempotent
    assert lessor.lease_of(b"a") == 1
    assert lessor.lease_of(b"b") == NO_LEASE
    assert revoke(backend, lessor, 1) == [b"a", b"c"]
    assert lessor.lease_of(b"a") == NO_LEASE
    assert lessor.lease_of(b"c") == NO_LEASE


def test_attach_and_detach_need_the_lease(backend: Backend) -> None:
    lessor = new_lessor()
    with pytest.raises(LeaseNotFoundError):
        lessor.attach(1, b"k")
    with pytest.raises(LeaseNotFoundError):
        lessor.detach(1, b"k")


def test_a_key_belongs_to_one_lease(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 10)
    grant(backend, lessor, 2, 10)
    lessor.attach(1, b"k")
    with pytest.raises(AssertionError):
        lessor.attach(2, b"k")  # the KV store detaches lease 1 first
    lessor.detach(1, b"k")
    lessor.attach(2, b"k")
    assert lessor.lease_of(b"k") == 2


def test_restore_reattaches_keys_and_reports_orphans(backend: Backend, reopen: Reopen) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 10)
    grant(backend, lessor, 2, 10)
    backend = reopen(backend)
    restarted = new_lessor()
    keys = [(b"x", 1), (b"y", 2), (b"z", 1), (b"lost", 99)]
    assert restarted.restore(backend, keys) == [(b"lost", 99)]
    lease = restarted.lookup(1)
    assert lease is not None and lease.keys == {b"x", b"z"}
    assert restarted.lease_of(b"y") == 2


# --- The primary role ------------------------------------------------------------------


def test_follower_tracks_no_expiry(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 2, now_tick=0)
    assert lessor.expired(now_tick=1_000_000, limit=10) == []
    assert lessor.checkpoints(now_tick=1_000_000, limit=10) == []
    with pytest.raises(NotPrimaryError, match="not leader"):
        lessor.renew(1, now_tick=0)
    with pytest.raises(NotPrimaryError):
        lessor.time_to_live(1, now_tick=0, keys=False)
    lease = lessor.lookup(1)
    assert lease is not None and lease.expiry_tick is None


def test_promote_extends_by_one_election_timeout(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 5)
    lessor.promote(now_tick=100)
    assert lessor.time_to_live(1, now_tick=100, keys=False) == TimeToLive(6, 5, [])
    expiry_tick = 100 + 5 * TPS + ELECTION_TICKS
    assert lessor.expired(now_tick=expiry_tick - 1, limit=10) == []
    assert lessor.expired(now_tick=expiry_tick, limit=10) == [1]


def test_grant_on_primary_expires_after_ttl(backend: Backend) -> None:
    lessor = new_lessor()
    lessor.promote(now_tick=0)
    grant(backend, lessor, 1, 3, now_tick=50)
    assert lessor.expired(now_tick=79, limit=10) == []
    assert lessor.expired(now_tick=80, limit=10) == [1]


def test_time_to_live_counts_down_then_reports_expired(backend: Backend) -> None:
    lessor = new_lessor()
    lessor.promote(now_tick=0)
    grant(backend, lessor, 1, 10, now_tick=0)
    lessor.attach(1, b"b")
    lessor.attach(1, b"a")
    assert lessor.time_to_live(1, now_tick=0, keys=True) == TimeToLive(10, 10, [b"a", b"b"])
    assert lessor.time_to_live(1, now_tick=45, keys=False).ttl_seconds == 5
    assert lessor.time_to_live(1, now_tick=95, keys=False).ttl_seconds == 0
    assert lessor.time_to_live(1, now_tick=100, keys=False).ttl_seconds == -1
    with pytest.raises(LeaseNotFoundError):
        lessor.time_to_live(2, now_tick=0, keys=False)


def test_renew_restarts_the_ttl(backend: Backend) -> None:
    lessor = new_lessor()
    lessor.promote(now_tick=0)
    grant(backend, lessor, 1, 5, now_tick=0)
    assert lessor.renew(1, now_tick=40) == Renewal(5, clear_checkpoint=False)
    assert lessor.expired(now_tick=50, limit=10) == []
    assert lessor.expired(now_tick=89, limit=10) == []
    assert lessor.expired(now_tick=90, limit=10) == [1]
    with pytest.raises(LeaseExpiredError, match="requested lease not found"):
        lessor.renew(1, now_tick=90)
    with pytest.raises(LeaseNotFoundError):
        lessor.renew(2, now_tick=90)


def test_demote_stops_expiry(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 2)
    lessor.promote(now_tick=0)
    lessor.demote()
    assert lessor.expired(now_tick=10_000, limit=10) == []
    lease = lessor.lookup(1)
    assert lease is not None and lease.expiry_tick is None
    lessor.promote(now_tick=10_000)  # a later term: full TTL plus the extension again
    assert lessor.time_to_live(1, now_tick=10_000, keys=False).ttl_seconds == 3


def test_expired_is_handed_out_again_until_revoked(backend: Backend) -> None:
    lessor = new_lessor()
    lessor.promote(now_tick=0)
    grant(backend, lessor, 1, 2, now_tick=0)
    assert lessor.expired(now_tick=20, limit=10) == [1]
    assert lessor.expired(now_tick=20 + RETRY_TICKS - 1, limit=10) == []
    assert lessor.expired(now_tick=20 + RETRY_TICKS, limit=10) == [1]  # proposal lost?
    revoke(backend, lessor, 1)
    assert lessor.expired(now_tick=10_000, limit=10) == []


def test_expired_is_bounded_and_earliest_first(backend: Backend) -> None:
    lessor = new_lessor()
    lessor.promote(now_tick=0)
    for lease_id in range(1, 41):
        grant(backend, lessor, lease_id, 2, now_tick=41 - lease_id)  # lease 40 expires first
    limit = lessor.expired_limit(pending_revokes=0)
    assert limit == limits.LEASE_MAX_PENDING_REVOKES == 16
    first = lessor.expired(now_tick=100, limit=limit)
    assert first == list(range(40, 24, -1))
    second = lessor.expired(now_tick=100, limit=lessor.expired_limit(pending_revokes=10))
    assert second == list(range(24, 18, -1))
    assert lessor.expired_limit(pending_revokes=16) == 0
    assert lessor.expired(now_tick=100, limit=0) == []
    with pytest.raises(AssertionError):
        lessor.expired(now_tick=100, limit=limits.LEASE_EXPIRED_PER_CALL_MAX + 1)


def test_expired_limit_follows_the_revoke_rate() -> None:
    slow = Lessor(ticks_per_second=1000, election_ticks=1000)  # 1 ms ticks
    assert slow.expired_limit(pending_revokes=0) == 1  # 1000 per second
    coarse = Lessor(ticks_per_second=1, election_ticks=2)
    assert coarse.expired_limit(pending_revokes=3) == limits.LEASE_MAX_PENDING_REVOKES - 3


# --- Checkpoints -----------------------------------------------------------------------


def test_checkpoint_survives_leader_change(backend: Backend, reopen: Reopen) -> None:
    ttl = 900  # 15 minutes: three checkpoint intervals
    leader = new_lessor()
    grant(backend, leader, 1, ttl)
    leader.promote(now_tick=0)  # expiry: 9000 + 10 ticks
    assert leader.checkpoints(now_tick=INTERVAL_TICKS - 1, limit=10) == []
    due = leader.checkpoints(now_tick=INTERVAL_TICKS, limit=10)
    assert due == [Checkpoint(1, 601)]  # ceil((9010 - 3000) / 10)
    checkpoint(backend, leader, 1, due[0].remaining_ttl_seconds)  # committed and applied
    leader.demote()

    backend = reopen(backend)  # the next leader restarts from what was persisted
    follower = new_lessor()
    follower.load(backend)
    follower.promote(now_tick=5000)
    assert follower.time_to_live(1, now_tick=5000, keys=False) == TimeToLive(602, ttl, [])
    assert follower.expired(now_tick=5000 + 601 * TPS + ELECTION_TICKS - 1, limit=1) == []
    assert follower.expired(now_tick=5000 + 601 * TPS + ELECTION_TICKS, limit=1) == [1]


def test_checkpoints_repeat_every_interval(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 3600)
    lessor.promote(now_tick=0)
    remaining: list[int] = []
    for interval in range(1, 13):
        due = lessor.checkpoints(now_tick=interval * INTERVAL_TICKS, limit=10)
        remaining.extend(point.remaining_ttl_seconds for point in due)
    # 3601 s at promote; the next checkpoint is scheduled while more than 300 s remain.
    assert remaining == [3301 - 300 * n for n in range(12)]
    assert remaining[-1] == 1


def test_short_leases_are_not_checkpointed(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, limits.LEASE_CHECKPOINT_INTERVAL_SECONDS - 10)
    lessor.promote(now_tick=0)
    assert lessor.checkpoints(now_tick=100 * INTERVAL_TICKS, limit=10) == []


def test_checkpoints_are_bounded(backend: Backend) -> None:
    lessor = new_lessor()
    for lease_id in range(1, 6):
        grant(backend, lessor, lease_id, 1000)
    lessor.promote(now_tick=0)
    assert len(lessor.checkpoints(now_tick=INTERVAL_TICKS, limit=3)) == 3
    assert len(lessor.checkpoints(now_tick=INTERVAL_TICKS, limit=3)) == 2
    with pytest.raises(AssertionError):
        lessor.checkpoints(now_tick=INTERVAL_TICKS, limit=limits.LEASE_CHECKPOINT_BATCH_MAX + 1)


def test_renewal_asks_to_clear_the_checkpoint(backend: Backend) -> None:
    lessor = new_lessor()
    grant(backend, lessor, 1, 900)
    checkpoint(backend, lessor, 1, 100)
    lessor.promote(now_tick=0)
    assert lessor.time_to_live(1, now_tick=0, keys=False).ttl_seconds == 101
    assert lessor.renew(1, now_tick=10) == Renewal(900, clear_checkpoint=True)
    assert lessor.time_to_live(1, now_tick=10, keys=False).ttl_seconds == 900
    checkpoint(backend, lessor, 1, 0)  # the server's proposed clear, applied
    assert lessor.renew(1, now_tick=20) == Renewal(900, clear_checkpoint=False)
    lessor.demote()
    lessor.promote(now_tick=30)
    assert lessor.time_to_live(1, now_tick=30, keys=False).ttl_seconds == 901


def test_checkpoint_of_a_revoked_lease_is_ignored(backend: Backend) -> None:
    lessor = new_lessor()
    assert checkpoint(backend, lessor, 1, 10) is False
    assert stored_lease_count(backend) == 0


# --- Lease ids -------------------------------------------------------------------------


def test_next_lease_id_is_deterministic_positive_and_fresh(backend: Backend) -> None:
    first = [next_lease_id(random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    assert 0 < first[0] < 1 << 63
    lessor = new_lessor()
    grant(backend, lessor, first[0], 10)
    assert lessor.next_lease_id(random.Random(7)) != first[0]


class _StuckRandom(random.Random):
    def getrandbits(self, k: int) -> int:
        return 5


def test_next_lease_id_gives_up_after_bounded_attempts() -> None:
    with pytest.raises(LeaseExistsError):
        next_lease_id(_StuckRandom(), taken={5})
