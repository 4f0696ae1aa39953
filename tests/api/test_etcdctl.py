"""The real etcdctl (3.5) against raftkv's API, compared with a real etcd.

The same commands run against a fresh raftkv (LocalNode behind the gRPC server) and a
fresh single-member etcd; their outputs must match once the parts that differ by nature
are masked: cluster and member ids, raft terms, lease ids, log lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ApiServer, etcdctl, etcdctl_binary
from tests.etcd_process import EtcdProcess, run_etcd

WATCH_WAIT_S = 10.0

TXN_SUCCEEDS = 'value("foo") = "bar2"\n\nput k3 v1\nget a\n\nput k2 v2\n\n'
TXN_FAILS = 'mod("a") > "100"\n\nput k3 v1\n\nput k2 v2\nget k2\n\n'
TXN_DUPLICATE = "\n\nput k1 v1\ndel k1\n\n\n"

# (arguments, stdin). Revisions line up: both stores start at revision 1.
SCRIPT: list[tuple[list[str], str | None]] = [
    (["put", "foo", "bar"], None),
    (["put", "foo", "bar2", "--prev-kv"], None),
    (["get", "foo", "-w", "json"], None),
    (["get", "foo", "-w", "fields"], None),
    (["put", "", "x"], None),
    (["put", "a", "1"], None),
    (["put", "b", "2"], None),
    (["put", "c", "3"], None),
    (["get", "a", "c"], None),
    (["get", "", "--from-key", "--keys-only"], None),
    (["get", "", "--prefix", "--limit", "2", "-w", "json"], None),
    (["get", "", "--prefix", "--sort-by=VALUE", "--order=DESCEND"], None),
    (["get", "", "--prefix", "--count-only", "-w", "fields"], None),
    (["get", "foo", "--rev", "2", "-w", "json"], None),
    (["txn", "-w", "json"], TXN_SUCCEEDS),
    (["txn"], TXN_FAILS),
    (["txn"], TXN_DUPLICATE),
    (["del", "a", "-w", "json"], None),
    (["del", "nothing"], None),
    (["del", "k", "--prefix", "--prev-kv"], None),
    (["compaction", "5"], None),
    (["compaction", "5"], None),
    (["get", "foo", "--rev", "2"], None),
    (["get", "foo", "--rev", "100"], None),
    (["put", "leased", "v", "--lease=1234"], None),
    (["lease", "grant", "100"], None),
    (["lease", "timetolive", "1234"], None),
    (["lease", "timetolive", "1234", "-w", "json"], None),
    (["lease", "revoke", "1234"], None),
    (["lease", "keep-alive", "--once", "1234"], None),
    (["alarm", "list"], None),
    (["auth", "status"], None),
    (["get", "", "--prefix", "-w", "json"], None),
]

_MASKED_KEYS = {"cluster_id", "member_id", "raft_term", "ClusterID", "MemberID", "RaftTerm"}
_LEASE_ID = re.compile(r"\b[0-9a-f]{13,16}\b")
_FIELD_LINE = re.compile(r'^"(ClusterID|MemberID|RaftTerm)" : \d+$')


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: 0 if k in _MASKED_KEYS else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value


def normalized(result: subprocess.CompletedProcess[str]) -> tuple[int, Any, list[str]]:
    """(exit code, stdout with ids masked, the "Error:" lines of stderr)."""
    stdout = result.stdout.strip()
    try:
        parsed: Any = _mask(json.loads(stdout))
    except ValueError:
        lines = [_FIELD_LINE.sub(r'"\1" : <id>', line) for line in stdout.splitlines()]
        parsed = [_LEASE_ID.sub("<lease>", line) for line in lines]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return result.returncode, parsed, errors


@pytest.fixture
def real_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    directory = tmp_path / "etcd"
    directory.mkdir()
    with run_etcd(directory) as etcd:
        yield etcd


def test_etcdctl_output_matches_real_etcd(api: ApiServer, real_etcd: EtcdProcess) -> None:
    for args, stdin in SCRIPT:
        ours = normalized(etcdctl(api.endpoint, *args, stdin=stdin))
        theirs = normalized(etcdctl(real_etcd.endpoint, *args, stdin=stdin))
        assert ours == theirs, f"etcdctl {' '.join(args)}"


def _watch_lines(endpoint: str, args: list[str], writes: list[list[str]], count: int) -> list[str]:
    """Start ``etcdctl watch args``, run the writes, return its first ``count`` lines."""
    process = subprocess.Popen(
        [etcdctl_binary(), f"--endpoints={endpoint}", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={"ETCDCTL_API": "3", "PATH": ""},
    )
    try:
        time.sleep(0.5)  # etcdctl has no "watching" signal; give it time to create the watch
        for write in writes:
            assert etcdctl(endpoint, *write).returncode == 0
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + WATCH_WAIT_S
        while len(lines) < count and time.monotonic() < deadline:
            lines.append(process.stdout.readline().rstrip("\n"))
        return lines
    finally:
        process.kill()
        process.wait()


WATCH_WRITES = [["put", "w1", "a"], ["put", "w1", "b"], ["del", "w1"], ["put", "x", "ignored"]]


def test_etcdctl_watch_matches_real_etcd(api: ApiServer, real_etcd: EtcdProcess) -> None:
    args = ["w", "--prefix", "--prev-kv"]
    expected_lines = 2 * 3 + 4  # PUT key value; PUT prev-key prev-value key value; DELETE ...
    ours = _watch_lines(api.endpoint, args, WATCH_WRITES, expected_lines)
    theirs = _watch_lines(real_etcd.endpoint, args, WATCH_WRITES, expected_lines)
    assert ours == theirs
    assert ours[:3] == ["PUT", "w1", "a"]


def test_etcdctl_watch_from_a_compacted_revision(api: ApiServer) -> None:
    for value in ("1", "2", "3"):
        etcdctl(api.endpoint, "put", "c", value)
    assert etcdctl(api.endpoint, "compaction", "3").returncode == 0
    result = subprocess.run(
        [etcdctl_binary(), f"--endpoints={api.endpoint}", "watch", "c", "--rev", "2"],
        capture_output=True,
        text=True,
        timeout=WATCH_WAIT_S,
        env={"ETCDCTL_API": "3"},
        check=False,
    )
    assert result.returncode != 0
    assert (
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        in result.stdout + result.stderr
    )


def test_etcdctl_lease_flow(api: ApiServer) -> None:
    granted = etcdctl(api.endpoint, "lease", "grant", "100")
    match = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(100s\)", granted.stdout.strip())
    assert match is not None, granted.stdout
    lease = match.group(1)
    assert etcdctl(api.endpoint, "put", "lk", "lv", f"--lease={lease}").stdout.strip() == "OK"
    ttl = etcdctl(api.endpoint, "lease", "timetolive", lease, "--keys").stdout.strip()
    assert re.fullmatch(
        rf"lease {lease} granted with TTL\(100s\), remaining\((99|100)s\), attached keys\(\[lk\]\)",
        ttl,
    ), ttl
    kept = etcdctl(api.endpoint, "lease", "keep-alive", "--once", lease).stdout.strip()
    assert kept == f"lease {lease} keepalived with TTL(100)"
    listed = etcdctl(api.endpoint, "lease", "list").stdout.split()
    assert listed == ["found", "1", "leases", lease]
    assert (
        etcdctl(api.endpoint, "lease", "revoke", lease).stdout.strip() == f"lease {lease} revoked"
    )
    assert etcdctl(api.endpoint, "get", "lk").stdout == ""


def test_etcdctl_endpoint_status_and_member_list(api: ApiServer) -> None:
    etcdctl(api.endpoint, "put", "k", "v")
    (entry,) = json.loads(etcdctl(api.endpoint, "endpoint", "status", "-w", "json").stdout)
    status = entry["Status"]
    assert entry["Endpoint"] == api.endpoint
    assert status["version"] == "3.5.0"
    assert status["leader"] == api.node.member_id
    assert status["header"]["revision"] == 2
    assert status["raftIndex"] == status["raftAppliedIndex"] == 1
    assert status["dbSize"] >= status["dbSizeInUse"] > 0
    members = etcdctl(api.endpoint, "member", "list").stdout.strip()
    member_id = f"{api.node.member_id:x}"
    assert (
        members == f"{member_id}, started, local, http://127.0.0.1:1, http://{api.endpoint}, false"
    )


def test_etcdctl_snapshot_save(api: ApiServer, tmp_path: Path) -> None:
    etcdctl(api.endpoint, "put", "k", "v")
    target = tmp_path / "snapshot.db"
    result = etcdctl(api.endpoint, "snapshot", "save", str(target))
    assert result.returncode == 0 and f"Snapshot saved at {target}" in result.stdout
    assert target.stat().st_size > 0
