"""The apply layer: unit tests on one member, and lease expiry through Raft on three."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.raft import ConfChange, ConfChangeType, Entry, EntryType
from raftkv.server.apply import (
    AlarmResponse,
    Applier,
    LeaseCheckpointResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    MemberResponse,
    Result,
)
from raftkv.server.requests import (
    AlarmAction,
    AlarmRequest,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    Request,
    encode,
)
from raftkv.storage.alarm import AlarmMember, AlarmStore, AlarmType, CorruptClusterError
from raftkv.storage.backend import Backend, ConsistentIndex, WriteBatch
from raftkv.storage.errors import (
    CompactedError,
    LeaseExistsError,
    LeaseNotFoundError,
    NoSpaceError,
)
from raftkv.storage.lease import Lessor
from raftkv.storage.mvcc import (
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KVStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
    TxnResponse,
)
from tests.server.cluster import Cluster, Member, revokes

# --- One member ----------------------------------------------------------------------


class Machine:
    """One member's state machine, fed hand-made entries."""

    def __init__(self, directory: Path) -> None:
        self.backend = Backend(str(directory), map_size_bytes=64 * limits.MIB, sync=False)
        self.lessor = Lessor(ticks_per_second=10, election_ticks=10)
        self.kv = KVStore(
            self.backend,
            lease_checker=lambda lease_id: self.lessor.lookup(lease_id) is not None,
            leases=self.lessor,
        )
        self.alarms = AlarmStore(self.backend)
        self.applier = Applier(self.backend, self.kv, self.lessor, self.alarms, member_id=1)
        self.next_index = 2  # after the bootstrap snapshot at index 1
        self.next_id = 0

    def entry(self, request: Request | None, term: int = 2) -> Entry:
        data = b""
        if request is not None:
            self.next_id += 1
            data = encode(self.next_id, request)
        entry = Entry(term=term, index=self.next_index, data=data)
        self.next_index += 1
        return entry

    def run(self, *requests: Request) -> list[Result]:
        entries = [self.entry(request) for request in requests]
        results = self.applier.apply(entries)
        assert [request_id for request_id, _ in results] == list(
            range(self.next_id - len(requests) + 1, self.next_id + 1)
        )
        return [result for _, result in results]

    def get(self, key: bytes) -> bytes | None:
        kvs = self.kv.range(RangeRequest(key)).kvs
        return kvs[0].value if kvs else None


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(tmp_path / "backend")
    yield m
    m.backend.close()


def test_each_request_kind_applies(machine: Machine) -> None:
    grant, put, txn, delete, compact, revoke = machine.run(
        LeaseGrantRequest(7, 5),
        PutRequest(b"a", b"1", lease=7),
        TxnRequest(
            compare=(Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"a", value=b"1"),),
            success=(PutRequest(b"b", b"2"), PutRequest(b"c", b"3", lease=7)),
        ),
        DeleteRangeRequest(b"b"),
        CompactionRequest(3),
        LeaseRevokeRequest(7),
    )
    assert grant == LeaseGrantResponse(7, 5, 1)
    assert put == PutResponse(2)
    assert isinstance(txn, TxnResponse) and txn.succeeded and txn.revision == 3
    assert delete == DeleteRangeResponse(4, 1)
    assert compact == CompactionResponse(4)
    assert revoke == LeaseRevokeResponse(5, 2)
    assert machine.get(b"a") is None and machine.get(b"c") is None
    assert machine.lessor.leases() == []

    checkpoint, gone, raised, cleared, again = machine.run(
        LeaseGrantRequest(8, 60),
        LeaseCheckpointRequest(((8, 30), (9, 10))),
        AlarmRequest(AlarmAction.ACTIVATE, 3, AlarmType.NOSPACE),
        AlarmRequest(AlarmAction.DEACTIVATE, 3, AlarmType.NOSPACE),
        AlarmRequest(AlarmAction.DEACTIVATE, 3, AlarmType.NOSPACE),
    )
    assert isinstance(checkpoint, LeaseGrantResponse)
    assert gone == LeaseCheckpointResponse((True, False))
    lease = machine.lessor.lookup(8)
    assert lease is not None and lease.remaining_ttl_seconds == 30
    assert raised == AlarmResponse((AlarmMember(3, AlarmType.NOSPACE),))
    assert cleared == raised
    assert again == AlarmResponse(())


