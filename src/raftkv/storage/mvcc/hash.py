"""Consistency hashes (etcd ``server/storage/mvcc/hash.go`` and backend.Hash).

``hash_kv`` is etcd's HashByRev: a CRC32 over the DB_KEY records of revisions
up to ``revision`` that a compaction at ``revision`` would keep, so replicas
with the same history agree even if they compacted at different points.
``hash_backend`` is etcd's Hash: every named database, for tests.

The CRC is zlib's CRC-32 (IEEE), not etcd's Castagnoli: the standard library
has no CRC-32C, and the bytes hashed (our DB_KEY encoding) differ from
etcd's anyway, so the values are comparable between raftkv members only.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import lmdb

from raftkv.storage.backend import (
    DATABASES,
    DB_KEY,
    DB_META,
    META_CONSISTENT_INDEX,
    Backend,
)
from raftkv.storage.mvcc.revision import main_of, parse_revision_key


class KeyValueHash(NamedTuple):
    """etcd's HashKV answer: the hash, the compacted revision it assumed, and the
    revision it covers."""

    hash: int
    compact_revision: int
    hash_revision: int


def hash_kv(
    txn: lmdb.Transaction,
    db: lmdb._Database,
    compacted_revision: int,
    revision: int,
    keep: set[int],
) -> KeyValueHash:
    """Hash DB_KEY up to ``revision``. ``keep`` is Index.keep(revision): records at
    or below the compacted revision count only if kept (unless nothing is kept,
    as in etcd)."""
    crc = zlib.crc32(DB_KEY)  # etcd starts with the bucket name
    with txn.cursor(db=db) as cursor:
        for key, value in cursor:
            assert isinstance(key, bytes), "LMDB transactions are opened without buffers"
            packed, tombstone = parse_revision_key(key)
            main = main_of(packed)
            if main > revision:
                break  # DB_KEY is in revision order
            if main <= compacted_revision and keep and packed not in keep:
                continue
            # etcd <= 3.5.15 deleted a tombstone at the compacted revision and
            # newer versions keep it; the hash skips it so both agree.
            if main == compacted_revision and tombstone:
                continue
            crc = zlib.crc32(value, zlib.crc32(key, crc))
    return KeyValueHash(crc & 0xFFFFFFFF, compacted_revision, revision)


def hash_backend(backend: Backend) -> int:
    """CRC32 over every database, in name order: the name, then each key and
    value. The consistent index is left out: it says how far this member has
    applied the log, which is not part of the replicated state."""
    crc = 0
    with backend.read() as txn:
        for name in sorted(DATABASES):
            crc = zlib.crc32(name, crc)
            with txn.cursor(db=backend.db(name)) as cursor:
                for key, value in cursor:
                    if name == DB_META and key == META_CONSISTENT_INDEX:
                        continue
                    crc = zlib.crc32(value, zlib.crc32(key, crc))
    return crc & 0xFFFFFFFF
