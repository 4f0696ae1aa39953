"""Storage-level views a request runs in (etcd ``server/storage/mvcc/kvstore_txn.go``).

A ``ReadView`` reads the index and an LMDB transaction as of one store
revision. A ``WriteView`` also writes: every change of one request goes to
main revision ``begin_revision + 1``, with sub revisions 0, 1, 2, ... in the
order the changes are made, and reads inside the request see its own earlier
changes (etcd's storeTxnWrite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import lmdb

from raftkv.storage.backend import DB_KEY, WriteBatch
from raftkv.storage.errors import CompactedError, FutureRevisionError
from raftkv.storage.mvcc import encoding
from raftkv.storage.mvcc.index import Index
from raftkv.storage.mvcc.revision import SUB_LIMIT, pack, revision_key
from raftkv.storage.mvcc.txn import KeyValue

NO_LEASE = 0


class LeaseAttachments(Protocol):
    """What the store tells the lessor about keys and leases (etcd's Attach/Detach
    from storeTxnWrite). ``raftkv.storage.lease.Lessor`` has this shape."""

    def lease_of(self, key: bytes) -> int: ...

    def attach(self, lease_id: int, key: bytes) -> None: ...

    def detach(self, lease_id: int, key: bytes) -> None: ...


@dataclass(slots=True)
class RangeResult:
    """etcd's mvcc.RangeResult: ``kvs`` in key order, ``count`` = keys in the
    range at the revision read, ``revision`` = the view's store revision."""

    kvs: list[KeyValue]
    count: int
    revision: int


def range_end_of(range_end: bytes) -> bytes | None:
    """The index's range end for a request's ``range_end`` (etcd's mkGteRange):
    b"" (one key) -> None; b"\\0" (every key >= key) -> b""; else unchanged."""
    if not range_end:
        return None
    if range_end == b"\0":
        return b""
    return range_end


class ReadView:
    def __init__(
        self,
        index: Index,
        txn: lmdb.Transaction,
        db: lmdb._Database,
        compacted_revision: int,
        revision: int,
    ) -> None:
        self.index = index
        self.txn = txn
        self.db = db
        self.compacted_revision = compacted_revision
        self._revision = revision

    @property
    def revision(self) -> int:
        """The store revision reads see (etcd's txn Rev())."""
        return self._revision

    def value_at(self, packed: int) -> KeyValue:
        """The KeyValue stored at a put's revision."""
        data = self.txn.get(revision_key(packed), db=self.db)
        assert data is not None, f"index revision {packed:#x} missing from DB_KEY"
        assert isinstance(data, bytes), "LMDB transactions are opened without buffers"
        return encoding.decode(data)

    def get(self, key: bytes) -> KeyValue | None:
        """The key's KeyValue at this view's revision, if it exists."""
        key_index = self.index.get(key)
        if key_index is None:
            return None
        packed = key_index.revision_at(self.revision)
        return None if packed is None else self.value_at(packed)

    def range_keys(
        self, key: bytes, end: bytes | None, at_revision: int, limit: int, count_only: bool
    ) -> RangeResult:
        """etcd's rangeKeys: the range as of ``at_revision`` (<= 0: this view's).

        FutureRevisionError past this view's revision, CompactedError below the
        compacted revision (a read *at* the compacted revision works).
        """
        current = self.revision
        if at_revision > current:
            raise FutureRevisionError()
        if at_revision <= 0:
            at_revision = current
        if at_revision < self.compacted_revision:
            raise CompactedError()
        if count_only:
            return RangeResult([], self.index.count(key, end, at_revision), current)
        revisions, total = self.index.revisions(key, end, at_revision, limit)
        return RangeResult([self.value_at(packed) for packed in revisions], total, current)


class WriteView(ReadView):
    def __init__(
        self,
        index: Index,
        batch: WriteBatch,
        db: lmdb._Database,
        compacted_revision: int,
        begin_revision: int,
        leases: LeaseAttachments | None,
    ) -> None:
        super().__init__(index, batch.txn, db, compacted_revision, begin_revision)
        self.batch = batch
        self.begin_revision = begin_revision
        self.leases = leases
        self.changes: list[KeyValue] = []  # tombstones have version 0
        # Set before the first write: a failure after it leaves the batch half
        # written, so the store dooms the batch (WriteBatch.fail).
        self.wrote = False

    @property
    def revision(self) -> int:
        return self.begin_revision + 1 if self.changes else self.begin_revision

    @property
    def write_revision(self) -> int:
        return self.begin_revision + 1

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        """etcd's storeTxnWrite.put."""
        main = self.write_revision
        packed = pack(main, len(self.changes))
        latest = self.index.latest(key)
        created, version = (main, 1) if latest is None else (latest[1], latest[2] + 1)
        kv = KeyValue(key, created, main, version, value, lease)
        self.wrote = True
        self.batch.put(DB_KEY, revision_key(packed), encoding.encode(kv))
        self.index.put(key, packed)
        self.changes.append(kv)
        if self.leases is not None:
            self._move_lease(key, lease)

    def delete_range(self, key: bytes, end: bytes | None) -> int:
        """Delete the keys of the range that exist now; how many were deleted."""
        keys = self.index.live_keys(key, end, self.revision)
        for live_key in keys:
            self.delete(live_key)
        return len(keys)

    def delete(self, key: bytes) -> None:
        """Write a tombstone for a live key (etcd's storeTxnWrite.delete)."""
        main = self.write_revision
        packed = pack(main, len(self.changes))
        self.wrote = True
        self.batch.put(
            DB_KEY, revision_key(packed, tombstone=True), encoding.encode_tombstone(key, main)
        )
        self.index.tombstone(key, packed)
        self.changes.append(KeyValue(key=key, mod_revision=main))
        if self.leases is not None:
            self._move_lease(key, NO_LEASE)

    def room_for_changes(self) -> int:
        """How many more changes fit in this revision's sub revisions."""
        return SUB_LIMIT - len(self.changes)

    def _move_lease(self, key: bytes, lease: int) -> None:
        leases = self.leases
        assert leases is not None
        old = leases.lease_of(key)
        if old != NO_LEASE:
            leases.detach(old, key)
        if lease != NO_LEASE:
            leases.attach(lease, key)


# Tells whether a lease exists (the lessor's lookup).
LeaseChecker = Callable[[int], bool]
