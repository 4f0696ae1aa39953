"""Real raftkv processes under the four cluster events issue #4 names: the leader dies, the
membership changes, a follower falls behind past the log, and the whole cluster restarts.

Writes go through raftkv.client; a write counts as acknowledged only when the client got a
response, and every acknowledged write must be readable afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from raftkv.client import Client, ClientError
from tests.procs import RaftkvCluster, RaftkvMember, etcdctl

CATCH_UP_TIMEOUT_S = 30.0


def _wait_until(condition: Callable[[], bool], timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s"
        time.sleep(0.2)


def _local_get(member: RaftkvMember, key: str) -> str:
    """What this member alone answers (serializable: no consensus round)."""
    return etcdctl(
        member.client_endpoint, "get", key, "--consistency=s", "--print-value-only"
    ).stdout


async def _write_keys(
    endpoints: list[str],
    prefix: str,
    count: int,
    acked: dict[str, str],
    workers: int = 8,
    stop: asyncio.Event | None = None,
) -> int:
    """Put prefix/0..count-1 from several concurrent workers (until ``stop`` is set);
    record what was acknowledged. Returns the number of writes that failed (allowed while
    a member is dying)."""
    failures = 0
    next_key = iter(range(count))

    async def worker(client: Client) -> None:
        nonlocal failures
        for i in next_key:
            if stop is not None and stop.is_set():
                return
            key, value = f"{prefix}/{i:05d}", f"v{i}"
            try:
                await client.put(key, value)
            except ClientError:
                failures += 1
                continue
            acked[key] = value

    async with Client(endpoints, timeout_s=5.0) as client:
        await asyncio.gather(*[worker(client) for _ in range(workers)])
    return failures


async def _read_all(endpoints: list[str], prefix: str) -> dict[str, str]:
    async with Client(endpoints) as client:
        result = await client.get_prefix(prefix + "/")
    return {kv.key.decode(): kv.value.decode() for kv in result.kvs}


def _assert_all_acked_present(endpoints: list[str], prefix: str, acked: dict[str, str]) -> None:
    stored = asyncio.run(_read_all(endpoints, prefix))
    missing = sorted(set(acked) - set(stored))
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    wrong = [key for key, value in acked.items() if stored[key] != value]
    assert not wrong, f"acknowledged values changed: {wrong[:5]}"


def test_killing_the_leader_elects_another_and_writes_continue(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        leader = cluster.wait_for_leader()
        acked: dict[str, str] = {}

        async def scenario() -> None:
            writes = asyncio.create_task(
                _write_keys(cluster.endpoints(running_only=False), "kill", 600, acked)
            )
            await asyncio.sleep(0.5)
            cluster.kill(leader)
            await writes

        asyncio.run(scenario())
        new_leader = cluster.wait_for_leader()
        assert new_leader != leader
        # Writes continue after the kill, through the survivors.
        after: dict[str, str] = {}
        assert asyncio.run(_write_keys(cluster.endpoints(), "after", 50, after)) == 0
        assert len(after) == 50
        assert len(acked) > 0
        _assert_all_acked_present(cluster.endpoints(), "kill", acked)
        _assert_all_acked_present(cluster.endpoints(), "after", after)


def test_add_a_member_then_remove_one(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        cluster.wait_for_leader()
        acked: dict[str, str] = {}
        asyncio.run(_write_keys(cluster.endpoints(), "before", 40, acked))
        joining = cluster.plan_member("m4")
        added = etcdctl(cluster, "member", "add", "m4", f"--peer-urls={joining.peer_url}")
        assert added.returncode == 0, added.stderr
        assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in added.stdout
        initial = {m.name: m.peer_url for m in cluster.members} | {"m4": joining.peer_url}
        cluster.add_member_process("m4", initial)
        _wait_until(lambda: _local_get(joining, "before/00039") == "v39\n")

        listed = etcdctl(cluster, "member", "list")
        assert listed.returncode == 0 and listed.stdout.count("started") == 4, listed.stdout
        # A follower removes itself: the request is forwarded to the leader, and the
        # answer must not wait for the removed member to apply its own removal.
        leader = cluster.wait_for_leader()
        gone = cluster.member(next(i for i in range(3) if i != leader))
        gone_id = next(
            line.split(",")[0] for line in listed.stdout.splitlines() if f", {gone.name}," in line
        )
        removed = etcdctl(gone.client_endpoint, "member", "remove", gone_id)
        assert removed.returncode == 0, removed.stderr
        assert f"Member {gone_id} removed" in removed.stdout

        survivors = [m.client_endpoint for m in cluster.members if m is not gone]
        listed = etcdctl(survivors, "member", "list")
        assert f", {gone.name}," not in listed.stdout, listed.stdout
        assert listed.stdout.count("started") == 3, listed.stdout
        after: dict[str, str] = {}
        assert asyncio.run(_write_keys(survivors, "after", 30, after)) == 0
        _wait_until(lambda: _local_get(joining, "after/00029") == "v29\n")
        _assert_all_acked_present(survivors, "before", acked)


def test_a_lagging_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    # A short snapshot interval: the leader's log no longer holds what the follower missed.
    with RaftkvCluster.start(tmp_path, size=3, snapshot_count=100) as cluster:
        leader = cluster.wait_for_leader()
        lagging = next(i for i in range(3) if i != leader)
        assert cluster.stop(lagging) == 0
        acked: dict[str, str] = {}
        running = cluster.endpoints()
        assert asyncio.run(_write_keys(running, "lag", 400, acked, workers=16)) == 0
        cluster.restart(lagging)
        member = cluster.member(lagging)
        _wait_until(lambda: _local_get(member, "lag/00399") == "v399\n")
        assert "installed the snapshot" in member.log_path.read_text()
        _assert_all_acked_present([member.client_endpoint], "lag", acked)


def test_a_full_cluster_restart_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        cluster.wait_for_leader()
        acked: dict[str, str] = {}

        async def scenario() -> None:
            stop = asyncio.Event()
            endpoints = cluster.endpoints(running_only=False)
            writes = asyncio.create_task(_write_keys(endpoints, "crash", 100_000, acked, stop=stop))
            await asyncio.sleep(1.5)
            stop.set()  # writes in flight now are the interesting ones
            for index in range(3):  # every member dies at once, mid-write
                cluster.kill(index)
            await writes

        asyncio.run(scenario())
        assert len(acked) > 50, "the writers made no progress before the crash"
        for index in range(3):
            cluster.restart(index)
        cluster.wait_for_leader()
        _assert_all_acked_present(cluster.endpoints(), "crash", acked)
