"""Snapshot files in etcd's format: write one from a raftkv backend, report on one, and
restore one into a new member's data directory.

A snapshot file is a bbolt database with etcd's buckets followed by the SHA-256 of the
database (etcd's server appends it to the Snapshot stream; ``etcdutl snapshot restore``
checks it when the file size is 32 more than a multiple of 512, and refuses a file without
it unless told ``--skip-hash-check``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from raftkv import limits
from raftkv.raft.messages import ConfState
from raftkv.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM
from raftkv.storage.alarm import AlarmStore
from raftkv.storage.backend import (
    DB_AUTH,
    DB_AUTH_ROLES,
    DB_AUTH_USERS,
    DB_KEY,
    DB_META,
    Backend,
)
from raftkv.storage.disk import OsDisk
from raftkv.storage.errors import RequestError
from raftkv.storage.etcdsnap import convert, layout
from raftkv.storage.etcdsnap.bbolt import BoltReader, BoltWriter, Entry, open_reader
from raftkv.storage.etcdsnap.crc32c import crc32c
from raftkv.storage.etcdsnap.errors import (
    RestoreTargetError,
    SnapshotFormatError,
    SnapshotHashMismatchError,
    SnapshotIncompatibleError,
)
from raftkv.storage.lease import Lessor
from raftkv.storage.members import MemberRecord, MemberStore, cluster_id_for, member_id_for
from raftkv.storage.mvcc.kvstore import (
    INITIAL_REVISION,
    META_COMPACTED_REVISION,
    META_CURRENT_REVISION,
    NOT_COMPACTED,
    KVStore,
)
from raftkv.storage.mvcc.revision import main_of, parse_revision_key
from raftkv.storage.raft_storage import RaftPersistence

SHA256_BYTES = hashlib.sha256().digest_size
HASH_ALIGNMENT_BYTES = 512  # etcdutl: a file of 512n + 32 bytes carries the hash
# KVStore's DB_META revision values (kvstore.py writes them as one big-endian int64).
_META_REVISION = struct.Struct(">q")
MEMBER_DIR = "member"
BACKEND_DIR = "db"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    size_bytes: int  # the database, without the trailing hash
    revision: int  # the last key record's main revision (0 if none)
    key_records: int


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """What ``etcdutl snapshot status`` reports."""

    hash: int  # CRC-32C over every bucket's name, keys and values
    revision: int  # the last key record's main revision
    total_keys: int  # records in all buckets
    total_size_bytes: int  # pages in use times the page size


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """etcdutl's restore flags, already validated (the CLI runs them through serve's
    config checks, so the member id computed here is the one ``raftkv serve`` computes)."""

    snapshot_path: str
    data_dir: str
    name: str
    initial_cluster: dict[str, tuple[str, ...]]
    initial_cluster_token: str
    initial_advertise_peer_urls: tuple[str, ...]
    skip_hash_check: bool = False


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    revision: int
    compacted_revision: int
    key_records: int
    leases: int
    member_id: int
    cluster_id: int


# --- Writing ------------------------------------------------------------------------------


def write_backend_snapshot(backend: Backend, handle: BinaryIO) -> ExportSummary:
    """Write ``backend`` as an etcd bbolt database (no trailing hash) to ``handle``.

    The backend must not change meanwhile: pass a private copy (``Backend.copy_to``)."""
    writer = BoltWriter(handle)
    consistent = backend.consistent_index()
    compacted = _read_meta_revision(backend, META_COMPACTED_REVISION, NOT_COMPACTED)
    lessor = Lessor(ticks_per_second=1, election_ticks=1)
    lessor.load(backend)
    leases = [lessor.lookup(lease_id) for lease_id in lessor.leases()]
    lease_records = [
        convert.LeaseRecord(lease.id, lease.ttl_seconds, lease.remaining_ttl_seconds)
        for lease in leases
        if lease is not None
    ]
    key_stats = _KeyStats()
    buckets = {
        layout.BUCKET_ALARM: convert.alarms_to_etcd(AlarmStore(backend).get()),
        layout.BUCKET_AUTH: convert.auth_to_etcd(_table_records(backend, DB_AUTH)),
        layout.BUCKET_CLUSTER: convert.cluster_to_etcd(),
        layout.BUCKET_LEASE: convert.leases_to_etcd(lease_records),
        layout.BUCKET_MEMBERS: convert.members_to_etcd(MemberStore(backend).all()),
        layout.BUCKET_MEMBERS_REMOVED: [],
        layout.BUCKET_META: convert.meta_to_etcd(consistent, compacted),
    }
    # Same tables, same encoding: users and roles are copied as they are, streamed.
    same_tables = {layout.BUCKET_AUTH_USERS: DB_AUTH_USERS, layout.BUCKET_AUTH_ROLES: DB_AUTH_ROLES}
    for name in layout.BUCKETS:
        if name == layout.BUCKET_KEY:
            writer.add_bucket(name, _etcd_key_records(backend, key_stats))
        elif name in same_tables:
            writer.add_bucket(name, _table_records(backend, same_tables[name]))
        else:
            writer.add_bucket(name, buckets[name])
    size_bytes = writer.finish()
    return ExportSummary(size_bytes, key_stats.last_main, key_stats.records)


@dataclass(slots=True)
class _KeyStats:
    records: int = 0
    last_main: int = 0


def _etcd_key_records(backend: Backend, stats: _KeyStats) -> Iterator[tuple[bytes, bytes]]:
    with backend.read() as txn, txn.cursor(db=backend.db(DB_KEY)) as cursor:
        for key, value in cursor:
            assert isinstance(key, bytes) and isinstance(value, bytes)
            stats.records += 1
            stats.last_main = main_of(parse_revision_key(key)[0])
            yield convert.key_record_to_etcd(key, value)


def _table_records(backend: Backend, db: bytes) -> Iterator[tuple[bytes, bytes]]:
    with backend.read() as txn, txn.cursor(db=backend.db(db)) as cursor:
        for key, value in cursor:
            yield bytes(key), bytes(value)


def _read_meta_revision(backend: Backend, key: bytes, default: int) -> int:
    with backend.read() as txn:
        raw = txn.get(key, db=backend.db(DB_META))
    return default if raw is None else int(_META_REVISION.unpack(raw)[0])


def export_backend_copy(backend_dir: str, path: str) -> ExportSummary:
    """Write the LMDB backend copy in ``backend_dir`` as an etcd database at ``path``."""
    backend = Backend(backend_dir, sync=False)
    try:
        with open(path, "w+b") as handle:
            summary = write_backend_snapshot(backend, handle)
            handle.flush()
    finally:
        backend.close()
    return summary


async def backend_snapshot_chunks(
    backend: Backend, work_dir: str
) -> AsyncIterator[tuple[bytes, int]]:
    """The Maintenance Snapshot stream's database: ``backend`` in etcd's format, as
    (chunk, bytes remaining after it). A consistent LMDB copy is taken at once; the
    conversion runs in a thread into a file under ``work_dir`` (removed afterwards), so
    memory holds one chunk however large the database is."""
    copy_dir = os.path.join(work_dir, "lmdb")
    path = os.path.join(work_dir, "snapshot.db")
    try:
        backend.copy_to(copy_dir)
        summary = await asyncio.to_thread(export_backend_copy, copy_dir, path)
        sent = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(limits.SNAPSHOT_CHUNK_BYTES):
                sent += len(chunk)
                yield chunk, summary.size_bytes - sent
        assert sent == summary.size_bytes
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def append_trailing_hash(path: str) -> bytes:
    """Append the SHA-256 of the file's contents (what etcd's Snapshot stream ends with)."""
    digest = file_sha256(path, os.path.getsize(path))
    with open(path, "ab") as handle:
        handle.write(digest)
    return digest


# --- Reading ------------------------------------------------------------------------------


def file_sha256(path: str, size_bytes: int) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = size_bytes
        while remaining > 0:
            chunk = handle.read(min(remaining, limits.ETCD_SNAPSHOT_IO_BYTES))
            if not chunk:
                raise SnapshotFormatError(f"{path}: shorter than {size_bytes} bytes")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.digest()


def has_trailing_hash(size_bytes: int) -> bool:
    return size_bytes % HASH_ALIGNMENT_BYTES == SHA256_BYTES


def verify_trailing_hash(path: str, skip_hash_check: bool = False) -> int:
    """The size of the database part of the file, after checking its SHA-256 as etcdutl
    does (a file without one needs ``skip_hash_check``, e.g. a copied ``member/snap/db``)."""
    size_bytes = os.path.getsize(path)
    if not has_trailing_hash(size_bytes):
        if not skip_hash_check:
            raise SnapshotHashMismatchError(
                f"{path}: snapshot missing hash but --skip-hash-check=false"
            )
        return size_bytes
    database_bytes = size_bytes - SHA256_BYTES
    if not skip_hash_check:
        with open(path, "rb") as handle:
            handle.seek(database_bytes)
            expected = handle.read(SHA256_BYTES)
        actual = file_sha256(path, database_bytes)
        if actual != expected:
            raise SnapshotHashMismatchError(
                f"{path}: expected sha256 {expected.hex()}, got {actual.hex()}"
            )
    return database_bytes


def snapshot_status(path: str) -> SnapshotStatus:
    """etcdutl's ``snapshot status``: bbolt's integrity check, then the CRC-32C of every
    bucket's name and records, the last key revision, the record count and the size."""
    with open_reader(path) as reader:
        problems = reader.check()
        if problems:
            raise SnapshotFormatError(
                f"{path}: snapshot file integrity check failed, {len(problems)} errors found: "
                + "; ".join(problems[:10])
            )
        crc = 0
        total_keys = 0
        revision = 0
        for bucket in reader.buckets():
            if not bucket.is_bucket:
                raise SnapshotFormatError(f"{path}: cannot get hash of bucket {bucket.key!r}")
            crc = crc32c(bucket.key, crc)
            for entry in reader.items(bucket):
                crc = crc32c(entry.value, crc32c(entry.key, crc))
                total_keys += 1
                if bucket.key == layout.BUCKET_KEY:
                    revision = layout.parse_revision_key(entry.key)[0]
        size = reader.meta.high_water_pgid * reader.meta.page_bytes
    return SnapshotStatus(crc, revision, total_keys, size)