def test_errors_are_results_and_write_nothing(machine: Machine) -> None:
    machine.run(PutRequest(b"k", b"v"), CompactionRequest(2))
    revision = machine.kv.current_revision
    results = machine.run(
        PutRequest(b"x", b"1", lease=42),
        LeaseRevokeRequest(42),
        CompactionRequest(1),
        LeaseGrantRequest(5, 10),
        LeaseGrantRequest(5, 10),
        # A txn whose success branch fails on its second op writes nothing at all.
        TxnRequest(success=(PutRequest(b"y", b"1"), PutRequest(b"z", b"1", lease=99))),
        PutRequest(b"after", b"ok"),
    )
    assert [type(result) for result in results] == [
        LeaseNotFoundError,
        LeaseNotFoundError,
        CompactedError,
        LeaseGrantResponse,
        LeaseExistsError,
        LeaseNotFoundError,
        PutResponse,
    ]
    assert machine.kv.current_revision == revision + 1
    assert machine.get(b"x") is None and machine.get(b"y") is None
    assert machine.get(b"after") == b"ok"


def test_alarms_refuse_writes_deterministically(machine: Machine) -> None:
    results = machine.run(
        AlarmRequest(AlarmAction.ACTIVATE, 2, AlarmType.NOSPACE),
        PutRequest(b"k", b"v"),
        LeaseGrantRequest(1, 10),
        TxnRequest(success=(TxnRequest(success=(PutRequest(b"n", b"v"),)),)),
        DeleteRangeRequest(b"k"),
        AlarmRequest(AlarmAction.ACTIVATE, 2, AlarmType.CORRUPT),
        DeleteRangeRequest(b"k"),
        LeaseCheckpointRequest(()),
    )
    assert [type(result) for result in results] == [
        AlarmResponse,
        NoSpaceError,
        NoSpaceError,
        NoSpaceError,  # a nested txn's put counts
        DeleteRangeResponse,
        AlarmResponse,
        CorruptClusterError,
        LeaseCheckpointResponse,
    ]


def test_consistent_index_and_idempotent_replay(machine: Machine) -> None:
    conf = ConfChange(ConfChangeType.ADD_NODE, 4)
    entries = [
        machine.entry(None),  # a new leader's empty entry
        machine.entry(LeaseGrantRequest(3, 10)),
        machine.entry(PutRequest(b"k", b"v", lease=3)),
        Entry(term=2, index=machine.next_index, type=EntryType.CONF_CHANGE, data=conf.encode()),
    ]
    machine.next_index += 1
    results = machine.applier.apply(entries)
    assert [type(result) for _, result in results] == [
        LeaseGrantResponse,
        PutResponse,
        MemberResponse,
    ]
    # The conf change added member 4 to the replicated member table, in the same batch.
    member = machine.applier.members.get(4)
    assert member is not None and not member.is_learner
    assert machine.backend.consistent_index() == ConsistentIndex(5, 2)
    revision = machine.kv.current_revision

    # Replaying the same entries (a restart re-reads the log) changes nothing.
    assert machine.applier.apply(entries) == []
    assert machine.applier.apply(entries[1:3]) == []
    assert machine.kv.current_revision == revision
    assert machine.lessor.leases() == [3]

    # A partial overlap applies only the new suffix; an empty entry alone moves the index.
    more = [machine.entry(PutRequest(b"k", b"w")), machine.entry(None, term=3)]
    results = machine.applier.apply([entries[-1], *more])
    assert [type(result) for _, result in results] == [PutResponse]
    assert machine.backend.consistent_index() == ConsistentIndex(7, 3)
    assert machine.get(b"k") == b"w"


