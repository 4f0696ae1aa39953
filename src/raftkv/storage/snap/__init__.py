"""Raft snapshot files and snapshot streaming (see docs/storage.md)."""

from raftkv.storage.snap.snapshotter import (
    SnapshotNotFoundError,
    SnapshotReceiver,
    Snapshotter,
    chunks,
    decode_snapshot,
    encode_snapshot,
)

__all__ = [
    "SnapshotNotFoundError",
    "SnapshotReceiver",
    "Snapshotter",
    "chunks",
    "decode_snapshot",
    "encode_snapshot",
]
