"""KVStore: etcd's MVCC key space over the LMDB backend (etcd ``server/storage/mvcc/kvstore.go``).

State: DB_KEY holds every revision (see ``revision`` and ``encoding``),
DB_META the current and compacted revisions, and memory holds the index,
rebuilt from DB_KEY at startup.

Writes take the caller's ``WriteBatch`` so that the apply loop can put many
Raft entries, and the consistent index, in one LMDB commit. Each mutating
request makes exactly one new main revision; one that changes nothing (a
delete of absent keys, a txn of ranges) makes none. Requests in a batch see
the ones before them. The store changes its index as it writes and keeps a
journal per batch: when the batch commits the journal is dropped, and when
it aborts (the batch body raised, or the commit failed) the index and
revisions are rolled back, so memory never disagrees with the backend.

A request error (etcd's errors) is raised before the request writes
anything, so the batch can go on. An error after a request started writing
(only the disk can fail then) dooms the batch: ``WriteBatch.fail`` makes it
abort even if the caller swallows the error.

Not thread-safe: one apply loop writes, and reads (``range``, ``read_txn``,
``hash_kv``, ``hash``, ``changes_between``) must not run while a batch with
writes of this store is open, because they read committed LMDB data through
the index.

Watch hooks (``watchable.WatchHub`` uses them): change listeners get the
changes of a whole batch, in revision order, once it has committed (nothing
if it aborts); restore listeners are told that ``restore`` replaced the
store's contents; ``changes_between`` reads the stored history.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import lmdb

from raftkv import limits
from raftkv.storage.backend import DB_KEY, DB_META, Backend, WriteBatch
from raftkv.storage.errors import (
    CompactedError,
    FutureRevisionError,
    NoSpaceError,
    TooManyChangesError,
)
from raftkv.storage.mvcc import compaction, encoding
from raftkv.storage.mvcc import hash as kv_hash
from raftkv.storage.mvcc.apply import (
    check_change_room,
    check_lease,
    check_txn,
    compare_to_path,
    delete_range,
    execute_range,
    execute_txn,
    is_txn_read_only,
    put,
)
from raftkv.storage.mvcc.hash import KeyValueHash
from raftkv.storage.mvcc.index import Index
from raftkv.storage.mvcc.kvstore_txn import (
    LeaseAttachments,
    LeaseChecker,
    ReadView,
    WriteView,
    range_end_of,
)
from raftkv.storage.mvcc.quota import request_cost_bytes
from raftkv.storage.mvcc.revision import main_of, pack, parse_revision_key, revision_key
from raftkv.storage.mvcc.txn import (
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.mvcc.validation import validate_range

META_CURRENT_REVISION = b"mvcc_current_revision"
META_COMPACTED_REVISION = b"mvcc_compacted_revision"
_META_REVISION = struct.Struct(">q")

# etcd's new store: revision 1, never compacted (compactMainRev -1).
INITIAL_REVISION = 1
NOT_COMPACTED = -1

_Response = TypeVar("_Response")

# Told the changes of one committed batch: puts and tombstones (version 0), in
# revision order. The list is shared by all listeners: they must not change it.
ChangeListener = Callable[[list[KeyValue]], None]
# Told that restore() replaced the store's contents (e.g. a snapshot was installed).
RestoreListener = Callable[[], None]


def _no_leases(lease_id: int) -> bool:
    return False


class KVStore:
    def __init__(
        self,
        backend: Backend,
        lease_checker: LeaseChecker | None = None,
        quota_bytes: int = limits.BACKEND_QUOTA_BYTES_DEFAULT,
        leases: LeaseAttachments | None = None,
    ) -> None:
        """``lease_checker(id)`` tells whether a lease exists (None: none does, so
        any put with a lease fails); ``leases`` is told which keys carry which
        lease (attach/detach, as etcd's store tells its lessor), if given."""
        assert quota_bytes > 0
        self._backend = backend
        self._lease_exists: LeaseChecker = lease_checker or _no_leases
        self._leases = leases
        self.quota_bytes = quota_bytes
        self._index = Index()
        self._current = INITIAL_REVISION
        self._compacted = NOT_COMPACTED
        # The batch whose changes the index holds but LMDB has not committed.
        self._open_batch: WriteBatch | None = None
        self._revisions_before_batch = (INITIAL_REVISION, NOT_COMPACTED)
        self._change_listeners: list[ChangeListener] = []
        self._restore_listeners: list[RestoreListener] = []
        # The open batch's changes, kept only while someone listens.
        self._batch_changes: list[KeyValue] = []
        # The leased live keys the last restore's scan found, and the revision it found
        # them at; handed out once by keys_with_leases, then dropped.
        self._restored_leases: tuple[int, list[tuple[bytes, int]]] = (-1, [])
        self.restore()

    @property
    def current_revision(self) -> int:
        """The revision of the last change (1 in an empty store)."""
        return self._current

    @property
    def compacted_revision(self) -> int:
        """The revision of the last compaction; -1 if never compacted (etcd)."""
        return self._compacted

    def restore(self) -> None:
        """Rebuild the index and revisions from the backend (startup, or after the
        backend's contents were replaced by a snapshot)."""
        assert self._open_batch is None, "restore inside a write batch"
        index = Index()
        leases: dict[bytes, int] = {}
        with self._backend.read() as txn:
            current = _read_revision(txn, self._backend, META_CURRENT_REVISION, INITIAL_REVISION)
            compacted = _read_revision(txn, self._backend, META_COMPACTED_REVISION, NOT_COMPACTED)
            with txn.cursor(db=self._backend.db(DB_KEY)) as cursor:
                index.restore(_stored_records(cursor, leases))
                last_key = bytes(cursor.key()) if cursor.last() else None
        last_main = 0 if last_key is None else main_of(parse_revision_key(last_key)[0])
        assert last_main <= current, f"DB_KEY has revision {last_main} past {current}"
        assert NOT_COMPACTED <= compacted <= current, f"compacted {compacted} > {current}"
        self._index = index
        self._current = current
        self._compacted = compacted
        self._restored_leases = (current, sorted(leases.items()))
        for listener in self._restore_listeners:
            listener()

    # --- Watch hooks -----------------------------------------------------------

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(changes)`` after each batch with changes of this store
        commits: every change of the batch, in revision order (sub order within
        a revision). It runs as a WriteBatch commit callback, so it must not
        raise; the store is readable again by then."""
        assert self._open_batch is None, "a listener added inside a write batch"
        self._change_listeners.append(listener)

    def add_restore_listener(self, listener: RestoreListener) -> None:
        """Call ``listener()`` after each ``restore``."""
        self._restore_listeners.append(listener)

    def changes_between(
        self, start_revision: int, end_revision: int, max_revisions: int
    ) -> list[KeyValue]:
        """The stored changes (puts, and tombstones with version 0) whose main
        revision is in [start_revision, end_revision], in revision order, for at
        most ``max_revisions`` revisions (a revision is never split).

        CompactedError if ``start_revision`` is below the compacted revision.
        The compacted revision itself is readable, as in etcd's watch: a
        compaction keeps every key's newest change at or before it, tombstones
        included, so the changes made *at* it all stay (unless one request
        changed a key twice; etcd has the same gap). FutureRevisionError past
        the current revision.
        """
        assert start_revision >= 1 and max_revisions >= 1
        assert self._open_batch is None, "a history read inside a write batch of this store"
        if start_revision < self._compacted:
            raise CompactedError()
        if end_revision > self._current:
            raise FutureRevisionError()
        if start_revision > end_revision:
            return []
        with self._backend.read() as txn, txn.cursor(db=self._backend.db(DB_KEY)) as cursor:
            if not cursor.set_range(revision_key(pack(start_revision, 0))):
                return []
            return _read_changes(cursor, end_revision, max_revisions)

    # --- Reads -----------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        """etcd's Range (validated here: empty key, bad sort option)."""
        validate_range(req)
        with self._read_view() as view:
            return execute_range(view, req)

    def read_txn(self, req: TxnRequest) -> TxnResponse:
        """A txn of ranges only (is_txn_read_only), served without the log, e.g.
        a serializable one. Same answer as ``txn`` would give."""
        assert is_txn_read_only(req), "read_txn with writes"
        with self._read_view() as view:
            path = compare_to_path(view, req)
            check_txn(view, req, path, self._lease_exists)
            return execute_txn(view, req, path)

    def keys_with_leases(self) -> list[tuple[bytes, int]]:
        """Every live key that carries a lease, with the lease, in key order
        (to rebuild the lessor's attachments after a restart). Right after a restore
        this is what the restore's scan found; otherwise every live key is read."""
        restored_at, restored = self._restored_leases
        self._restored_leases = (-1, [])
        if restored_at == self._current:  # nothing written since the restore
            return restored
        found: list[tuple[bytes, int]] = []
        with self._read_view() as view:
            for key, key_index in self._index.items():
                latest = key_index.latest()
                if latest is not None:
                    lease = view.value_at(latest[0]).lease
                    if lease:
                        found.append((key, lease))
        return found

    # --- Writes ----------------------------------------------------------------

    def put(self, batch: WriteBatch, req: PutRequest) -> PutResponse:
        """etcd's Put. LeaseNotFoundError for an unknown lease; KeyNotFoundError
        for ignore_value / ignore_lease on a missing key."""
        check_lease(req.lease, self._lease_exists)
        return self._write(batch, lambda view: put(view, req))

    def delete_range(self, batch: WriteBatch, req: DeleteRangeRequest) -> DeleteRangeResponse:
        """etcd's DeleteRange; no new revision if nothing was deleted."""

        def operation(view: WriteView) -> DeleteRangeResponse:
            self._check_room(view, [(req.key, range_end_of(req.range_end))])
            return delete_range(view, req)

        return self._write(batch, operation)

    def delete_keys(self, batch: WriteBatch, keys: Sequence[bytes]) -> int:
        """Delete these keys, those that exist, in one revision, in this order;
        how many were deleted. For a lease revoke (etcd deletes the revoked
        lease's keys, sorted, in one write txn)."""

        def operation(view: WriteView) -> int:
            self._check_room(view, [(key, None) for key in keys])
            return sum(view.delete_range(key, None) for key in keys)

        return self._write(batch, operation)

    def txn(self, batch: WriteBatch, req: TxnRequest) -> TxnResponse:
        """etcd's Txn: compares (all, up front), checks, then the taken branch in order."""

        def operation(view: WriteView) -> TxnResponse:
            path = compare_to_path(view, req)
            check_txn(view, req, path, self._lease_exists)
            check_change_room(view, req, path)
            return execute_txn(view, req, path)

        return self._write(batch, operation)

    def compact(self, batch: WriteBatch, revision: int) -> CompactionResponse:
        """Forget the history before ``revision``: reads below it fail with
        CompactedError from now on. CompactedError if already compacted at or
        past it; FutureRevisionError past the current revision."""
        if revision <= self._compacted:
            raise CompactedError()
        if revision > self._current:
            raise FutureRevisionError()
        self._join(batch)
        try:
            compaction.compact(self._index, batch, revision)
            batch.put(DB_META, META_COMPACTED_REVISION, _META_REVISION.pack(revision))
        except BaseException as error:
            batch.fail(error)
            raise
        self._compacted = revision
        return CompactionResponse(self._current)

    # --- Hashes and quota ------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> KeyValueHash:
        """etcd's HashKV at ``revision`` (0: current). CompactedError below the
        compacted revision, FutureRevisionError past the current one."""
        if 0 < revision < self._compacted:
            raise CompactedError()
        if revision > self._current:
            raise FutureRevisionError()
        if revision == 0:
            revision = self._current
        with self._read_view() as view:
            keep = self._index.keep(revision)
            return kv_hash.hash_kv(
                view.txn, self._backend.db(DB_KEY), self._compacted, revision, keep
            )

    def hash(self) -> int:
        """etcd's Hash: CRC32 of the whole backend, consistent index excluded."""
        assert self._open_batch is None, "hash inside a write batch"
        return kv_hash.hash_backend(self._backend)

    def over_quota(self, extra_bytes: int) -> bool:
        """Whether the backend plus ``extra_bytes`` reaches the quota (etcd's
        !Available). Reads this member's size: call it before proposing, never
        while applying, or members would decide differently."""
        assert extra_bytes >= 0
        return self._backend.size_in_use_bytes() + extra_bytes >= self.quota_bytes

    def check_quota(self, req: PutRequest | TxnRequest) -> None:
        """NoSpaceError if the request could grow the store past the quota
        (a txn without puts costs nothing and always passes). Before proposing."""
        cost = request_cost_bytes(req)
        if cost > 0 and self.over_quota(cost):
            raise NoSpaceError()

    # --- Batches ---------------------------------------------------------------

    def _write(self, batch: WriteBatch, operation: Callable[[WriteView], _Response]) -> _Response:
        self._join(batch)
        view = WriteView(
            self._index,
            batch,
            self._backend.db(DB_KEY),
            self._compacted,
            self._current,
            self._leases,
        )
        try:
            response = operation(view)
            if view.changes:
                revision = view.write_revision
                batch.put(DB_META, META_CURRENT_REVISION, _META_REVISION.pack(revision))
                self._current = revision
                if self._change_listeners:
                    self._batch_changes.extend(view.changes)
        except BaseException as error:
            if view.wrote:
                batch.fail(error)
            raise
        return response

    def _check_room(self, view: WriteView, ranges: list[tuple[bytes, bytes | None]]) -> None:
        room = view.room_for_changes()
        if len(self._index) < room and len(ranges) < room:
            return
        at = view.revision
        if sum(self._index.count(key, end, at) for key, end in ranges) >= room:
            raise TooManyChangesError()

    def _join(self, batch: WriteBatch) -> None:
        """Start journaling for ``batch`` the first time it writes to this store."""
        assert batch.backend is self._backend, "a batch of another backend"
        if self._open_batch is batch:
            return
        assert self._open_batch is None, "a write batch of this store is still open"
        self._open_batch = batch
        self._revisions_before_batch = (self._current, self._compacted)
        self._index.begin_journal()
        batch.on_commit(self._batch_committed)
        batch.on_abort(self._batch_aborted)

    def _batch_committed(self) -> None:
        self._index.commit_journal()
        self._open_batch = None
        changes, self._batch_changes = self._batch_changes, []
        if changes:
            for listener in self._change_listeners:
                listener(changes)

    def _batch_aborted(self) -> None:
        self._index.rollback_journal()
        self._current, self._compacted = self._revisions_before_batch
        self._open_batch = None
        self._batch_changes = []

    @contextmanager
    def _read_view(self) -> Iterator[ReadView]:
        assert self._open_batch is None, "a read inside a write batch of this store"
        with self._backend.read() as txn:
            yield ReadView(
                self._index, txn, self._backend.db(DB_KEY), self._compacted, self._current
            )


def _read_revision(txn: lmdb.Transaction, backend: Backend, key: bytes, default: int) -> int:
    raw = txn.get(key, db=backend.db(DB_META))
    return default if raw is None else int(_META_REVISION.unpack(raw)[0])


def _read_changes(cursor: lmdb.Cursor, end_revision: int, max_revisions: int) -> list[KeyValue]:
    """Decode DB_KEY records from the cursor's position on, up to ``end_revision``
    and for at most ``max_revisions`` main revisions."""
    changes: list[KeyValue] = []
    revisions = 0
    last_main = 0
    for raw_key, value in cursor.iternext():
        assert isinstance(raw_key, bytes) and isinstance(value, bytes), "opened without buffers"
        main = main_of(parse_revision_key(raw_key)[0])
        if main > end_revision:
            break
        if main != last_main:
            if revisions == max_revisions:
                break
            revisions += 1
            last_main = main
        kv = encoding.decode(value)
        assert kv.mod_revision == main, f"DB_KEY record of {main} says {kv.mod_revision}"
        changes.append(kv)
    return changes


def _stored_records(
    cursor: lmdb.Cursor, leases: dict[bytes, int]
) -> Iterator[tuple[bytes, int, bool, int, int]]:
    """(key, packed revision, is tombstone, create revision, version) of each
    DB_KEY record, in revision order. ``leases`` ends up holding the lease of every
    live key that has one: each record replaces what an older one said."""
    for raw_key, value in cursor:
        assert isinstance(raw_key, bytes) and isinstance(value, bytes), "opened without buffers"
        packed, tombstone = parse_revision_key(raw_key)
        key, created, version, lease = encoding.decode_meta(value)
        if lease:  # a tombstone carries no lease
            leases[key] = lease
        else:
            leases.pop(key, None)
        yield key, packed, tombstone, created, version
