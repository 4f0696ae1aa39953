"""The real-process harness (tests/procs.py) against real raftkv members."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import ClusterError, RaftkvCluster, RaftkvMember, etcdctl

CATCH_UP_TIMEOUT_S = 20.0


def wait_until(condition: Callable[[], bool], timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s"
        time.sleep(0.2)


def serializable_get(member: RaftkvMember, key: str) -> str:
    """What one member alone answers (etcdctl --consistency=s), e.g. "k\\nv\\n"."""
    assert member.is_running(), f"{member.name} exited"
    return etcdctl(member.client_endpoint, "get", key, "--consistency=s").stdout


def test_leader_kill_new_leader_restart_catches_up(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        first_leader = cluster.wait_for_leader()
        put = etcdctl(cluster, "put", "k", "v1")
        assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr

        cluster.kill(first_leader)
        assert not cluster.member(first_leader).is_running()
        second_leader = cluster.wait_for_leader()
        assert second_leader != first_leader
        put = etcdctl(cluster, "put", "k", "v2")
        assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr

        cluster.restart(first_leader)
        restarted = cluster.member(first_leader)
        wait_until(lambda: serializable_get(restarted, "k") == "k\nv2\n")

        assert cluster.stop(second_leader) == 0  # SIGTERM is a clean shutdown
        pids = [m.process.pid for m in cluster.members if m.process is not None]
        assert "----- m1" in cluster.logs_tail()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_add_member_process_joins_an_existing_cluster(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=1) as cluster:
        cluster.wait_for_leader()
        assert etcdctl(cluster, "put", "k", "v").returncode == 0
        joining = cluster.plan_member("m2")
        added = etcdctl(cluster, "member", "add", "m2", f"--peer-urls={joining.peer_url}")
        assert added.returncode == 0, added.stderr
        index = cluster.add_member_process(
            "m2", {"m1": cluster.member(0).peer_url, "m2": joining.peer_url}
        )
        assert cluster.member(index) is joining
        wait_until(lambda: serializable_get(joining, "k") == "k\nv\n")
        listed = etcdctl(cluster, "member", "list")
        assert listed.returncode == 0, listed.stderr
        assert "m2" in listed.stdout and joining.peer_url in listed.stdout


def test_members_that_cannot_start_are_reported_with_their_logs(tmp_path: Path) -> None:
    # An election timeout under 5 heartbeats is a config error: every member exits at once.
    with (
        RaftkvCluster.start(tmp_path, size=2, election_timeout=100) as cluster,
        pytest.raises(ClusterError) as raised,
    ):
        cluster.wait_for_leader(timeout_s=20)
    message = str(raised.value)
    assert message.startswith("every member has exited")
    assert "----- m1 (exited 2)" in message
    assert "--election-timeout (100) must be at least 5 times --heartbeat-interval" in message
