"""etcd's Lock and Election services over gRPC, and etcdctl's lock/elect against them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2 as election_pb
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2 as lock_pb
from tests.api.conftest import CALL_TIMEOUT_S, etcdctl_binary
from tests.api.full_server import FullServer, full, wait_until
from tests.api.helpers import rpc_error, status_of

__all__ = ["full"]  # the fixture

UNKNOWN = grpc.StatusCode.UNKNOWN
PENDING_CHECK_S = 0.3


def grant(server: FullServer, ttl_seconds: int = 30) -> int:
    lease_id: int = server.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl_seconds)).ID
    return lease_id


def revoke(server: FullServer, lease_id: int) -> None:
    server.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id))


def keys_under(server: FullServer, prefix: bytes) -> list[bytes]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    response = server.kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end))
    return [kv.key for kv in response.kvs]


def lock_future(server: FullServer, name: bytes, lease_id: int) -> Any:
    return server.lock.Lock.future(lock_pb.LockRequest(name=name, lease=lease_id))


def still_pending(future: Any) -> bool:
    time.sleep(PENDING_CHECK_S)
    return not future.done()


# --- Lock -------------------------------------------------------------------------------


def test_lock_key_is_name_slash_lease_hex_and_unlock_deletes_it(full: FullServer) -> None:
    lease_id = grant(full)
    response = full.lock.Lock(lock_pb.LockRequest(name=b"mylock", lease=lease_id))
    assert response.key == b"mylock/" + format(lease_id, "x").encode()
    (kv,) = full.kv.Range(rpc_pb2.RangeRequest(key=response.key)).kvs
    assert (kv.lease, kv.value, kv.create_revision) == (lease_id, b"", response.header.revision)
    assert response.header.member_id == full.node.member_id
    unlocked = full.lock.Unlock(lock_pb.UnlockRequest(key=response.key))
    assert unlocked.header.revision == response.header.revision + 1
    assert keys_under(full, b"mylock/") == []


def test_lockers_exclude_each_other(full: FullServer) -> None:
    lockers, rounds = 4, 3
    holders = 0
    overlaps: list[int] = []
    acquisitions: list[int] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def locker() -> None:
        nonlocal holders
        try:
            for _ in range(rounds):
                lease_id = grant(full)
                key = full.lock.Lock(lock_pb.LockRequest(name=b"shared", lease=lease_id)).key
                with guard:
                    holders += 1
                    overlaps.append(holders)
                    acquisitions.append(lease_id)
                time.sleep(0.01)
                with guard:
                    holders -= 1
                full.lock.Unlock(lock_pb.UnlockRequest(key=key))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=locker) for _ in range(lockers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S * 2)
    assert not errors, errors
    assert len(acquisitions) == lockers * rounds
    assert max(overlaps) == 1, f"two holders at once: {overlaps}"
    assert full.watcher_count() == 0


def test_waiter_gets_the_lock_when_the_holders_lease_is_revoked(full: FullServer) -> None:
    holder, waiter = grant(full), grant(full)
    full.lock.Lock(lock_pb.LockRequest(name=b"L", lease=holder))
    pending = lock_future(full, b"L", waiter)
    assert still_pending(pending)
    assert full.watcher_count() == 1  # waiting on the holder's key
    revoke(full, holder)
    response = pending.result(timeout=CALL_TIMEOUT_S)
    assert response.key == b"L/" + format(waiter, "x").encode()
    assert keys_under(full, b"L/") == [response.key]
    assert full.watcher_count() == 0


def test_waiters_are_served_in_queue_order(full: FullServer) -> None:
    first, second, third = grant(full), grant(full), grant(full)
    key = full.lock.Lock(lock_pb.LockRequest(name=b"Q", lease=first)).key
    second_call = lock_future(full, b"Q", second)
    wait_until(lambda: len(keys_under(full, b"Q/")) == 2, "the second waiter queued")
    third_call = lock_future(full, b"Q", third)
    wait_until(lambda: len(keys_under(full, b"Q/")) == 3, "the third waiter queued")
    full.lock.Unlock(lock_pb.UnlockRequest(key=key))
    second_key = second_call.result(timeout=CALL_TIMEOUT_S).key
    assert still_pending(third_call)
    full.lock.Unlock(lock_pb.UnlockRequest(key=second_key))
    assert third_call.result(timeout=CALL_TIMEOUT_S).key.endswith(format(third, "x").encode())


def test_same_lease_twice_is_one_acquisition(full: FullServer) -> None:
    lease_id = grant(full)
    first = full.lock.Lock(lock_pb.LockRequest(name=b"twice", lease=lease_id))
    second = full.lock.Lock(
        lock_pb.LockRequest(name=b"twice", lease=lease_id), timeout=CALL_TIMEOUT_S
    )
    assert second.key == first.key
    assert second.header.revision == first.header.revision  # nothing was written
    assert keys_under(full, b"twice/") == [first.key]


def test_canceled_lock_leaves_no_watcher_and_no_key(full: FullServer) -> None:
    holder, waiter = grant(full), grant(full)
    held = full.lock.Lock(lock_pb.LockRequest(name=b"C", lease=holder)).key
    pending = lock_future(full, b"C", waiter)
    wait_until(lambda: full.watcher_count() == 1, "the waiter watches its predecessor")
    pending.cancel()
    wait_until(lambda: full.watcher_count() == 0, "the canceled waiter's watcher is gone")
    wait_until(lambda: keys_under(full, b"C/") == [held], "the canceled waiter left the queue")
    # The next locker is not stuck behind the canceled one.
    full.lock.Unlock(lock_pb.UnlockRequest(key=held))
    late = grant(full)
    response = full.lock.Lock(lock_pb.LockRequest(name=b"C", lease=late), timeout=CALL_TIMEOUT_S)
    assert response.key == b"C/" + format(late, "x").encode()


def test_waiter_whose_lease_expires_while_waiting_does_not_get_the_lock(
    full: FullServer,
) -> None:
    holder, waiter = grant(full), grant(full)
    held = full.lock.Lock(lock_pb.LockRequest(name=b"J", lease=holder)).key
    pending = lock_future(full, b"J", waiter)
    wait_until(lambda: len(keys_under(full, b"J/")) == 2, "the waiter queued")
    revoke(full, waiter)  # its key goes with the lease; the wait goes on
    assert still_pending(pending)
    full.lock.Unlock(lock_pb.UnlockRequest(key=held))
    error = rpc_error(lambda: pending.result(timeout=CALL_TIMEOUT_S))
    assert status_of(error) == (UNKNOWN, "mutex: session is expired")
    assert full.watcher_count() == 0


def test_lock_without_lease_gets_a_sixty_second_lease(full: FullServer) -> None:
    response = full.lock.Lock(lock_pb.LockRequest(name=b"nolease"))
    lease_id = int(response.key.rsplit(b"/", 1)[1], 16)
    ttl = full.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id))
    assert ttl.grantedTTL == 60
    (kv,) = full.kv.Range(rpc_pb2.RangeRequest(key=response.key)).kvs
    assert kv.lease == lease_id


def test_lock_refusals_have_etcds_code_and_message(full: FullServer) -> None:
    error = rpc_error(lambda: full.lock.Lock(lock_pb.LockRequest(name=b"x", lease=12345)))
    assert status_of(error) == (UNKNOWN, "etcdserver: requested lease not found")
    error = rpc_error(lambda: full.lock.Unlock(lock_pb.UnlockRequest(key=b"")))
    assert status_of(error) == (UNKNOWN, "etcdserver: key is not provided")
    # Unlocking a key that does not exist is fine, as in etcd.
    full.lock.Unlock(lock_pb.UnlockRequest(key=b"x/none"))


def test_hasleader_refuses_without_a_leader(full: FullServer) -> None:
    full.node.leader_id = 0
    lease_id = grant(full)
    error = rpc_error(
        lambda: full.lock.Lock(
            lock_pb.LockRequest(name=b"x", lease=lease_id), metadata=(("hasleader", "true"),)
        )
    )
    assert status_of(error) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    assert keys_under(full, b"x/") == []


# --- Election ---------------------------------------------------------------------------


def campaign(full: FullServer, name: bytes, lease_id: int, value: bytes) -> Any:
    return full.election.Campaign(
        election_pb.CampaignRequest(name=name, lease=lease_id, value=value),
        timeout=CALL_TIMEOUT_S,
    )


def test_campaign_leader_proclaim_resign(full: FullServer) -> None:
    lease_id = grant(full)
    response = campaign(full, b"e", lease_id, b"v1")
    leader = response.leader
    assert (leader.name, leader.lease) == (b"e", lease_id)
    assert leader.key == b"e/" + format(lease_id, "x").encode()
    assert leader.rev == response.header.revision
    current = full.election.Leader(election_pb.LeaderRequest(name=b"e"))
    assert (current.kv.key, current.kv.value, current.kv.lease) == (leader.key, b"v1", lease_id)
    proclaimed = full.election.Proclaim(election_pb.ProclaimRequest(leader=leader, value=b"v2"))
    current = full.election.Leader(election_pb.LeaderRequest(name=b"e"))
    assert (current.kv.value, current.kv.mod_revision) == (b"v2", proclaimed.header.revision)
    assert current.kv.create_revision == leader.rev and current.kv.lease == lease_id
    full.election.Resign(election_pb.ResignRequest(leader=leader))
    error = rpc_error(lambda: full.election.Leader(election_pb.LeaderRequest(name=b"e")))
    assert status_of(error) == (UNKNOWN, "election: no leader")


def test_second_candidate_leads_after_the_first_resigns(full: FullServer) -> None:
    first, second = grant(full), grant(full)
    leader = campaign(full, b"race", first, b"a").leader
    pending = full.election.Campaign.future(
        election_pb.CampaignRequest(name=b"race", lease=second, value=b"b")
    )
    assert still_pending(pending)
    # The waiting candidate is no leader: Leader still reports the first.
    assert full.election.Leader(election_pb.LeaderRequest(name=b"race")).kv.value == b"a"
    full.election.Resign(election_pb.ResignRequest(leader=leader))
    won = pending.result(timeout=CALL_TIMEOUT_S).leader
    assert won.lease == second and won.rev > leader.rev
    assert full.election.Leader(election_pb.LeaderRequest(name=b"race")).kv.value == b"b"
    # The deposed leader can neither proclaim nor resign the new one away.
    error = rpc_error(
        lambda: full.election.Proclaim(election_pb.ProclaimRequest(leader=leader, value=b"x"))
    )
    assert status_of(error) == (UNKNOWN, "election: not leader")
    full.election.Resign(election_pb.ResignRequest(leader=leader))
    assert full.election.Leader(election_pb.LeaderRequest(name=b"race")).kv.value == b"b"


def test_campaign_again_with_a_new_value_proclaims_it(full: FullServer) -> None:
    lease_id = grant(full)
    first = campaign(full, b"again", lease_id, b"old").leader
    second = campaign(full, b"again", lease_id, b"new").leader
    assert (second.key, second.rev) == (first.key, first.rev)
    assert full.election.Leader(election_pb.LeaderRequest(name=b"again")).kv.value == b"new"


def test_missing_leader_field_is_refused(full: FullServer) -> None:
    message = '"leader" field must be provided'
    error = rpc_error(lambda: full.election.Proclaim(election_pb.ProclaimRequest(value=b"v")))
    assert status_of(error) == (UNKNOWN, message)
    error = rpc_error(lambda: full.election.Resign(election_pb.ResignRequest()))
    assert status_of(error) == (UNKNOWN, message)


def test_campaign_with_unknown_lease_is_refused(full: FullServer) -> None:
    error = rpc_error(lambda: campaign(full, b"e", 777, b"v"))
    assert status_of(error) == (UNKNOWN, "etcdserver: requested lease not found")


class Observer:
    """An Observe stream read by a thread into a list."""

    def __init__(self, full: FullServer, name: bytes) -> None:
        self.call: Any = full.election.Observe(election_pb.LeaderRequest(name=name))
        self.values: list[tuple[bytes, bytes, int]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                kv = response.kv
                assert response.header.revision >= kv.mod_revision
                self.values.append((kv.key, kv.value, kv.mod_revision))
        except grpc.RpcError:
            pass  # canceled by the test

    def wait_for(self, count: int) -> list[bytes]:
        wait_until(lambda: len(self.values) >= count, f"{count} observed values")
        return [value for _, value, _ in self.values]


@pytest.fixture
def observers(full: FullServer) -> Iterator[list[Observer]]:
    started: list[Observer] = []
    try:
        yield started
    finally:
        for observer in started:
            observer.call.cancel()


def test_observe_follows_values_and_leaders(full: FullServer, observers: list[Observer]) -> None:
    observer = Observer(full, b"obs")
    observers.append(observer)
    assert not observer.values  # nobody campaigns yet: it waits
    first, second = grant(full), grant(full)
    leader = campaign(full, b"obs", first, b"a").leader
    assert observer.wait_for(1) == [b"a"]
    full.election.Proclaim(election_pb.ProclaimRequest(leader=leader, value=b"b"))
    assert observer.wait_for(2) == [b"a", b"b"]
    pending = full.election.Campaign.future(
        election_pb.CampaignRequest(name=b"obs", lease=second, value=b"c")
    )
    assert still_pending(pending)
    assert len(observer.values) == 2  # a waiting candidate is not reported
    revoke(full, first)
    pending.result(timeout=CALL_TIMEOUT_S)
    assert observer.wait_for(3) == [b"a", b"b", b"c"]
    revisions = [revision for _, _, revision in observer.values]
    assert revisions == sorted(revisions)
    observer.call.cancel()
    wait_until(lambda: full.watcher_count() == 0, "the canceled observer's watcher is gone")


def test_observe_starts_with_the_current_leader(
    full: FullServer, observers: list[Observer]
) -> None:
    lease_id = grant(full)
    campaign(full, b"now", lease_id, b"here")
    observer = Observer(full, b"now")
    observers.append(observer)
    assert observer.wait_for(1) == [b"here"]


# --- etcdctl lock / elect ---------------------------------------------------------------


def start_etcdctl(endpoint: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [etcdctl_binary(), f"--endpoints={endpoint}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        start_new_session=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=CALL_TIMEOUT_S)


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"etcdctl ended early: {process.communicate(timeout=CALL_TIMEOUT_S)}"
    return line.rstrip("\n")


def test_etcdctl_lock_waits_for_a_grpc_lock(
    full: FullServer, processes: list[subprocess.Popen[str]]
) -> None:
    held = full.lock.Lock(lock_pb.LockRequest(name=b"mylock", lease=grant(full))).key
    process = start_etcdctl(full.endpoint, "lock", "mylock", "--", "echo", "hi")
    processes.append(process)
    time.sleep(PENDING_CHECK_S * 2)
    assert process.poll() is None, "etcdctl got the lock while the gRPC lock held it"
    full.lock.Unlock(lock_pb.UnlockRequest(key=held))
    stdout, stderr = process.communicate(timeout=CALL_TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert stdout == "hi\n"


def test_grpc_lock_waits_for_etcdctl_lock(
    full: FullServer, processes: list[subprocess.Popen[str]]
) -> None:
    process = start_etcdctl(full.endpoint, "lock", "mylock")
    processes.append(process)
    etcdctl_key = read_line(process)  # printed once it holds the lock
    assert etcdctl_key.startswith("mylock/")
    pending = lock_future(full, b"mylock", grant(full))
    assert still_pending(pending)
    os.killpg(process.pid, signal.SIGINT)  # etcdctl revokes its session's lease
    response = pending.result(timeout=CALL_TIMEOUT_S)
    assert keys_under(full, b"mylock/") == [response.key]


def test_etcdctl_elect_and_observe(
    full: FullServer, processes: list[subprocess.Popen[str]]
) -> None:
    candidate = start_etcdctl(full.endpoint, "elect", "myelection", "val")
    processes.append(candidate)
    leader_key = read_line(candidate)
    assert leader_key.startswith("myelection/")
    assert read_line(candidate) == "val"
    current = full.election.Leader(election_pb.LeaderRequest(name=b"myelection"))
    assert (current.kv.key, current.kv.value) == (leader_key.encode(), b"val")
    listener = start_etcdctl(full.endpoint, "elect", "-l", "myelection")
    processes.append(listener)
    assert (read_line(listener), read_line(listener)) == (leader_key, "val")
    # A gRPC candidate waits for etcdctl's leader, and wins once it resigns.
    pending = full.election.Campaign.future(
        election_pb.CampaignRequest(name=b"myelection", lease=grant(full), value=b"grpc")
    )
    assert still_pending(pending)
    os.killpg(candidate.pid, signal.SIGINT)
    won = pending.result(timeout=CALL_TIMEOUT_S).leader
    assert (read_line(listener), read_line(listener)) == (won.key.decode(), "grpc")
