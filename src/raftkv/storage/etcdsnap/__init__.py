"""Snapshots in etcd's own format: a bbolt database with etcd's buckets and the trailing
SHA-256, so etcd's tools read raftkv's snapshots and raftkv restores etcd's.

``bbolt`` is the file format (writer, reader, bbolt's consistency check), ``layout`` etcd's
buckets and record encodings, ``convert`` the mapping to and from raftkv's backend records,
``snapshot_file`` the operations (write from a backend, status, restore), ``cli`` the
``raftkv snapshot`` command. See docs/storage.md and docs/operations.md.
"""

from raftkv.storage.etcdsnap.errors import (
    EtcdSnapshotError,
    RestoreTargetError,
    SnapshotFormatError,
    SnapshotHashMismatchError,
    SnapshotIncompatibleError,
    SnapshotSaveError,
)
from raftkv.storage.etcdsnap.snapshot_file import (
    ExportSummary,
    RestoreOptions,
    RestoreSummary,
    SnapshotStatus,
    append_trailing_hash,
    backend_snapshot_chunks,
    export_backend_copy,
    restore_snapshot,
    snapshot_status,
    verify_trailing_hash,
    write_backend_snapshot,
)

__all__ = [
    "EtcdSnapshotError",
    "ExportSummary",
    "RestoreOptions",
    "RestoreSummary",
    "RestoreTargetError",
    "SnapshotFormatError",
    "SnapshotHashMismatchError",
    "SnapshotIncompatibleError",
    "SnapshotSaveError",
    "SnapshotStatus",
    "append_trailing_hash",
    "backend_snapshot_chunks",
    "export_backend_copy",
    "restore_snapshot",
    "snapshot_status",
    "verify_trailing_hash",
    "write_backend_snapshot",
]
