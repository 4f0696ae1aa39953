"""The write-ahead log: segment files of CRC-checked records (see docs/storage.md)."""

from raftkv.storage.wal.replay import (
    Replay,
    SnapshotMarker,
    SnapshotMismatchError,
    build_memory_storage,
)
from raftkv.storage.wal.wal import WAL, WALExistsError, WALNotFoundError, wal_exists

__all__ = [
    "WAL",
    "Replay",
    "SnapshotMarker",
    "SnapshotMismatchError",
    "WALExistsError",
    "WALNotFoundError",
    "build_memory_storage",
    "wal_exists",
]
