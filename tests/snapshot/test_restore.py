"""raftkv backend -> etcd snapshot file -> restored data dir, in process (no servers)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftkv.cli import main
from raftkv.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM
from raftkv.storage.alarm import AlarmMember, AlarmStore, AlarmType
from raftkv.storage.backend import DB_KEY, Backend, ConsistentIndex
from raftkv.storage.disk import OsDisk
from raftkv.storage.etcdsnap import (
    RestoreOptions,
    RestoreTargetError,
    SnapshotHashMismatchError,
    SnapshotIncompatibleError,
    append_trailing_hash,
    export_backend_copy,
    layout,
    restore_snapshot,
    snapshot_status,
)
from raftkv.storage.etcdsnap.bbolt import BoltWriter
from raftkv.storage.lease import Lessor
from raftkv.storage.members import MemberRecord, MemberStore, cluster_id_for, member_id_for
from raftkv.storage.mvcc import KVStore
from raftkv.storage.mvcc.txn import (
    DeleteRangeRequest,
    KeyValue,
    PutRequest,
    TxnRequest,
)
from raftkv.storage.raft_storage import RaftPersistence

TOKEN = "restore-test"
CLUSTER: dict[str, tuple[str, ...]] = {
    "a": ("http://127.0.0.1:1001",),
    "b": ("http://127.0.0.1:1002",),
    "c": ("http://127.0.0.1:1003",),
}
LEASE_ID = 0x1234
CHECKPOINTED_LEASE_ID = 0x5678


@dataclass
class Source:
    directory: Path
    compacted: int
    current: int


def build_source(directory: Path) -> Source:
    """A backend with history, a multi-change txn, deletes, leases, an alarm, members."""
    backend = Backend(str(directory), sync=False)
    lessor = Lessor(ticks_per_second=10, election_ticks=10)
    kv = KVStore(backend, lease_checker=lambda i: lessor.lookup(i) is not None, leases=lessor)
    with backend.write() as batch:
        lessor.grant(batch, LEASE_ID, 60, now_tick=0)
        lessor.grant(batch, CHECKPOINTED_LEASE_ID, 300, now_tick=0)
        lessor.apply_checkpoint(batch, CHECKPOINTED_LEASE_ID, 120)
    for round_ in range(3):
        for i in range(40):
            with backend.write() as batch:
                kv.put(batch, PutRequest(b"key/%02d" % i, b"value %d.%d" % (round_, i)))
    with backend.write() as batch:
        puts = tuple(PutRequest(b"txn/%d" % i, b"x" * (i * 700)) for i in range(8))
        kv.txn(batch, TxnRequest(success=puts))
    with backend.write() as batch:
        kv.delete_range(batch, DeleteRangeRequest(b"key/10", b"key/20"))
    with backend.write() as batch:
        kv.put(batch, PutRequest(b"leased/1", b"l1", lease=LEASE_ID))
        kv.put(batch, PutRequest(b"leased/2", b"l2", lease=CHECKPOINTED_LEASE_ID))
    with backend.write() as batch:
        kv.compact(batch, 50)
    with backend.write() as batch:
        kv.put(batch, PutRequest(b"key/00", b"after compaction"))
        AlarmStore(backend).activate(batch, 0xAB, AlarmType.NOSPACE)
        members = MemberStore(backend)
        members.put(batch, MemberRecord(0x77, "old", ("http://old:2380",), ("http://old:2379",)))
        members.set_cluster_id(batch, 0x99)
        batch.set_consistent_index(1234, 7)
    source = Source(directory, kv.compacted_revision, kv.current_revision)
    backend.close()
    return source


def snapshot_of(source: Source, path: Path) -> Path:
    export_backend_copy(str(source.directory), str(path))
    append_trailing_hash(str(path))
    return path


def options(snapshot: Path, data_dir: Path, name: str = "b", **extra: object) -> RestoreOptions:
    return RestoreOptions(
        snapshot_path=str(snapshot),
        data_dir=str(data_dir),
        name=name,
        initial_cluster=CLUSTER,
        initial_cluster_token=TOKEN,
        initial_advertise_peer_urls=CLUSTER[name],
        **extra,  # type: ignore[arg-type]
    )


def key_records(directory: Path) -> list[tuple[bytes, bytes]]:
    backend = Backend(str(directory), sync=False)
    try:
        with backend.read() as txn, txn.cursor(db=backend.db(DB_KEY)) as cursor:
            return [(bytes(key), bytes(value)) for key, value in cursor]
    finally:
        backend.close()


def state_of(directory: Path) -> dict[str, object]:
    """Everything a member serves from its backend."""
    backend = Backend(str(directory), sync=False)
    try:
        kv = KVStore(backend)
        lessor = Lessor(ticks_per_second=10, election_ticks=10)
        orphans = lessor.restore(backend, kv.keys_with_leases())
        leases = {}
        for lease_id in lessor.leases():
            lease = lessor.lookup(lease_id)
            assert lease is not None
            leases[lease_id] = (lease.ttl_seconds, lease.remaining_ttl_seconds, sorted(lease.keys))
        hashes = [kv.hash_kv(rev) for rev in (kv.compacted_revision, 80, 0)]
        return {
            "current": kv.current_revision,
            "compacted": kv.compacted_revision,
            "hashes": hashes,
            "leases": leases,
            "orphans": orphans,
            "alarms": AlarmStore(backend).get(),
        }
    finally:
        backend.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return build_source(tmp_path_factory.mktemp("source") / "db")


@pytest.fixture(scope="module")
def snapshot(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_of(source, tmp_path_factory.mktemp("snapshot") / "snapshot.db")


def test_restore_keeps_every_record_revision_hash_lease_and_alarm(
    source: Source, snapshot: Path, tmp_path: Path
) -> None:
    summary = restore_snapshot(options(snapshot, tmp_path / "restored"))
    restored_db = tmp_path / "restored" / "member" / "db"
    assert key_records(restored_db) == key_records(source.directory)
    restored = state_of(restored_db)
    assert restored == state_of(source.directory)
    assert restored["compacted"] == 50 and restored["current"] == source.current
    assert restored["alarms"] == [AlarmMember(0xAB, AlarmType.NOSPACE)]
    assert restored["leases"] == {
        LEASE_ID: (60, 0, [b"leased/1"]),
        CHECKPOINTED_LEASE_ID: (300, 120, [b"leased/2"]),
    }
    assert (summary.revision, summary.compacted_revision) == (source.current, 50)
    assert summary.leases == 2


def test_restore_makes_a_new_cluster_from_the_flags(snapshot: Path, tmp_path: Path) -> None:
    member_ids = {name: member_id_for(urls, TOKEN) for name, urls in CLUSTER.items()}
    for name in CLUSTER:
        data_dir = tmp_path / name
        summary = restore_snapshot(options(snapshot, data_dir, name=name))
        assert summary.member_id == member_ids[name]
        assert summary.cluster_id == cluster_id_for(list(member_ids.values()), TOKEN)
        backend = Backend(str(data_dir / "member" / "db"), sync=False)
        try:
            store = MemberStore(backend)
            assert {m.id: (m.name, m.peer_urls) for m in store.all()} == {
                member_ids[n]: (n, urls) for n, urls in CLUSTER.items()
            }
            assert store.cluster_id == summary.cluster_id
            assert backend.consistent_index() == ConsistentIndex(BOOTSTRAP_INDEX, BOOTSTRAP_TERM)
        finally:
            backend.close()
        persistence = RaftPersistence.open(OsDisk(), str(data_dir / "member"))
        try:
            conf_state = persistence.storage.snapshot().metadata.conf_state
            assert conf_state.voters == frozenset(member_ids.values())
        finally:
            persistence.close()


def test_status_counts_every_bucket(source: Source, snapshot: Path) -> None:
    status = snapshot_status(str(snapshot))
    records = len(key_records(source.directory))
    # key records + meta (index, term, 2 compaction marks) + 2 leases + 1 alarm + 1 member
    # + cluster version + auth (enabled, revision)
    assert status.total_keys == records + 4 + 2 + 1 + 1 + 1 + 2
    assert status.revision == source.current
    assert status.total_size_bytes == os.path.getsize(snapshot) - 32


def test_a_damaged_or_hashless_file_is_refused(snapshot: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(SnapshotHashMismatchError, match="expected sha256"):
        restore_snapshot(options(damaged, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    hashless = tmp_path / "hashless.db"
    hashless.write_bytes(snapshot.read_bytes()[:-32])
    with pytest.raises(SnapshotHashMismatchError, match="missing hash"):
        restore_snapshot(options(hashless, tmp_path / "out"))
    restore_snapshot(options(hashless, tmp_path / "out", skip_hash_check=True))
    assert (tmp_path / "out" / "member" / "wal").is_dir()


def test_the_target_must_be_empty_and_the_flags_consistent(snapshot: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious").write_text("keep me")
    with pytest.raises(RestoreTargetError, match="not empty"):
        restore_snapshot(options(snapshot, occupied))
    assert os.listdir(occupied) == ["precious"]
    wrong = RestoreOptions(str(snapshot), str(tmp_path / "x"), "a", CLUSTER, TOKEN, CLUSTER["b"])
    with pytest.raises(RestoreTargetError, match="no entry 'a'"):
        restore_snapshot(wrong)
    empty = tmp_path / "empty"
    empty.mkdir()
    restore_snapshot(options(snapshot, empty))  # an empty directory is fine, as in etcdutl
    assert (empty / "member" / "db").is_dir()


# --- Snapshots as etcd writes them (hand-built here; real etcd in test_etcd_interop) --------


def etcd_file(path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> Path:
    with path.open("w+b") as handle:
        writer = BoltWriter(handle)
        for name in sorted(buckets):
            writer.add_bucket(name, sorted(buckets[name]))
        writer.finish()
    append_trailing_hash(str(path))
    return path


def put_record(
    main: int, key: bytes, value: bytes, create: int, version: int, lease: int = 0
) -> tuple[bytes, bytes]:
    kv = KeyValue(key, create, main, version, value, lease)
    return layout.revision_key(main, 0), layout.encode_key_value(kv)


def test_an_unfinished_compaction_is_finished(tmp_path: Path) -> None:
    records = [put_record(rev, b"a", b"v%d" % rev, 2, rev - 1) for rev in (2, 3, 4)]
    meta = [(layout.META_SCHEDULED_COMPACT, layout.encode_compact_revision(3))]
    path = etcd_file(tmp_path / "s.db", {layout.BUCKET_KEY: records, layout.BUCKET_META: meta})
    summary = restore_snapshot(options(path, tmp_path / "out"))
    assert (summary.revision, summary.compacted_revision) == (4, 3)
    kept = key_records(tmp_path / "out" / "member" / "db")
    assert len(kept) == 2  # revision 2 was superseded at the compaction


def test_what_raftkv_cannot_serve_is_refused(tmp_path: Path) -> None:
    orphan = [put_record(2, b"k", b"v", 2, 1, lease=42)]
    path = etcd_file(tmp_path / "orphan.db", {layout.BUCKET_KEY: orphan})
    with pytest.raises(SnapshotIncompatibleError, match="leases the snapshot does not hold"):
        restore_snapshot(options(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.restoring").exists()


def test_the_cli_reports_bad_files_and_dead_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 1000)
    assert main(["snapshot", "status", str(garbage)]) == 1
    assert "not a bbolt database" in capsys.readouterr().err
    assert main(["snapshot", "restore", str(garbage), "--data-dir", str(tmp_path / "d")]) == 1
    assert "missing hash" in capsys.readouterr().err
    flags = ["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"]
    assert main(["snapshot", "restore", str(garbage), *flags]) == 2
    assert "no entry for --name" in capsys.readouterr().err
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    save = ["snapshot", "save", str(tmp_path / "s.db"), "--endpoints", dead]
    assert main([*save, "--dial-timeout", "0.5"]) == 1
    assert "no connection within" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "s.db.part").exists()
