"""Durable Raft state: the WAL and snapshot files, mirrored in the MemoryStorage the core reads.

This is the persistence half of the Ready loop. ``save`` writes a Ready's
snapshot, entries and hard state, ``sync`` makes them durable with one
fdatasync, and only then does ``apply_to_memory`` show them to the core.
The server (and the simulator, over ``SimDisk``) calls them in that order;
``persist`` does all three for one Ready.

On restart, ``open`` replays the WAL from its snapshot marker and rebuilds
exactly the MemoryStorage that had been persisted.
"""

from __future__ import annotations

from raftkv.raft.messages import ConfState, HardState, Index, Snapshot, SnapshotMetadata
from raftkv.raft.rawnode import Ready
from raftkv.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM, MemoryStorage
from raftkv.storage.disk import Disk, join
from raftkv.storage.snap import Snapshotter
from raftkv.storage.wal import WAL, build_memory_storage

WAL_DIR = "wal"
SNAP_DIR = "snap"


class RaftPersistence:
    def __init__(
        self, disk: Disk, directory: str, wal: WAL, snapshotter: Snapshotter, storage: MemoryStorage
    ) -> None:
        self.disk = disk
        self.directory = directory
        self.wal = wal
        self.snapshotter = snapshotter
        self.storage = storage

    # -- Opening --------------------------------------------------------------------

    @staticmethod
    def exists(disk: Disk, directory: str) -> bool:
        return disk.exists(join(directory, WAL_DIR))

    @classmethod
    def _create(cls, disk: Disk, directory: str, segment_bytes: int | None) -> RaftPersistence:
        disk.makedirs(directory)
        snap_dir = join(directory, SNAP_DIR)
        disk.makedirs(snap_dir)
        wal = WAL.create(disk, join(directory, WAL_DIR), **_segment_option(segment_bytes))
        return cls(disk, directory, wal, Snapshotter(disk, snap_dir), MemoryStorage())

    @classmethod
    def bootstrap(
        cls,
        disk: Disk,
        directory: str,
        conf_state: ConfState,
        data: bytes = b"",
        segment_bytes: int | None = None,
    ) -> RaftPersistence:
        """A founding member of a new cluster: the first configuration in a snapshot at index 1."""
        persistence = cls._create(disk, directory, segment_bytes)
        metadata = SnapshotMetadata(
            index=BOOTSTRAP_INDEX, term=BOOTSTRAP_TERM, conf_state=conf_state
        )
        snapshot = Snapshot(metadata=metadata, data=data)
        hard_state = HardState(term=BOOTSTRAP_TERM, commit=BOOTSTRAP_INDEX)
        persistence.snapshotter.save(snapshot)
        persistence.wal.save_snapshot_marker(BOOTSTRAP_INDEX, BOOTSTRAP_TERM)
        persistence.wal.save(hard_state, [])
        persistence.wal.sync()
        persistence.storage.apply_snapshot(snapshot)
        persistence.storage.set_hard_state(hard_state)
        return persistence

    @classmethod
    def create_empty(
        cls, disk: Disk, directory: str, segment_bytes: int | None = None
    ) -> RaftPersistence:
        """A member joining an existing cluster: it learns everything from the leader."""
        persistence = cls._create(disk, directory, segment_bytes)
        persistence.wal.sync()
        return persistence

    @classmethod
    def open(cls, disk: Disk, directory: str, segment_bytes: int | None = None) -> RaftPersistence:
        """Recover after a restart or crash. Raises CorruptionError naming file and offset."""
        snapshotter = Snapshotter(disk, join(directory, SNAP_DIR))
        wal, replay = WAL.open(disk, join(directory, WAL_DIR), **_segment_option(segment_bytes))
        marker = replay.marker
        # Only the snapshot the WAL names: a newer file without a marker is a
        # leftover of a crash between the two writes.
        snapshot = snapshotter.load(marker.index, marker.term) if marker.index else None
        storage = build_memory_storage(replay, snapshot)
        return cls(disk, directory, wal, snapshotter, storage)

    # -- The Ready loop's persistence ---------------------------------------------------

    def save(self, ready: Ready) -> None:
        """Write (not yet durable) the Ready's snapshot, entries and hard state, in that order."""
        if ready.snapshot is not None:
            meta = ready.snapshot.metadata
            self.snapshotter.save(ready.snapshot)
            self.wal.save_snapshot_marker(meta.index, meta.term)
        if ready.entries or ready.hard_state is not None:
            self.wal.save(ready.hard_state, ready.entries)

    def sync(self) -> None:
        """One fdatasync for everything saved so far (group commit)."""
        self.wal.sync()

    def apply_to_memory(self, ready: Ready) -> None:
        """After sync: the core may now read what the Ready persisted."""
        if ready.snapshot is not None:
            self.storage.apply_snapshot(ready.snapshot)
        self.storage.append(ready.entries)
        if ready.hard_state is not None:
            self.storage.set_hard_state(ready.hard_state)

    def persist(self, ready: Ready) -> None:
        self.save(ready)
        if ready.must_sync:
            self.sync()
        self.apply_to_memory(ready)

    # -- Compaction -------------------------------------------------------------------

    def compact(
        self, applied_index: Index, conf_state: ConfState, data: bytes, keep_entries: int
    ) -> Snapshot:
        """Snapshot the applied state, then release log entries it covers.

        ``keep_entries`` entries before the snapshot stay in memory so a
        slightly lagging follower catches up from the log, not a snapshot.
        """
        snapshot = self.storage.create_snapshot(applied_index, conf_state, data)
        self.snapshotter.save(snapshot)
        self.wal.save_snapshot_marker(applied_index, snapshot.metadata.term)
        self.wal.sync()
        compact_index = applied_index - keep_entries
        if compact_index > self.storage.first_index() - 1:
            self.storage.compact(compact_index)
        self.wal.release_to(applied_index)
        self.snapshotter.purge()
        return snapshot

    def close(self) -> None:
        self.wal.close()


def _segment_option(segment_bytes: int | None) -> dict[str, int]:
    return {} if segment_bytes is None else {"segment_bytes": segment_bytes}