# --- Restoring ----------------------------------------------------------------------------


def restore_snapshot(options: RestoreOptions) -> RestoreSummary:
    """Build a new member's data directory from a snapshot (raftkv's or etcd's), as
    ``etcdutl snapshot restore`` does: the data, leases, alarms, auth (users, roles, the
    enabled flag and the auth revision) and revisions of the snapshot; the members of
    ``initial_cluster`` (the snapshot's are dropped); a new cluster id. ``raftkv serve``
    with the same name, cluster and token starts from it.

    The directory appears only when complete (it is built beside it and renamed)."""
    own_urls = options.initial_cluster.get(options.name)
    if own_urls is None or set(own_urls) != set(options.initial_advertise_peer_urls):
        raise RestoreTargetError(
            f"--initial-cluster has no entry {options.name!r} with the peer URLs "
            f"{','.join(options.initial_advertise_peer_urls)}"
        )
    target = options.data_dir.rstrip("/") or options.data_dir
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise RestoreTargetError(f"data-dir {target!r} not empty or could not be read")
    database_bytes = verify_trailing_hash(options.snapshot_path, options.skip_hash_check)
    building = target + ".restoring"
    shutil.rmtree(building, ignore_errors=True)
    try:
        summary = _restore_into(options, building, database_bytes)
        if os.path.isdir(target):
            os.rmdir(target)  # empty, checked above
        os.rename(building, target)
        _fsync_directory(os.path.dirname(os.path.abspath(target)))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def _restore_into(options: RestoreOptions, data_dir: str, database_bytes: int) -> RestoreSummary:
    member_dir = os.path.join(data_dir, MEMBER_DIR)
    token = options.initial_cluster_token
    members = [
        MemberRecord(member_id_for(urls, token), name, tuple(urls), ())
        for name, urls in sorted(options.initial_cluster.items())
    ]
    cluster_id = cluster_id_for([member.id for member in members], token)
    backend = Backend(os.path.join(member_dir, BACKEND_DIR), sync=False)
    try:
        with open_reader(options.snapshot_path, database_bytes) as reader:
            imported = _import_state(reader, backend)
        with backend.write() as batch:
            store = MemberStore(backend)
            for member in members:
                store.put(batch, member)
            store.set_cluster_id(batch, cluster_id)
            batch.set_consistent_index(BOOTSTRAP_INDEX, BOOTSTRAP_TERM)
        revision, compacted = _check_restored(backend)
        backend.flush()
    finally:
        backend.close()
    voters = frozenset(member.id for member in members)
    RaftPersistence.bootstrap(OsDisk(), member_dir, ConfState(voters=voters)).close()
    return RestoreSummary(
        revision=revision,
        compacted_revision=compacted,
        key_records=imported.key_records,
        leases=imported.leases,
        member_id=member_id_for(options.initial_advertise_peer_urls, token),
        cluster_id=cluster_id,
    )