def test_one_batch_per_apply_call(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = 0
    write = machine.backend.write

    def counting_write() -> AbstractContextManager[WriteBatch]:
        nonlocal batches
        batches += 1
        return write()

    monkeypatch.setattr(machine.backend, "write", counting_write)
    machine.run(
        LeaseGrantRequest(1, 10),
        PutRequest(b"a", b"1", lease=1),
        PutRequest(b"b", b"1", lease=404),  # an error in the middle
        DeleteRangeRequest(b"a"),
        LeaseRevokeRequest(1),
    )
    assert batches == 1
    assert machine.applier.apply([]) == []
    assert batches == 1


def test_results_are_deterministic_across_members(tmp_path: Path) -> None:
    requests: list[Request] = [
        LeaseGrantRequest(1, 10),
        PutRequest(b"a", b"1", lease=1, prev_kv=True),
        PutRequest(b"a", b"2", prev_kv=True),
        LeaseRevokeRequest(1),
        LeaseRevokeRequest(1),
        DeleteRangeRequest(b"a", b"\0", prev_kv=True),
    ]
    outcomes = []
    for name in ("one", "two"):
        m = Machine(tmp_path / name)
        try:
            results = m.run(*requests)
            outcomes.append(
                [r if not isinstance(r, Exception) else (type(r), str(r)) for r in results]
            )
        finally:
            m.backend.close()
    assert outcomes[0] == outcomes[1]


# --- Lease expiry through Raft, three members ---------------------------------------

TICKS_PER_SECOND = 10
ELECTION_TICKS = 10
TTL_SECONDS = 3
TTL_TICKS = TTL_SECONDS * TICKS_PER_SECOND
# Slack for the revoke's proposal to commit and apply (it settles within its tick).
BOUND_TICKS = 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, ticks_per_second=TICKS_PER_SECOND, election_ticks=ELECTION_TICKS)
    yield c
    c.close()


def _start(cluster: Cluster) -> Member:
    cluster.members[1].rawnode.campaign()
    cluster.stabilize()
    leader = cluster.leader()
    assert leader is not None and leader.id == 1
    assert leader.lessor.is_primary and leader.promotions == [cluster.now]
    assert all(not m.lessor.is_primary for m in cluster.members.values() if m is not leader)
    return leader


def _grant_and_put(cluster: Cluster, lease_id: int, ttl_seconds: int) -> int:
    grant = cluster.request(LeaseGrantRequest(lease_id, ttl_seconds))
    assert isinstance(grant, LeaseGrantResponse) and grant.ttl_seconds == ttl_seconds
    put = cluster.request(PutRequest(b"leased", b"v", lease=lease_id))
    assert isinstance(put, PutResponse)
    cluster.tick()  # the next heartbeat carries the commit index to the followers
    for member in cluster.members.values():
        assert member.get(b"leased") == b"v"
        assert member.lessor.lease_of(b"leased") == lease_id
    return cluster.now


def _deleted_everywhere(cluster: Cluster) -> bool:
    return all(m.get(b"leased") is None for m in cluster.members.values())


def _assert_revoked_once_everywhere(cluster: Cluster, lease_id: int) -> None:
    """Every member applied the same single successful revoke (same index, same revision)."""
    seen = set()
    for member in cluster.members.values():
        done = revokes(member, lease_id)
        assert len(done) == 1, f"member {member.id} revoked {len(done)} times"
        assert isinstance(done[0].result, LeaseRevokeResponse)
        assert done[0].result.deleted_keys == 1
        seen.add((done[0].index, done[0].result.revision))
        assert member.lessor.lookup(lease_id) is None
        assert member.get(b"leased") is None
    assert len(seen) == 1, f"members disagree on the revoke: {seen}"
    revisions = {m.kv.current_revision for m in cluster.members.values()}
    assert len(revisions) == 1


def test_lease_expires_through_raft(cluster: Cluster) -> None:
    leader = _start(cluster)
    start = cluster.now
    _grant_and_put(cluster, lease_id=11, ttl_seconds=TTL_SECONDS)
    grant_tick = start  # the grant applied on the primary at this tick

    # Not before the TTL...
    while cluster.now < grant_tick + TTL_TICKS - 1:
        cluster.tick()
        assert cluster.members[2].get(b"leased") == b"v"
    # ...and soon after it.
    deleted_at = cluster.tick_until(lambda: _deleted_everywhere(cluster), limit=BOUND_TICKS + 2)
    assert grant_tick + TTL_TICKS <= deleted_at <= grant_tick + TTL_TICKS + BOUND_TICKS
    # Only the leader proposed it, once, through the log.
    assert [lease for _, lease in leader.proposed_revokes] == [11]
    for member in cluster.members.values():
        if member is not leader:
            assert member.proposed_revokes == []
    _assert_revoked_once_everywhere(cluster, 11)
    assert leader.pending_revokes == set()

    # Nothing else happens later: no duplicate revoke is proposed.
    cluster.tick(limits.LEASE_EXPIRED_RETRY_SECONDS * TICKS_PER_SECOND + 5)
    assert [lease for _, lease in leader.proposed_revokes] == [11]


