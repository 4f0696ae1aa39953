"""Cluster and maintenance calls against real etcd: members, status, leadership transfer,
learners, defragment, snapshot, and the NOSPACE alarm."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from raftkv.client import Client, NoSpaceError
from raftkv.client.errors import (
    LearnerNotReadyError,
    MemberNotFoundError,
    MemberNotLearnerError,
)
from raftkv.client.models import AlarmType
from tests.client.etcd_cluster import EtcdCluster, run_etcd_cluster
from tests.etcd_process import free_port

# A backend quota far below what the test writes, so the first big put exceeds it.
TINY_QUOTA_BYTES = 64 * 1024
PROMOTE_RETRY_S = 5.0
BIG_VALUE = b"x" * (TINY_QUOTA_BYTES * 2)


async def test_members_status_and_leadership_transfer(etcd_cluster: EtcdCluster) -> None:
    async with Client(etcd_cluster.endpoints) as client:
        members = await client.member_list()
        assert sorted(member.name for member in members) == ["m0", "m1", "m2"]
        assert {url.removeprefix("http://") for m in members for url in m.client_urls} == set(
            etcd_cluster.endpoints
        )
        statuses = [await client.status(endpoint) for endpoint in etcd_cluster.endpoints]
        leaders = [status for status in statuses if status.is_leader]
        assert len(leaders) == 1
        assert {status.leader for status in statuses} == {leaders[0].header.member_id}
        assert all(status.version.startswith("3.") and status.db_size > 0 for status in statuses)

        target = next(status.header.member_id for status in statuses if not status.is_leader)
        await client.move_leader(target)
        target_endpoint = etcd_cluster.endpoints[
            [status.header.member_id for status in statuses].index(target)
        ]
        for _ in range(50):
            if (await client.status(target_endpoint)).is_leader:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("leadership did not move to the target")
        assert await client.leader_endpoint() == target_endpoint


async def test_learner_add_promote_remove(tmp_path: Path) -> None:
    # etcd's strict reconfiguration check refuses member changes until every peer has been
    # connected for 5 s; the test does not need to wait for that.
    relaxed = ["--strict-reconfig-check=false"]
    with run_etcd_cluster(tmp_path, size=3, extra_args=relaxed) as cluster:
        await add_promote_remove_learner(cluster)


async def promote_once_caught_up(client: Client, member_id: int) -> None:
    """etcd checks that the member's log is within 90% of the leader's before anything
    else, a voter's too: a voter a few entries behind (the member add just committed) is
    "not in sync" for a moment. Retry that answer, as a client should."""
    deadline = time.monotonic() + PROMOTE_RETRY_S
    while True:
        try:
            await client.member_promote(member_id)
            return
        except LearnerNotReadyError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def add_promote_remove_learner(cluster: EtcdCluster) -> None:
    async with Client(cluster.endpoints) as client:
        added = await client.member_add([f"http://127.0.0.1:{free_port()}"], is_learner=True)
        assert added.member.is_learner and added.member.name == ""  # never started
        assert len(added.members) == 4
        with pytest.raises(LearnerNotReadyError):
            await client.member_promote(added.member.id)
        voter = next(member for member in added.members if not member.is_learner)
        with pytest.raises(MemberNotLearnerError):
            await promote_once_caught_up(client, voter.id)
        remaining = await client.member_remove(added.member.id)
        assert len(remaining) == 3 and added.member.id not in {m.id for m in remaining}
        with pytest.raises(MemberNotFoundError):
            await client.member_remove(added.member.id)


async def test_defragment_and_snapshot(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    async with Client(etcd_cluster.endpoints) as client:
        for index in range(20):
            await client.put(f"k{index}", "v" * 100)
        await client.delete("k", prefix=True)
        await client.defragment(etcd_cluster.endpoints[1])
        after = await client.status(etcd_cluster.endpoints[1])  # the member serves again
        assert 0 < after.db_size_in_use <= after.db_size
        target = tmp_path / "backup.db"
        size = await client.snapshot(target)
        assert size > 0 and target.stat().st_size == size
        assert not (tmp_path / "backup.db.part").exists()


async def test_nospace_alarm_list_and_disarm(tmp_path: Path) -> None:
    quota = ["--quota-backend-bytes", str(TINY_QUOTA_BYTES)]
    with run_etcd_cluster(tmp_path, size=1, extra_args=quota) as cluster:
        async with Client(cluster.endpoints) as client:
            assert await client.alarm_list() == ()
            with pytest.raises(NoSpaceError):
                await client.put("big", BIG_VALUE)
            (alarm,) = await client.alarm_list()
            assert alarm.alarm is AlarmType.NOSPACE
            with pytest.raises(NoSpaceError):
                await client.put("small", "v")  # every write is refused now
            assert (await client.get("small")).kvs == ()  # reads still work
            assert await client.alarm_disarm() == (alarm,)
            assert await client.alarm_list() == ()
