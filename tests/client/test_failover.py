"""Fail-over on a real 3-member etcd cluster: kill the member the client uses (the leader,
the hardest case: the survivors must elect a new one) and check that reads go on through
another endpoint and a watch resumes without losing or repeating an event."""

from __future__ import annotations

import asyncio

from raftkv.client import Client, Compare, Op, Watch
from raftkv.client.errors import ClientError
from raftkv.client.models import Event
from tests.client.etcd_cluster import EtcdCluster

KEYS_BEFORE_KILL = 20
KEYS_AFTER_KILL = 20
WAIT_S = 30.0
# Events already written arrive within this, even across a fail-over.
EVENT_WAIT_S = 10.0


async def leader_first(cluster: EtcdCluster) -> list[str]:
    """The cluster's endpoints, the leader's first."""
    async with Client(cluster.endpoints) as probe:
        leader = await probe.leader_endpoint()
    return [leader, *(e for e in cluster.endpoints if e != leader)]


async def test_reads_continue_after_the_used_member_dies(etcd_cluster: EtcdCluster) -> None:
    endpoints = await leader_first(etcd_cluster)
    async with Client(endpoints, timeout_s=2.0) as client:
        written = await client.put("k", "v")
        assert client.endpoint == endpoints[0]
        etcd_cluster.member_at(endpoints[0]).kill()
        got = await asyncio.wait_for(client.get("k"), WAIT_S)
        assert got.kvs[0].value == b"v" and got.kvs[0].mod_revision == written.header.revision
        assert client.endpoint in endpoints[1:]
        stale = await client.get("k", serializable=True)
        assert stale.kvs[0].value == b"v"
        # Writes go on too, through the new leader.
        after = await client.put("k", "w")
        assert after.header.revision > written.header.revision
        assert {member.id for member in await client.member_list()} != set()


async def put_if_absent(client: Client, key: str) -> None:
    """Create `key` exactly once, retrying the txn after an ambiguous failure (a repeat
    of "create if absent" cannot create a second event)."""
    for _ in range(20):
        try:
            await client.txn(
                compare=[Compare.create_revision(key) == 0], success=[Op.put(key, "x")]
            )
            return
        except ClientError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"could not write {key}")


async def collect(watch: Watch, events: list[Event], total: int) -> None:
    """Read responses into `events` until it holds `total` events."""

    async def read() -> None:
        async for response in watch:
            events.extend(response.events)
            if len(events) >= total:
                return

    await asyncio.wait_for(read(), EVENT_WAIT_S)


async def test_watch_resumes_without_loss_or_duplicates(etcd_cluster: EtcdCluster) -> None:
    endpoints = await leader_first(etcd_cluster)
    doomed = endpoints[0]
    total = KEYS_BEFORE_KILL + KEYS_AFTER_KILL
    keys = [f"/w/{index:03d}" for index in range(total)]
    async with (
        Client(endpoints, timeout_s=2.0) as watcher,
        Client(endpoints[1:], timeout_s=2.0) as writer,
    ):
        events: list[Event] = []
        async with watcher.watch("/w/", prefix=True) as watch:
            assert watcher.endpoint == doomed
            for key in keys[:KEYS_BEFORE_KILL]:
                await put_if_absent(writer, key)
            await collect(watch, events, KEYS_BEFORE_KILL // 2)  # the stream is live
            etcd_cluster.member_at(doomed).kill()
            # These commit while the watcher's stream is dead and nobody reads it: only a
            # resume from the right revision delivers them.
            for key in keys[KEYS_BEFORE_KILL:]:
                await put_if_absent(writer, key)
            await collect(watch, events, total)
            # Nothing more may arrive before the marker: a duplicate would show up here.
            await writer.put("/w/zzz-end", "marker")
            tail: list[Event] = []
            await collect(watch, tail, 1)
        assert watcher.endpoint != doomed
        assert [event.kv.key.decode() for event in events] == keys
        revisions = [event.kv.mod_revision for event in events]
        assert revisions == sorted(set(revisions))
        assert [event.kv.key for event in tail] == [b"/w/zzz-end"]