def test_lease_survives_leader_change_with_one_election_of_extension(cluster: Cluster) -> None:
    old = _start(cluster)
    grant_tick = cluster.now
    _grant_and_put(cluster, lease_id=21, ttl_seconds=TTL_SECONDS)
    cluster.tick(5)
    cluster.isolate(old.id)

    new_leader = cluster.tick_until(
        lambda: any(m.lessor.is_primary for m in cluster.members.values() if m is not old),
        limit=10 * ELECTION_TICKS,
    )
    promoted = [m for m in cluster.members.values() if m is not old and m.lessor.is_primary]
    assert len(promoted) == 1
    primary = promoted[0]
    assert primary.promotions == [new_leader]
    assert new_leader < grant_tick + TTL_TICKS, "the leader change came after the expiry"

    # Alive past the old expiry: the new primary restarted the lease at the full TTL plus
    # one election timeout (there is no checkpoint).
    expected = new_leader + TTL_TICKS + ELECTION_TICKS
    while cluster.now < expected - 1:
        cluster.tick()
        assert primary.get(b"leased") == b"v"
    deleted_at = cluster.tick_until(
        lambda: all(m.get(b"leased") is None for m in cluster.members.values() if m is not old),
        limit=BOUND_TICKS + 2,
    )
    assert expected <= deleted_at <= expected + BOUND_TICKS
    # The isolated old leader stepped down (check quorum) and demoted its lessor, so
    # it never proposed a revoke of its own.
    assert not old.lessor.is_primary
    assert old.proposed_revokes == []

    # Once healed, the old leader catches up on the same log and revision.
    cluster.heal()
    cluster.tick_until(lambda: _deleted_everywhere(cluster), limit=5 * ELECTION_TICKS)
    cluster.tick(2)
    _assert_revoked_once_everywhere(cluster, 21)


def test_checkpoint_restarts_lease_from_remaining_ttl(tmp_path: Path) -> None:
    # One tick per second keeps the 300 s checkpoint interval short in ticks.
    cluster = Cluster(tmp_path, ticks_per_second=1, election_ticks=ELECTION_TICKS)
    try:
        _start(cluster)
        ttl = limits.LEASE_CHECKPOINT_INTERVAL_SECONDS + 100
        grant_tick = cluster.now
        _grant_and_put(cluster, lease_id=31, ttl_seconds=ttl)

        def checkpointed() -> bool:
            leases = [m.lessor.lookup(31) for m in cluster.members.values()]
            return all(lease is not None and lease.remaining_ttl_seconds > 0 for lease in leases)

        at = cluster.tick_until(checkpointed, limit=limits.LEASE_CHECKPOINT_INTERVAL_SECONDS + 5)
        interval = limits.LEASE_CHECKPOINT_INTERVAL_SECONDS
        assert grant_tick + interval <= at <= grant_tick + interval + 1
        remaining = {
            lease.remaining_ttl_seconds
            for m in cluster.members.values()
            if (lease := m.lessor.lookup(31)) is not None
        }
        assert remaining == {ttl - limits.LEASE_CHECKPOINT_INTERVAL_SECONDS}

        old = cluster.leader()
        assert old is not None
        cluster.isolate(old.id)
        promoted_at = cluster.tick_until(
            lambda: any(m.lessor.is_primary for m in cluster.members.values() if m is not old),
            limit=10 * ELECTION_TICKS,
        )
        # The new primary restarts from the checkpoint (100 s), not the full TTL (400 s).
        expected = promoted_at + 100 + ELECTION_TICKS
        deleted_at = cluster.tick_until(
            lambda: all(m.get(b"leased") is None for m in cluster.members.values() if m is not old),
            limit=expected - cluster.now + BOUND_TICKS + 1,
        )
        assert expected <= deleted_at <= expected + BOUND_TICKS
    finally:
        cluster.close()