@dataclass(frozen=True, slots=True)
class _Imported:
    key_records: int
    leases: int


def _import_state(reader: BoltReader, backend: Backend) -> _Imported:
    """Copy the snapshot's key space, leases, alarms, auth and compaction into ``backend``."""
    buckets = {entry.key: entry for entry in reader.buckets() if entry.is_bucket}
    for bucket_name, db, check in _AUTH_TABLES:
        bucket = buckets.get(bucket_name)
        if bucket is not None:
            _copy_checked(reader, bucket, backend, db, check)
    meta_bucket = buckets.get(layout.BUCKET_META)
    meta = convert.meta_from_etcd(_records(reader, meta_bucket) if meta_bucket else [])
    key_bucket = buckets.get(layout.BUCKET_KEY)
    key_records, last_main = _import_keys(reader, key_bucket, backend) if key_bucket else (0, 0)
    leases = _import_leases(reader, buckets.get(layout.BUCKET_LEASE), backend)
    finished = meta.finished_compact_revision
    compacted = NOT_COMPACTED if finished is None else finished
    current = max(last_main, compacted, INITIAL_REVISION)
    with backend.write() as batch:
        alarms = AlarmStore(backend)
        alarm_bucket = buckets.get(layout.BUCKET_ALARM)
        for key, _ in _records(reader, alarm_bucket) if alarm_bucket else []:
            alarm = convert.alarm_from_etcd(key)
            alarms.activate(batch, alarm.member_id, alarm.alarm)
        batch.put(DB_META, META_CURRENT_REVISION, _META_REVISION.pack(current))
        if compacted != NOT_COMPACTED:
            batch.put(DB_META, META_COMPACTED_REVISION, _META_REVISION.pack(compacted))
    scheduled = meta.scheduled_compact_revision
    if scheduled is not None and scheduled > compacted:
        # etcd finishes an interrupted compaction when it starts; raftkv's are atomic.
        kv = KVStore(backend)
        target = min(scheduled, kv.current_revision)
        if target > compacted:
            with backend.write() as batch:
                kv.compact(batch, target)
    return _Imported(key_records, leases)


