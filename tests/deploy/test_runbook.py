"""docs/runbook.md's membership procedures, run with etcd's etcdctl on real members.

The runbook's steps on a 3-member loopback cluster: growing it by a learner that is then
promoted, and replacing a member whose data is lost under the same name and peer URL (as a
StatefulSet pod is), including the runbook's step of writing ``--snapshot-count`` entries
between the remove and the add. The members use a small ``--snapshot-count`` so that step
is quick.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import RaftkvCluster, etcdctl

SNAPSHOT_COUNT = 25
PROMOTE_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.3
NEW_STATE_FLAG = "--initial-cluster-state=new"
EXISTING_STATE_FLAG = "--initial-cluster-state=existing"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftkvCluster]:
    with RaftkvCluster.start(tmp_path, size=3, snapshot_count=SNAPSHOT_COUNT) as started:
        started.wait_for_leader()
        yield started


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def members(cluster: RaftkvCluster) -> list[dict[str, object]]:
    listing = json.loads(ok(etcdctl(cluster, "member", "list", "-w", "json", "--hex")))
    found: list[dict[str, object]] = listing["members"]
    return found


def member_id(cluster: RaftkvCluster, peer_url: str) -> str:
    (found,) = [m for m in members(cluster) if peer_url in m.get("peerURLs", [])]  # type: ignore[operator]
    return str(found["ID"])


def add_learner(cluster: RaftkvCluster, name: str, peer_url: str) -> str:
    ok(etcdctl(cluster, "member", "add", name, "--learner", f"--peer-urls={peer_url}"))
    return member_id(cluster, peer_url)


def promote_when_caught_up(voter_endpoints: list[str], learner_id: str) -> None:
    """The runbook's last step: promote through the voters (the learner itself may not have
    applied its own addition yet), retried until it is accepted: it is refused while the
    learner catches up ("... in sync with leader"), and a voter that has not applied the
    addition yet answers "member not found"."""
    deadline = time.monotonic() + PROMOTE_TIMEOUT_S
    while True:
        result = etcdctl(voter_endpoints, "member", "promote", learner_id)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"promote {learner_id}: {result.stderr}"
        time.sleep(POLL_INTERVAL_S)


def voters(cluster: RaftkvCluster) -> set[str]:
    return {str(m["name"]) for m in members(cluster) if not m.get("isLearner")}


def named_voters(cluster: RaftkvCluster, expected: set[str]) -> set[str]:
    """The voters once every one has a name: a started member publishes its name through
    a proposal of its own shortly after it joins (until then, etcd lists it unnamed too)."""
    deadline = time.monotonic() + PROMOTE_TIMEOUT_S
    names = voters(cluster)
    while names != expected and "" in names and time.monotonic() < deadline:
        time.sleep(0.2)
        names = voters(cluster)
    return names


def serializable_get(endpoint: str, key: str) -> str:
    return ok(etcdctl(endpoint, "get", key, "--consistency=s", "--print-value-only")).strip()


def wait_for_value(endpoint: str, key: str, value: str) -> None:
    """Until the member at ``endpoint`` has applied ``key`` = ``value`` (it serves reads)."""
    deadline = time.monotonic() + PROMOTE_TIMEOUT_S
    while True:
        result = etcdctl(endpoint, "get", key, "--consistency=s", "--print-value-only")
        if result.returncode == 0 and result.stdout.strip() == value:
            return
        assert time.monotonic() < deadline, f"{endpoint} never served {key}={value}"
        time.sleep(POLL_INTERVAL_S)


def test_growing_the_cluster_by_a_promoted_learner(cluster: RaftkvCluster) -> None:
    ok(etcdctl(cluster, "put", "before-growth", "kept"))
    voter_endpoints = cluster.endpoints()
    planned = cluster.plan_member("m4")
    learner_id = add_learner(cluster, "m4", planned.peer_url)
    everyone = {m.name: m.peer_url for m in cluster.members} | {"m4": planned.peer_url}
    index = cluster.add_member_process("m4", everyone, state="existing")
    promote_when_caught_up(voter_endpoints, learner_id)
    assert named_voters(cluster, {"m1", "m2", "m3", "m4"}) == {"m1", "m2", "m3", "m4"}
    ok(etcdctl(cluster, "put", "after-growth", "written"))
    endpoint = cluster.member(index).client_endpoint
    assert serializable_get(endpoint, "before-growth") == "kept"


def test_replacing_a_member_that_lost_its_data_under_the_same_url(
    cluster: RaftkvCluster,
) -> None:
    ok(etcdctl(cluster, "put", "before-loss", "kept"))
    leader = cluster.wait_for_leader()
    lost = (leader + 1) % len(cluster.members)
    member = cluster.member(lost)
    # The member and its volume are gone.
    cluster.kill(lost)
    shutil.rmtree(member.data_dir)
    survivors = [m.client_endpoint for m in cluster.members if m is not member]
    ok(etcdctl(survivors, "member", "remove", member_id(cluster, member.peer_url)))
    # The runbook's workaround: the leader snapshots past the removal before the add.
    for count in range(SNAPSHOT_COUNT + 1):
        ok(etcdctl(survivors, "put", "runbook-pad", str(count)))
    learner_id = add_learner(cluster, member.name, member.peer_url)
    # The same name and peer URL, an empty data directory, and "existing".
    command = member.state.command
    assert NEW_STATE_FLAG in command
    member.state.command = [EXISTING_STATE_FLAG if f == NEW_STATE_FLAG else f for f in command]
    cluster.start_again(lost)
    promote_when_caught_up(survivors, learner_id)
    assert named_voters(cluster, {"m1", "m2", "m3"}) == {"m1", "m2", "m3"}
    ok(etcdctl(survivors, "put", "after-replacement", "written"))
    wait_for_value(member.client_endpoint, "after-replacement", "written")
    assert serializable_get(member.client_endpoint, "before-loss") == "kept"
    log = member.log_path.read_text()
    assert member.is_running() and "was removed from the cluster" not in log, log
