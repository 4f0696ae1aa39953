"""Replacing a member under the same peer URL, with real processes and etcd's etcdctl.

A member removed and added back under its old peer URL (a StatefulSet pod, a rebuilt
machine) must join even when the leader has not snapshotted since the removal: the add
gives it a new ID (as etcd's MemberAdd does), so the removal of the old one that it replays
from the log is not its own. A member started with ``--initial-cluster-state existing``
learns that ID from the member list of a peer named in ``--initial-cluster`` and keeps it
in its data directory. Founding members keep the IDs derived from URLs and token.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.storage.members import cluster_id_for, member_id_for
from raftkv.verify.cluster import CLUSTER_TOKEN
from tests.procs import RaftkvCluster, RaftkvMember, etcdctl

# Larger than everything a test writes: the leader never snapshots, so a joiner replays
# the whole log, including the removal of the member it replaces.
SNAPSHOT_COUNT = 100_000
CATCH_UP_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2
NEW_STATE_FLAG = "--initial-cluster-state=new"
EXISTING_STATE_FLAG = "--initial-cluster-state=existing"
EXIT_FATAL = 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftkvCluster]:
    with RaftkvCluster.start(tmp_path, size=3, snapshot_count=SNAPSHOT_COUNT) as started:
        started.wait_for_leader()
        yield started


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed_members(endpoints: list[str]) -> list[dict[str, object]]:
    listing = json.loads(ok(etcdctl(endpoints, "member", "list", "-w", "json")))
    found: list[dict[str, object]] = listing["members"]
    return found


def id_of(endpoints: list[str], peer_url: str) -> int:
    (found,) = [m for m in listed_members(endpoints) if m.get("peerURLs") == [peer_url]]
    return int(str(found["ID"]))


def status(endpoint: str) -> dict[str, int]:
    """The member's own answer: its ID, the cluster's ID, whether it is a learner and the
    last log index it applied."""
    (entry,) = json.loads(ok(etcdctl(endpoint, "endpoint", "status", "-w", "json")))
    header = entry["Status"]["header"]
    return {
        "member_id": int(header["member_id"]),
        "cluster_id": int(header["cluster_id"]),
        "is_learner": int(bool(entry["Status"].get("isLearner"))),
        "applied": int(entry["Status"].get("raftAppliedIndex", 0)),
    }


def wait_until_applied(endpoint: str, index: int) -> None:
    """Until the member at ``endpoint`` has applied the log up to ``index``."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while status(endpoint)["applied"] < index:
        assert time.monotonic() < deadline, f"{endpoint} never applied index {index}"
        time.sleep(POLL_INTERVAL_S)


def wait_until_served(endpoint: str, key: str, value: str) -> None:
    """Until the member at ``endpoint`` has applied ``key`` = ``value``."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        result = etcdctl(endpoint, "get", key, "--consistency=s", "--print-value-only")
        if result.returncode == 0 and result.stdout.strip() == value:
            return
        assert time.monotonic() < deadline, f"{endpoint} never served {key}={value}"
        time.sleep(POLL_INTERVAL_S)


def promote_when_caught_up(endpoints: list[str], learner_id: int) -> None:
    """Promote through the voters, retried while the learner is still catching up."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        result = etcdctl(endpoints, "member", "promote", f"{learner_id:x}")
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"promote {learner_id:x}: {result.stderr}"
        time.sleep(POLL_INTERVAL_S)


def as_joiner(member: RaftkvMember) -> None:
    """Start ``member`` with ``--initial-cluster-state existing`` from now on."""
    command = member.state.command
    member.state.command = [EXISTING_STATE_FLAG if f == NEW_STATE_FLAG else f for f in command]


def replace(cluster: RaftkvCluster, index: int, *, learner: bool, round_name: str) -> int:
    """The member at ``index`` loses its data and comes back under the same name and peer
    URL: kill, wipe, member remove, member add, start with "existing". Returns its new ID
    once it serves a write made after its add (promoted first if added as a learner)."""
    member = cluster.member(index)
    others = [m.client_endpoint for m in cluster.members if m is not member]
    old_id = id_of(others, member.peer_url)
    cluster.kill(index)
    shutil.rmtree(member.data_dir)
    cluster.wait_for_leader()  # the replaced member may have led
    ok(etcdctl(others, "member", "remove", f"{old_id:x}"))
    ok(etcdctl(others, "put", f"{round_name}/between", "remove-and-add"))
    add = ["member", "add", member.name, f"--peer-urls={member.peer_url}"]
    ok(etcdctl(others, *add, *(["--learner"] if learner else [])))
    new_id = id_of(others, member.peer_url)
    as_joiner(member)
    cluster.start_again(index)
    if learner:
        promote_when_caught_up(others, new_id)
    ok(etcdctl(others, "put", f"{round_name}/after", "joined"))
    wait_until_served(member.client_endpoint, f"{round_name}/after", "joined")
    # Served from a snapshot taken after the add, the key proves little: the member must
    # also have applied the log past its add (and so past the old ID's removal).
    wait_until_applied(member.client_endpoint, status(others[0])["applied"])
    assert member.is_running(), cluster.logs_tail()
    assert "was removed from the cluster" not in member.log_path.read_text()
    assert status(member.client_endpoint)["member_id"] == new_id
    return new_id


