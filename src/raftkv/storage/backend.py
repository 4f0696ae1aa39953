"""The LMDB backend: one environment, named databases, atomic batched commits.

LMDB is the closest analogue of etcd's bbolt: an embedded, memory-mapped
B+tree with copy-on-write pages, one writer and lock-free readers, and
crash-safe commits. Everything the state machine owns (MVCC keys, leases,
alarms, and the consistent index that says which Raft entry they reflect)
lives here, and one write transaction commits all of it at once. That is what
makes replaying the Raft log after a crash idempotent.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lmdb

from raftkv import limits
from raftkv.storage.errors import DiskError

DB_KEY = b"key"  # MVCC: revision -> encoded KeyValue
DB_META = b"meta"  # consistent index, compaction marks, ...
DB_LEASE = b"lease"  # lease id -> encoded lease
DB_ALARM = b"alarm"  # member id + alarm type -> b""
DB_MEMBERS = b"members"  # member id -> encoded member; cluster identity in DB_META
DB_AUTH = b"auth"  # auth enabled flag and auth revision (etcd's bucket of that name)
DB_AUTH_USERS = b"authUsers"  # user name -> authpb.User
DB_AUTH_ROLES = b"authRoles"  # role name -> authpb.Role
DATABASES = (
    DB_KEY,
    DB_META,
    DB_LEASE,
    DB_ALARM,
    DB_MEMBERS,
    DB_AUTH,
    DB_AUTH_USERS,
    DB_AUTH_ROLES,
)

META_CONSISTENT_INDEX = b"consistent_index"
_INDEX_TERM = struct.Struct(">QQ")

DATA_FILE = "data.mdb"


@dataclass(frozen=True, slots=True)
class ConsistentIndex:
    """The last Raft entry (index, term) whose effects are in the backend."""

    index: int = 0
    term: int = 0


class WriteBatch:
    """One LMDB write transaction; commits everything in it atomically.

    Modules that keep in-memory state derived from the backend (the MVCC index)
    change it while they write, and register ``on_commit``/``on_abort``
    callbacks so they can keep it or roll it back once the transaction's fate is
    known. Callbacks run after the LMDB commit or abort, in registration order,
    and must not raise.
    """

    def __init__(self, backend: Backend, txn: lmdb.Transaction) -> None:
        self.backend = backend
        self.txn = txn
        # Set by fail(): the batch aborts at the end even if its body swallowed
        # the error, because its writes may be half done.
        self.failure: BaseException | None = None
        self._commit_callbacks: list[Callable[[], None]] = []
        self._abort_callbacks: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._commit_callbacks.append(callback)

    def on_abort(self, callback: Callable[[], None]) -> None:
        self._abort_callbacks.append(callback)

    def fail(self, error: BaseException) -> None:
        """Doom the batch: Backend.write aborts it and raises DiskError."""
        if self.failure is None:
            self.failure = error

    def finish(self, committed: bool) -> None:
        """Run the callbacks for how the transaction ended (Backend.write calls this)."""
        callbacks = self._commit_callbacks if committed else self._abort_callbacks
        self._commit_callbacks = []
        self._abort_callbacks = []
        for callback in callbacks:
            callback()

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.backend.db(db))

    def delete(self, db: bytes, key: bytes) -> bool:
        return bool(self.txn.delete(key, db=self.backend.db(db)))

    def get(self, db: bytes, key: bytes) -> bytes | None:
        value = self.txn.get(key, db=self.backend.db(db))
        return None if value is None else bytes(value)

    def set_consistent_index(self, index: int, term: int) -> None:
        self.put(DB_META, META_CONSISTENT_INDEX, _INDEX_TERM.pack(index, term))


class Backend:
    def __init__(
        self,
        directory: str,
        map_size_bytes: int = limits.BACKEND_MAP_SIZE_BYTES,
        sync: bool = True,
        metasync: bool | None = None,
        observe_commit_s: Callable[[float], None] | None = None,
        batch_commits: bool = False,
        batch_interval_ms: int = limits.BACKEND_BATCH_INTERVAL_MS,
        batch_limit: int = limits.BACKEND_BATCH_LIMIT_WRITES,
    ) -> None:
        """``sync``: every commit is flushed to disk. ``metasync`` (default: as ``sync``):
        the meta page too. Without it (LMDB's NOMETASYNC) a system crash may undo the
        last commit but never corrupts the database; a server whose WAL replays that
        commit can afford it, and saves one of LMDB's two flushes per commit.

        ``batch_commits``: etcd's backend batching, for a member whose WAL replays what a
        crash loses. Each write batch commits into one open LMDB transaction (as a nested
        transaction, so a failed batch still undoes only itself); reads see every batch
        committed so far. The open transaction is committed to disk by ``commit_if_due``
        (once ``batch_interval_ms`` old), after ``batch_limit`` batches, and by
        ``flush``, ``copy_to``, ``defragment`` and ``close``. Every LMDB commit is still a
        synced one, so a power loss can cost the last batches but never corrupt the file.
        All use must come from one thread (an LMDB write transaction belongs to it)."""
        self.directory = directory
        self.map_size_bytes = map_size_bytes
        self.sync = sync
        self.metasync = sync if metasync is None else metasync
        self.observe_commit_s = observe_commit_s  # each commit's duration (metrics)
        self.batch_commits = batch_commits
        assert batch_interval_ms >= 0 and batch_limit >= 1, (batch_interval_ms, batch_limit)
        self.batch_interval_ms = batch_interval_ms
        self.batch_limit = batch_limit
        self._pending: lmdb.Transaction | None = None  # the open transaction (batching)
        self._pending_batches = 0
        self._pending_since_s = 0.0
        self._pending_thread = 0
        self._writing: lmdb.Transaction | None = None  # the batch being written (batching)
        # size_in_use_bytes as of the last commit: it is asked before every proposal (the
        # quota), and LMDB's info and stat calls were 2% of a loaded member's samples.
        self._size_in_use_bytes: int | None = None
        os.makedirs(directory, exist_ok=True)
        self.env = self._open()

    def _open(self) -> lmdb.Environment:
        try:
            env = lmdb.open(
                self.directory,
                map_size=self.map_size_bytes,
                max_dbs=len(DATABASES),
                sync=self.sync,
                metasync=self.metasync,
                readahead=False,
                lock=True,
            )
        except lmdb.Error as error:
            raise DiskError(f"cannot open backend {self.directory}: {error}") from error
        self._dbs = {name: env.open_db(name) for name in DATABASES}
        return env

    def db(self, name: bytes) -> lmdb._Database:
        return self._dbs[name]

    @contextmanager
    def write(self) -> Iterator[WriteBatch]:
        """A batch: every change in it commits together, or none does.

        After the commit the batch's on_commit callbacks run; if the body raises,
        the batch was failed, or the commit fails, its on_abort callbacks run.
        """
        assert self._writing is None, "write batches do not nest"
        batch: WriteBatch | None = None
        try:
            with self._begin_batch() as txn:
                self._writing = txn
                batch = WriteBatch(self, txn)
                yield batch
                if batch.failure is not None:
                    raise DiskError(
                        f"backend {self.directory} batch failed: {batch.failure!r}"
                    ) from batch.failure
                commit_started_s = time.perf_counter()  # leaving the block commits
        except BaseException as error:
            if batch is not None:
                batch.finish(committed=False)
            if isinstance(error, lmdb.Error):
                raise _disk_error(self.directory, error) from error
            raise
        finally:
            self._writing = None
            self._size_in_use_bytes = None
        assert batch is not None
        if self._pending is not None:
            self._pending_batches += 1
            if self._pending_batches >= self.batch_limit:
                self.commit_pending()
        elif self.observe_commit_s is not None:
            self.observe_commit_s(time.perf_counter() - commit_started_s)
        batch.finish(committed=True)

    def _begin_batch(self) -> lmdb.Transaction:
        if not self.batch_commits:
            return self.env.begin(write=True)
        if self._pending is None:
            self._pending = self.env.begin(write=True)
            self._pending_batches = 0
            self._pending_since_s = time.monotonic()
            self._pending_thread = threading.get_ident()
        self._check_thread()
        return self.env.begin(write=True, parent=self._pending)

    def _check_thread(self) -> None:
        assert self._pending_thread == threading.get_ident(), (
            f"backend {self.directory}: its open transaction belongs to another thread"
        )

    def commit_if_due(self) -> None:
        """Commit the open transaction once it is ``batch_interval_ms`` old."""
        if self._pending is None:
            return
        age_ms = (time.monotonic() - self._pending_since_s) * 1000
        if age_ms >= self.batch_interval_ms:
            self.commit_pending()

    def commit_pending(self) -> None:
        """Commit (and sync) the batches written since the last commit."""
        if self._pending is None:
            return
        assert self._writing is None, "commit_pending inside a write batch"
        self._check_thread()
        pending, self._pending = self._pending, None
        self._size_in_use_bytes = None
        started_s = time.perf_counter()
        try:
            pending.commit()
        except lmdb.Error as error:
            raise _disk_error(self.directory, error) from error
        if self.observe_commit_s is not None:
            self.observe_commit_s(time.perf_counter() - started_s)

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A view of every committed batch (with batching, through the open transaction;
        inside a write batch, through that batch, which is the only one LMDB lets us use)."""
        open_txn = (self._writing or self._pending) if self.batch_commits else None
        if open_txn is not None:
            self._check_thread()
            yield open_txn
            return
        with self.env.begin(write=False, buffers=False) as txn:
            yield txn

    def consistent_index(self) -> ConsistentIndex:
        with self.read() as txn:
            raw = txn.get(META_CONSISTENT_INDEX, db=self.db(DB_META))
        if raw is None:
            return ConsistentIndex()
        index, term = _INDEX_TERM.unpack(raw)
        return ConsistentIndex(index=index, term=term)

    # -- Sizes and maintenance ------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the backend occupies on disk (etcd's dbSize)."""
        return os.stat(os.path.join(self.directory, DATA_FILE)).st_size

    def size_in_use_bytes(self) -> int:
        """Bytes of pages in use (etcd's dbSizeInUse)."""
        if self._size_in_use_bytes is None:
            info = self.env.info()
            self._size_in_use_bytes = int((info["last_pgno"] + 1) * self.env.stat()["psize"])
        return self._size_in_use_bytes

    def defragment(self) -> None:
        """Rewrite the database compactly, reclaiming free pages."""
        self.commit_pending()
        compact_dir = self.directory.rstrip("/") + ".defrag"
        shutil.rmtree(compact_dir, ignore_errors=True)
        os.makedirs(compact_dir)
        self.env.copy(compact_dir, compact=True)
        self.env.close()
        source = os.path.join(compact_dir, DATA_FILE)
        target = os.path.join(self.directory, DATA_FILE)
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(source, target)
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        shutil.rmtree(compact_dir, ignore_errors=True)
        self.env = self._open()
        self._size_in_use_bytes = None

    def flush(self) -> None:
        """Make every committed batch durable (a backend opened with sync=False
        commits without fsync; the WAL is the durable record until a snapshot)."""
        self.commit_pending()
        try:
            self.env.sync(True)
        except lmdb.Error as error:
            raise DiskError(f"backend {self.directory} sync failed: {error}") from error

    def copy_to(self, path: str) -> None:
        """A consistent, compacted copy of the whole backend (for snapshots)."""
        self.commit_pending()
        os.makedirs(path, exist_ok=True)
        self.env.copy(path, compact=True)

    def close(self) -> None:
        self.commit_pending()
        self.env.close()


def _disk_error(directory: str, error: lmdb.Error) -> DiskError:
    if isinstance(error, lmdb.MapFullError):
        return DiskError(f"backend {directory} is full: {error}")
    return DiskError(f"backend {directory} write failed: {error}")
