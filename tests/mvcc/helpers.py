"""A small client over KVStore for tests: one request per write batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from raftkv.storage.backend import DB_KEY, Backend
from raftkv.storage.mvcc import (
    CompactionResponse,
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KVStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.mvcc.revision import main_of, parse_revision_key

MIB = 1024 * 1024
# Leases the tests' lease checker knows.
KNOWN_LEASES = frozenset({7, 8})


# Whether open_backend batches commits as a member does (tests/mvcc/conftest.py runs every
# MVCC test both ways).
BATCH_COMMITS = {"enabled": False}


def open_backend(
    directory: str, map_size_bytes: int = 64 * MIB, batch_commits: bool | None = None
) -> Backend:
    return Backend(
        directory,
        map_size_bytes=map_size_bytes,
        sync=False,
        batch_commits=BATCH_COMMITS["enabled"] if batch_commits is None else batch_commits,
    )


class KV:
    def __init__(self, backend: Backend, **store_options: Any) -> None:
        store_options.setdefault("lease_checker", KNOWN_LEASES.__contains__)
        self.backend = backend
        self.store_options = store_options
        self.store = KVStore(backend, **store_options)

    def restart(self) -> None:
        """Close the backend and open it and a new store again, as a restart does."""
        directory, map_size = self.backend.directory, self.backend.map_size_bytes
        self.backend.close()
        self.backend = open_backend(directory, map_size)
        self.store = KVStore(self.backend, **self.store_options)

    def put(self, key: bytes, value: bytes = b"", **options: Any) -> PutResponse:
        with self.backend.write() as batch:
            return self.store.put(batch, PutRequest(key, value, **options))

    def delete(
        self, key: bytes, range_end: bytes = b"", prev_kv: bool = False
    ) -> DeleteRangeResponse:
        with self.backend.write() as batch:
            return self.store.delete_range(batch, DeleteRangeRequest(key, range_end, prev_kv))

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[RequestOp] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        with self.backend.write() as batch:
            return self.store.txn(batch, TxnRequest(tuple(compare), tuple(success), tuple(failure)))

    def compact(self, revision: int) -> CompactionResponse:
        with self.backend.write() as batch:
            return self.store.compact(batch, revision)

    def get(self, key: bytes, **options: Any) -> RangeResponse:
        return self.store.range(RangeRequest(key, **options))

    def pairs(
        self, key: bytes = b"\0", range_end: bytes = b"\0", revision: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) of the range at a revision."""
        response = self.get(key, range_end=range_end, revision=revision)
        return [(kv.key, kv.value) for kv in response.kvs]

    def stored_revisions(self) -> list[tuple[int, bool]]:
        """(main revision, is tombstone) of every DB_KEY record."""
        found = []
        with self.backend.read() as txn, txn.cursor(db=self.backend.db(DB_KEY)) as cursor:
            for key, _value in cursor:
                packed, tombstone = parse_revision_key(bytes(key))
                found.append((main_of(packed), tombstone))
        return found
