"""Leases against a real etcd: expiry deletes keys, keepalive keeps them, typed errors."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.client import Client, LeaseNotFoundError
from raftkv.client.errors import LeaseExistsError
from tests.etcd_process import EtcdProcess

# etcd's minimum lease TTL with its default 1 s election timeout.
SHORT_TTL_S = 2
EXPIRY_WAIT_S = 6.0


async def wait_until_gone(client: Client, key: str) -> float:
    """Seconds until `key` disappears (fails the test if it outlives EXPIRY_WAIT_S)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (await client.get(key)).kvs:
        assert loop.time() - started < EXPIRY_WAIT_S, f"{key} outlived its lease"
        await asyncio.sleep(0.1)
    return loop.time() - started


async def test_expiry_deletes_keys_and_keepalive_keeps_them(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        plain = await client.lease_grant(SHORT_TTL_S)
        assert plain.ttl == SHORT_TTL_S and plain.id > 0
        await client.put(prefix + "plain", "expires", lease=plain.id)
        async with client.lease(SHORT_TTL_S) as kept:
            await client.put(prefix + "kept", "stays", lease=kept.id)
            gone_after_s = await wait_until_gone(client, prefix + "plain")
            # The kept lease outlives the plain one by a margin of more than its TTL.
            await asyncio.sleep(SHORT_TTL_S + 0.5)
            assert kept.alive
            assert (await client.get(prefix + "kept")).kvs[0].lease == kept.id
            remaining = await client.lease_time_to_live(kept.id, keys=True)
            assert 0 < remaining.ttl <= SHORT_TTL_S
            assert remaining.keys == ((prefix + "kept").encode(),)
        assert gone_after_s > 0.5  # it did exist for a while
        # Leaving the block revoked the kept lease, and its key with it.
        assert (await client.get(prefix + "kept")).kvs == ()
        assert (await client.lease_time_to_live(kept.id)).ttl == -1
        with pytest.raises(LeaseNotFoundError):
            await client.keepalive_once(plain.id)


async def test_grant_list_time_to_live_revoke(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        lease = await client.lease_grant(60)
        assert lease.id in await client.leases()
        live = await client.lease_time_to_live(lease.id)
        assert live.granted_ttl == 60 and 0 < live.ttl <= 60 and live.keys == ()
        assert await client.keepalive_once(lease.id) == 60
        await client.put(prefix + "k", "v", lease=lease.id)
        await client.lease_revoke(lease.id)
        assert lease.id not in await client.leases()
        assert (await client.get(prefix + "k")).kvs == ()
        with pytest.raises(LeaseNotFoundError):
            await client.lease_revoke(lease.id)
        with pytest.raises(LeaseNotFoundError):
            await client.put(prefix + "k", "v", lease=lease.id)


async def test_chosen_lease_id_and_duplicate(etcd: EtcdProcess) -> None:
    async with Client([etcd.endpoint]) as client:
        lease = await client.lease_grant(30, lease_id=0x5EED)
        assert lease.id == 0x5EED
        try:
            with pytest.raises(LeaseExistsError):
                await client.lease_grant(30, lease_id=0x5EED)
        finally:
            await client.lease_revoke(lease.id)


async def test_kept_lease_notices_revocation(etcd: EtcdProcess) -> None:
    async with Client([etcd.endpoint]) as client, client.lease(SHORT_TTL_S) as kept:
        await client.lease_revoke(kept.id)  # someone else revokes it
        await asyncio.wait_for(kept.wait_lost(), EXPIRY_WAIT_S)
        assert not kept.alive
