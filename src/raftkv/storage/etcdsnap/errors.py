"""Errors of the etcd snapshot format: every one names the file or the record at fault."""

from __future__ import annotations


class EtcdSnapshotError(Exception):
    """Base: a snapshot file could not be read, written or restored."""


class SnapshotFormatError(EtcdSnapshotError):
    """The file is not a bbolt database with etcd's layout, or it is damaged."""


class SnapshotHashMismatchError(EtcdSnapshotError):
    """The trailing SHA-256 does not match the database, or it is missing."""


class SnapshotIncompatibleError(EtcdSnapshotError):
    """The snapshot holds something raftkv cannot serve faithfully (e.g. orphan lease keys)."""


class RestoreTargetError(EtcdSnapshotError):
    """The restore's data directory is not empty, or the restore flags are wrong."""


class SnapshotSaveError(EtcdSnapshotError):
    """Fetching a snapshot from a member failed."""