def _records(reader: BoltReader, bucket: Entry) -> Iterator[tuple[bytes, bytes]]:
    for entry in reader.items(bucket):
        if entry.is_bucket:
            raise SnapshotFormatError(
                f"{reader.name}: bucket {bucket.key!r} holds a nested bucket {entry.key!r}"
            )
        yield entry.key, entry.value


# etcd's auth buckets and raftkv's tables hold the same records in the same encoding.
_AUTH_TABLES: tuple[tuple[bytes, bytes, Callable[[bytes, bytes], None]], ...] = (
    (layout.BUCKET_AUTH, DB_AUTH, layout.check_auth_meta),
    (layout.BUCKET_AUTH_USERS, DB_AUTH_USERS, layout.check_auth_user),
    (layout.BUCKET_AUTH_ROLES, DB_AUTH_ROLES, layout.check_auth_role),
)


def _copy_checked(
    reader: BoltReader,
    bucket: Entry,
    backend: Backend,
    db: bytes,
    check: Callable[[bytes, bytes], None],
) -> None:
    """Copy a bucket's records unchanged into ``db`` once ``check`` accepts each, in
    bounded batches."""
    records = _records(reader, bucket)
    while True:
        with backend.write() as batch:
            for count, (key, value) in enumerate(records, start=1):
                check(key, value)
                batch.put(db, key, value)
                if count == limits.ETCD_SNAPSHOT_RESTORE_BATCH_RECORDS:
                    break
            else:
                return


def _import_keys(reader: BoltReader, bucket: Entry, backend: Backend) -> tuple[int, int]:
    """(records, last main revision): the ``key`` bucket into DB_KEY, in bounded batches."""
    count = 0
    last_main = 0
    records = _records(reader, bucket)
    while True:
        with backend.write() as batch:
            for etcd_key, etcd_value in records:
                main, key, value = convert.key_record_from_etcd(etcd_key, etcd_value)
                batch.put(DB_KEY, key, value)
                count += 1
                last_main = main
                if count % limits.ETCD_SNAPSHOT_RESTORE_BATCH_RECORDS == 0:
                    break
            else:
                return count, last_main


def _import_leases(reader: BoltReader, bucket: Entry | None, backend: Backend) -> int:
    if bucket is None:
        return 0
    # A lessor whose minimum TTL is 1 s grants every stored TTL unchanged.
    lessor = Lessor(ticks_per_second=1, election_ticks=1)
    count = 0
    with backend.write() as batch:
        for key, value in _records(reader, bucket):
            lease = convert.lease_from_etcd(key, value)
            try:
                lessor.grant(batch, lease.id, lease.ttl_seconds, now_tick=0)
            except RequestError as error:
                raise SnapshotIncompatibleError(f"lease {lease.id:x}: {error}") from error
            if lease.remaining_ttl_seconds:
                lessor.apply_checkpoint(batch, lease.id, lease.remaining_ttl_seconds)
            count += 1
    return count


def _check_restored(backend: Backend) -> tuple[int, int]:
    """Open the restored state as the server will, and refuse what it would refuse."""
    kv = KVStore(backend)
    lessor = Lessor(ticks_per_second=1, election_ticks=1)
    orphans = lessor.restore(backend, kv.keys_with_leases())
    if orphans:
        key, lease_id = orphans[0]
        raise SnapshotIncompatibleError(
            f"{len(orphans)} keys carry leases the snapshot does not hold "
            f"(first: {key!r} on lease {lease_id:x})"
        )
    return kv.current_revision, kv.compacted_revision


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