def test_a_member_replaced_under_the_same_peer_url_joins(cluster: RaftkvCluster) -> None:
    ok(etcdctl(cluster, "put", "before-loss", "kept"))
    founding_ids = {id_of(cluster.endpoints(), m.peer_url) for m in cluster.members}
    cluster_id = status(cluster.member(0).client_endpoint)["cluster_id"]
    replaced = cluster.index_of("m2")
    new_id = replace(cluster, replaced, learner=False, round_name="voter")
    assert new_id not in founding_ids
    member = cluster.member(replaced)
    assert ok(etcdctl(member.client_endpoint, "get", "before-loss", "--print-value-only"))
    # The cluster keeps its ID; the replacement reports it too.
    for m in cluster.members:
        assert status(m.client_endpoint)["cluster_id"] == cluster_id
    assert {str(m["name"]) for m in listed_members(cluster.endpoints())} == {"m1", "m2", "m3"}


def test_a_member_removed_and_added_twice_joins_each_time(cluster: RaftkvCluster) -> None:
    leader = cluster.wait_for_leader()
    index = (leader + 1) % len(cluster.members)
    first_id = id_of(cluster.endpoints(), cluster.member(index).peer_url)
    second_id = replace(cluster, index, learner=True, round_name="first")
    third_id = replace(cluster, index, learner=False, round_name="second")
    assert len({first_id, second_id, third_id}) == 3
    endpoint = cluster.member(index).client_endpoint
    assert status(endpoint)["is_learner"] == 0
    ok(etcdctl(cluster, "put", "all-three", "agree"))
    for m in cluster.members:
        wait_until_served(m.client_endpoint, "all-three", "agree")


def test_founding_members_keep_the_ids_derived_from_urls_and_token(
    cluster: RaftkvCluster,
) -> None:
    expected = {m.peer_url: member_id_for([m.peer_url], CLUSTER_TOKEN) for m in cluster.members}
    assert len(listed_members(cluster.endpoints())) == 3
    listed = {m.peer_url: id_of(cluster.endpoints(), m.peer_url) for m in cluster.members}
    assert listed == expected
    expected_cluster = cluster_id_for(list(expected.values()), CLUSTER_TOKEN)
    for m in cluster.members:
        own = status(m.client_endpoint)
        assert own["member_id"] == expected[m.peer_url]
        assert own["cluster_id"] == expected_cluster


def test_a_joiner_that_was_never_added_exits_naming_its_url(cluster: RaftkvCluster) -> None:
    stranger = cluster.plan_member("m9")
    initial = {m.name: m.peer_url for m in cluster.members} | {"m9": stranger.peer_url}
    index = cluster.add_member_process("m9", initial, state="existing")
    process = cluster.member(index).process
    assert process is not None
    assert process.wait(timeout=EXIT_TIMEOUT_S) == EXIT_FATAL
    log = stranger.log_path.read_text()
    assert "cannot start" in log and stranger.peer_url in log, log
    assert "member add" in log, log  # it says what to do
    assert len(listed_members(cluster.endpoints(running_only=True))) == 3


def test_a_joined_member_restarts_with_its_id_without_asking_the_peers(
    cluster: RaftkvCluster,
) -> None:
    index = cluster.index_of("m3")
    joined_id = replace(cluster, index, learner=False, round_name="join")
    # With every other member down, asking a peer would fail: a restart must not ask.
    for other in range(len(cluster.members)):
        cluster.stop(other)
    cluster.start_again(index)
    endpoint = cluster.member(index).client_endpoint
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        result = etcdctl(endpoint, "endpoint", "status", "-w", "json")
        if result.returncode == 0:
            break
        assert cluster.member(index).is_running(), cluster.logs_tail()
        assert time.monotonic() < deadline, result.stderr
        time.sleep(POLL_INTERVAL_S)
    assert status(endpoint)["member_id"] == joined_id
    log = cluster.member(index).log_path.read_text()
    assert log.count("ID taken from the member list") == 1, log  # the first start only
    # The rest come back (as restarted founders, from their data) and form a quorum again.
    for other in range(len(cluster.members)):
        cluster.start_again(other)
    cluster.wait_for_leader()
    # One member knowing the leader does not mean all do yet: a just-restarted one may still
    # answer "no leader", which etcdctl does not retry.
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while (put := etcdctl(cluster, "put", "after-restart", "written")).returncode != 0:
        assert "no leader" in put.stderr and time.monotonic() < deadline, put.stderr
        time.sleep(POLL_INTERVAL_S)
    wait_until_served(endpoint, "after-restart", "written")
    assert status(endpoint)["member_id"] == joined_id
