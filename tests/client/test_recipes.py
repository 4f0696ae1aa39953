"""Lock and election recipes (and the server-side Lock/Election services) on a real etcd."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from raftkv.client import Client
from raftkv.client.errors import ElectionNoLeaderError, LockNotHeldError, SessionExpiredError
from raftkv.client.models import KeyValue, SortOrder, SortTarget
from raftkv.client.recipes import Election, Lock
from tests.etcd_process import EtcdProcess

CONTENDERS = 4
ROUNDS_EACH = 3
WAIT_S = 10.0


async def test_lock_excludes_and_fencing_revisions_increase(etcd: EtcdProcess, prefix: str) -> None:
    holders: list[str] = []  # who is inside the critical section right now
    fencing_in_order: list[int] = []
    counter_key = prefix + "counter"

    async def contend(name: str) -> None:
        async with Client([etcd.endpoint]) as client:
            for _ in range(ROUNDS_EACH):
                async with Lock(client, prefix + "lock") as held:
                    holders.append(name)
                    assert len(holders) == 1, f"two holders at once: {holders}"
                    fencing_in_order.append(held.revision)
                    # A read-modify-write that only mutual exclusion keeps correct.
                    current = await client.get(counter_key)
                    count = int(current.kvs[0].value) if current.kvs else 0
                    await asyncio.sleep(0.01)
                    await client.put(counter_key, str(count + 1))
                    holders.remove(name)

    await asyncio.wait_for(
        asyncio.gather(*(contend(f"c{i}") for i in range(CONTENDERS))), WAIT_S * 3
    )
    assert len(fencing_in_order) == CONTENDERS * ROUNDS_EACH
    assert fencing_in_order == sorted(set(fencing_in_order)), "fencing tokens must increase"
    async with Client([etcd.endpoint]) as client:
        final = await client.get(counter_key)
        assert int(final.kvs[0].value) == CONTENDERS * ROUNDS_EACH
        assert (await client.get_prefix(prefix + "lock/")).kvs == ()  # all released


async def test_waiter_whose_session_dies_does_not_get_the_lock(
    etcd: EtcdProcess, prefix: str
) -> None:
    name = prefix + "lock"
    async with Client([etcd.endpoint]) as client:
        first = Lock(client, name)
        await first.acquire()
        second = Lock(client, name, ttl_s=3)
        waiting = asyncio.create_task(second.acquire())
        queue = await wait_for_queue_length(client, name + "/", 2)
        # The waiter's session lease is revoked (as if it had expired), then the holder leaves.
        await client.lease_revoke(queue[1].lease)
        await first.release()
        with pytest.raises(SessionExpiredError):
            await asyncio.wait_for(waiting, WAIT_S)
        assert not second.is_held
        with pytest.raises(LockNotHeldError):
            await second.release()
        # The lock is free again.
        third = Lock(client, name)
        await asyncio.wait_for(third.acquire(), WAIT_S)
        await third.release()


async def wait_for_queue_length(client: Client, prefix: str, length: int) -> tuple[KeyValue, ...]:
    """The keys queued under `prefix`, in creation order, once there are `length`."""
    for _ in range(100):
        queue = await client.get(
            prefix, prefix=True, sort_target=SortTarget.CREATE, sort_order=SortOrder.ASCEND
        )
        if len(queue.kvs) >= length:
            return queue.kvs
        await asyncio.sleep(0.05)
    raise AssertionError(f"the queue under {prefix} never reached {length}")


async def test_election_leader_observe_proclaim_resign(etcd: EtcdProcess, prefix: str) -> None:
    name = prefix + "election"
    async with Client([etcd.endpoint]) as client:
        watcher = Election(client, name)
        with pytest.raises(ElectionNoLeaderError):
            await watcher.leader()
        seen: list[bytes] = []
        observed = asyncio.Event()

        async def observe() -> None:
            async for leader in watcher.observe():
                seen.append(leader.value)
                observed.set()

        observer = asyncio.create_task(observe())
        alice, bob = Election(client, name), Election(client, name)
        await alice.campaign("alice")
        assert alice.is_leader and (await watcher.leader()).value == b"alice"
        bob_campaign = asyncio.create_task(bob.campaign("bob"))
        await wait_for_queue_length(client, name + "/", 2)
        assert not bob_campaign.done()  # bob waits behind alice
        await alice.proclaim("alice v2")
        assert (await watcher.leader()).value == b"alice v2"
        await alice.resign()
        bob_lead = await asyncio.wait_for(bob_campaign, WAIT_S)
        assert bob.is_leader and (await watcher.leader()).key == bob_lead.key
        await wait_until(lambda: seen[-1:] == [b"bob"])
        observer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await observer
        assert seen == [b"alice", b"alice v2", b"bob"]
        await bob.resign()
        with pytest.raises(ElectionNoLeaderError):
            await watcher.leader()


async def wait_until(condition: object) -> None:
    assert callable(condition)
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("condition never held")


async def test_lock_service_wrappers(etcd: EtcdProcess, prefix: str) -> None:
    name = prefix + "svc-lock"
    async with Client([etcd.endpoint]) as client:
        first_lease = await client.lease_grant(30)
        second_lease = await client.lease_grant(30)
        first_key = await client.lock(name, first_lease.id, timeout_s=WAIT_S)
        assert first_key.startswith((name + "/").encode())
        second = asyncio.create_task(client.lock(name, second_lease.id, timeout_s=WAIT_S))
        await asyncio.sleep(0.3)
        assert not second.done()  # blocked by the first holder
        await client.unlock(first_key)
        second_key = await asyncio.wait_for(second, WAIT_S)
        assert second_key != first_key
        await client.unlock(second_key)
        for lease in (first_lease, second_lease):
            await client.lease_revoke(lease.id)


async def test_election_service_wrappers(etcd: EtcdProcess, prefix: str) -> None:
    name = prefix + "svc-election"
    async with Client([etcd.endpoint]) as client:
        lease = await client.lease_grant(30)
        leader = await client.election_campaign(name, "one", lease.id, timeout_s=WAIT_S)
        assert leader.name == name.encode() and leader.lease == lease.id
        assert (await client.election_leader(name)).value == b"one"
        await client.election_proclaim(leader, "two")
        observed = client.election_observe(name)
        assert (await asyncio.wait_for(anext(observed), WAIT_S)).value == b"two"
        await observed.aclose()
        await client.election_resign(leader)
        with pytest.raises(ElectionNoLeaderError):
            await client.election_leader(name)
        await client.lease_revoke(lease.id)
