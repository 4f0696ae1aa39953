"""The write-ahead log: Raft entries, hard state and snapshot markers in segment files.

Usage by the Ready loop (group commit)::

    wal, replay = WAL.open(disk, directory)       # or WAL.create(...) once
    for ready in readies:                         # any number of Readies ...
        if ready.snapshot is not None:            # the file first, then its marker
            snapshotter.save(ready.snapshot)
            meta = ready.snapshot.metadata
            wal.save_snapshot_marker(meta.index, meta.term)
        wal.save(ready.hard_state, ready.entries) # one write call per save
    wal.sync()                                    # ... then one fdatasync for all
    # only now send persisted_messages and advance()

Every segment starts with a head: METADATA (format version, seq, first index),
the current snapshot marker and the current hard state. With those copies,
removing old segments (``release_to``) never loses the latest marker or hard
state. A segment is synced before the next one is created, so only the last
segment can have a torn tail (see ``segment.py`` for the torn-tail rule).

After any DiskError the WAL refuses further use: once a write or an fsync has
failed, what reached the disk is unknown, and retrying an fsync can report
success for data the kernel already dropped. The node must restart and replay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from raftkv import limits
from raftkv.raft.messages import Entry, HardState, Index, Term
from raftkv.storage.disk import Disk, DiskFile, join
from raftkv.storage.errors import CorruptionError, DiskError, StorageError
from raftkv.storage.wal.record import (
    HEADER_BYTES,
    Record,
    RecordFormatError,
    RecordType,
    SegmentMetadata,
    decode_entry,
    decode_hard_state,
    decode_metadata,
    decode_snapshot_marker,
    encode_entry,
    encode_hard_state,
    encode_metadata,
    encode_record,
    encode_snapshot_marker,
)
from raftkv.storage.wal.replay import Replay, ReplayBuilder, SnapshotMarker
from raftkv.storage.wal.segment import (
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    ScanCorruption,
    SegmentName,
    parse_segment_name,
    scan_segment,
)
from raftkv.storage.wal.terms import TermRuns

_log = logging.getLogger(__name__)

# Room for the segment head (about 112 bytes) and more: a smaller size would
# cut a new segment on every save.
_MIN_SEGMENT_BYTES = 16 * HEADER_BYTES


class WALExistsError(StorageError):
    """WAL.create found segment files already in the directory."""


class WALNotFoundError(StorageError):
    """WAL.open found no segment files in the directory."""


@dataclass(frozen=True, slots=True)
class _Segment:
    name: SegmentName
    path: str


def wal_exists(disk: Disk, directory: str) -> bool:
    if not disk.exists(directory):
        return False
    return any(parse_segment_name(name) for name in disk.list_dir(directory))


class WAL:
    """Appends records to the last segment; created by ``create`` or ``open`` only."""

    def __init__(
        self,
        disk: Disk,
        directory: str,
        replay: Replay,
        segments: list[_Segment],
        segment_bytes: int,
    ) -> None:
        assert segment_bytes >= _MIN_SEGMENT_BYTES, segment_bytes
        self._disk = disk
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._segments = segments
        self._file: DiskFile | None = None
        self._reserved_bytes = 0  # the length the open segment was preallocated to
        self._marker = replay.marker
        self._durable_marker = replay.marker  # the marker as of the last sync
        self._hard_state = replay.hard_state
        self._terms = TermRuns(replay.marker.index, replay.marker.term)
        self._terms.append(replay.entries)
        assert self._terms.last_index == replay.last_index
        self._failure = ""

    # -- Construction ---------------------------------------------------------

    @classmethod
    def create(
        cls, disk: Disk, directory: str, *, segment_bytes: int = limits.WAL_SEGMENT_BYTES
    ) -> WAL:
        """A new, empty WAL in directory (created if missing)."""
        disk.makedirs(directory)
        if wal_exists(disk, directory):
            raise WALExistsError(f"{directory} already holds a WAL")
        empty = Replay(SnapshotMarker(), HardState(), [])
        wal = cls(disk, directory, empty, [], segment_bytes)
        wal._file = wal._create_segment(SegmentName(seq=0, first_index=1), previous_bytes=0)
        return wal

    @classmethod
    def open(
        cls, disk: Disk, directory: str, *, segment_bytes: int = limits.WAL_SEGMENT_BYTES
    ) -> tuple[WAL, Replay]:
        """Replay every segment, repair a torn tail, and open the last segment for appending."""
        segments = _list_segments(disk, directory)
        builder = ReplayBuilder()
        previous: tuple[_Segment, int] | None = None  # and its size
        for position, segment in enumerate(segments):
            is_last = position == len(segments) - 1
            scanned = _replay_segment(disk, segment, builder, is_last=is_last)
            if previous is not None:
                _check_previous_size(*previous, scanned.metadata, segment)
            previous = (segment, scanned.file_bytes)
        replay = builder.finish(directory)
        wal = cls(disk, directory, replay, segments, segment_bytes)
        wal._file = disk.open_append(segments[-1].path)
        if wal._file.size > scanned.valid_bytes:
            wal._file.truncate(scanned.valid_bytes)
        wal._reserve(wal._file, 0)
        # What we replayed may still sit only in the page cache (the previous
        # process died before its fsync). Make it durable before the node acts
        # on it, e.g. acknowledges entries to a leader that then counts them.
        wal._file.sync()
        disk.sync_dir(directory)
        return wal, replay

    # -- Writing ----------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def last_index(self) -> Index:
        return self._terms.last_index

    @property
    def marker(self) -> SnapshotMarker:
        return self._marker

    @property
    def segment_paths(self) -> list[str]:
        return [segment.path for segment in self._segments]

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Append entries, then the hard state, in one write; durable after sync()."""
        if hard_state is None and not entries:
            return
        self._check_entries(entries)
        records = [encode_record(RecordType.ENTRY, encode_entry(entry)) for entry in entries]
        if hard_state is not None:
            # After the entries: a torn write never leaves a commit index
            # pointing past the durable entries.
            records.append(encode_record(RecordType.HARD_STATE, encode_hard_state(hard_state)))
        self._append(b"".join(records))
        self._terms.append(entries)
        if hard_state is not None:
            self._hard_state = hard_state
            assert hard_state.commit <= self._terms.last_index, (hard_state, self.last_index)

    def save_snapshot_marker(self, index: Index, term: Term) -> None:
        """Record that the snapshot (index, term) is durable; write its file first."""
        assert index > self._marker.index, (index, self._marker)
        assert term >= self._marker.term, (term, self._marker)
        # A snapshot that matches our log is local; any other came from a
        # leader and replaced the log (Raft.restore installs only those).
        replaces_log = self._terms.term_at(index) != term
        payload = encode_snapshot_marker(index, term, replaces_log)
        self._append(encode_record(RecordType.SNAPSHOT, payload))
        replaced = self._terms.snapshot(index, term)
        assert replaced == replaces_log
        self._marker = SnapshotMarker(index=index, term=term)

    def sync(self) -> None:
        """One fdatasync for everything saved since the last sync (group commit)."""
        file = self._usable_file()
        with self._fatal_on_disk_error():
            file.sync()
        self._durable_marker = self._marker

    def release_to(self, index: Index) -> int:
        """Remove segments whose entries are all below index; returns how many.

        Call after a snapshot at or above index is durable and its marker synced.
        The segment holding index, and every later one, is kept.
        """
        self._usable_file()
        assert index <= self._durable_marker.index, (index, self._durable_marker)
        removed = 0
        # Segment k holds only entries < first_index of segment k + 1.
        while len(self._segments) > 1 and self._segments[1].name.first_index <= index:
            segment = self._segments.pop(0)
            # One directory sync per removal: a crash leaves the oldest segments
            # removed and never a hole, which open() would report as corruption.
            with self._fatal_on_disk_error():
                self._disk.remove(segment.path)
                self._disk.sync_dir(self._directory)
            removed += 1
        return removed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- Internals --------------------------------------------------------------

    def _check_entries(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        assert first > self._marker.index, (first, self._marker)
        assert first <= self.last_index + 1, f"gap: entry {first} after last {self.last_index}"
        assert entries[0].term >= (self._terms.term_at(first - 1) or 0), "terms decrease"
        for previous, entry in zip(entries, entries[1:], strict=False):
            assert entry.index == previous.index + 1, (previous.index, entry.index)
            assert entry.term >= previous.term, (previous, entry)

    def _usable_file(self) -> DiskFile:
        if self._failure:
            raise DiskError(f"WAL {self._directory} is unusable after: {self._failure}")
        assert self._file is not None, "WAL is closed"
        return self._file

    @contextmanager
    def _fatal_on_disk_error(self) -> Iterator[None]:
        try:
            yield
        except DiskError as exc:
            # Fatal: a failed write or fsync may have lost data the caller
            # believes is durable, and a retried fsync can falsely succeed.
            _log.critical(
                "WAL %s: fatal disk error, refusing further writes: %s", self.directory, exc
            )
            self._failure = str(exc)
            raise

    def _append(self, data: bytes) -> None:
        assert data
        file = self._usable_file()
        with self._fatal_on_disk_error():
            if file.size >= self._segment_bytes:
                self._cut()
                file = self._usable_file()
            self._reserve(file, len(data))
            file.write(data)

    def _cut(self) -> None:
        """Finish the current segment and start the next one."""
        assert self._file is not None
        # The old segment must be complete on disk before a later one exists:
        # that is what confines torn writes to the last segment.
        self._file.sync()
        previous_bytes = self._file.size
        self._file.close()
        previous = self._segments[-1].name
        name = SegmentName(seq=previous.seq + 1, first_index=self.last_index + 1)
        self._file = self._create_segment(name, previous_bytes)
        self._durable_marker = self._marker

    def _create_segment(self, name: SegmentName, previous_bytes: int) -> DiskFile:
        """Write the head to a temp file, sync it, and rename it into place."""
        path = join(self._directory, name.file_name())
        temp_path = path + TEMP_SUFFIX
        metadata = encode_metadata(SegmentMetadata(name.seq, name.first_index, previous_bytes))
        # The copy repeats the current marker; replay skips a marker equal to
        # its own, and the flag matters only for a new one.
        marker = encode_snapshot_marker(self._marker.index, self._marker.term, False)
        head = b"".join(
            (
                encode_record(RecordType.METADATA, metadata),
                encode_record(RecordType.SNAPSHOT, marker),
                encode_record(RecordType.HARD_STATE, encode_hard_state(self._hard_state)),
            )
        )
        temp = self._disk.create(temp_path)
        temp.write(head)
        temp.sync()
        temp.close()
        self._disk.rename(temp_path, path)
        self._disk.sync_dir(self._directory)
        self._segments.append(_Segment(name, path))
        file = self._disk.open_append(path)
        self._reserved_bytes = 0
        self._reserve(file, 0)
        return file

    def _reserve(self, file: DiskFile, incoming_bytes: int) -> None:
        """Keep the file's length WAL_PREALLOCATE_BYTES ahead of its data: an append inside
        it syncs faster (disk.OsFile). The zeros past the data end the scan on open; a cut
        or a close gives the space back."""
        end = file.size + incoming_bytes
        if end > self._reserved_bytes:
            self._reserved_bytes = end + limits.WAL_PREALLOCATE_BYTES
            file.preallocate(self._reserved_bytes)


# -- Opening --------------------------------------------------------------------


def _list_segments(disk: Disk, directory: str) -> list[_Segment]:
    """The segments in seq order; removes leftovers of an interrupted segment creation."""
    if not disk.exists(directory):
        raise WALNotFoundError(f"{directory} does not exist")
    segments: list[_Segment] = []
    temp_removed = False
    for file_name in disk.list_dir(directory):
        path = join(directory, file_name)
        name = parse_segment_name(file_name)
        if name is not None:
            segments.append(_Segment(name, path))
        elif file_name.endswith(SEGMENT_SUFFIX + TEMP_SUFFIX):
            _log.warning("WAL %s: removing unfinished segment %s", directory, file_name)
            disk.remove(path)
            temp_removed = True
        elif file_name.endswith(SEGMENT_SUFFIX):
            raise CorruptionError(path, 0, "not a valid WAL segment name")
    if temp_removed:
        disk.sync_dir(directory)
    if not segments:
        raise WALNotFoundError(f"{directory} holds no WAL segments")
    segments.sort(key=lambda segment: segment.name.seq)
    for previous, segment in zip(segments, segments[1:], strict=False):
        if segment.name.seq != previous.name.seq + 1:
            detail = f"segment seq {previous.name.seq + 1} is missing"
            raise CorruptionError(segment.path, 0, detail)
    return segments


@dataclass(frozen=True, slots=True)
class _ScannedSegment:
    metadata: SegmentMetadata
    file_bytes: int
    valid_bytes: int  # the size after truncating a torn tail


def _replay_segment(
    disk: Disk, segment: _Segment, builder: ReplayBuilder, *, is_last: bool
) -> _ScannedSegment:
    """Feed a segment's records to builder."""
    data = disk.read(segment.path)
    try:
        scan = scan_segment(data, is_last=is_last)
    except ScanCorruption as exc:
        raise CorruptionError(segment.path, exc.offset, exc.detail) from None
    metadata = _check_head(segment, [scanned.record for scanned in scan.records[:3]])
    for scanned in scan.records[1:]:
        try:
            _replay_record(builder, scanned.record, segment.path, scanned.offset)
        except RecordFormatError as exc:
            raise CorruptionError(segment.path, scanned.offset, str(exc)) from None
    if scan.torn_detail:
        assert is_last
        _log.warning(
            "WAL %s: truncating torn tail at offset %d (%d bytes dropped): %s",
            segment.path,
            scan.valid_bytes,
            len(data) - scan.valid_bytes,
            scan.torn_detail,
        )
    return _ScannedSegment(metadata, len(data), scan.valid_bytes)


def _check_previous_size(
    previous: _Segment, previous_bytes: int, metadata: SegmentMetadata, segment: _Segment
) -> None:
    if previous_bytes != metadata.previous_segment_bytes:
        detail = (
            f"segment is {previous_bytes} bytes, but was {metadata.previous_segment_bytes} "
            f"when {segment.name.file_name()} was created"
        )
        offset = min(previous_bytes, metadata.previous_segment_bytes)
        raise CorruptionError(previous.path, offset, detail)


def _check_head(segment: _Segment, head: list[Record]) -> SegmentMetadata:
    expected = [RecordType.METADATA, RecordType.SNAPSHOT, RecordType.HARD_STATE]
    if [record.type for record in head] != expected:
        found = ", ".join(record.type.name for record in head) or "nothing"
        raise CorruptionError(segment.path, 0, f"segment head is {found}, expected metadata")
    try:
        metadata = decode_metadata(head[0].payload)
    except RecordFormatError as exc:
        raise CorruptionError(segment.path, 0, str(exc)) from None
    if (metadata.seq, metadata.first_index) != (segment.name.seq, segment.name.first_index):
        detail = (
            f"metadata says seq {metadata.seq} first index {metadata.first_index}, "
            "unlike the file name"
        )
        raise CorruptionError(segment.path, 0, detail)
    return metadata


def _replay_record(builder: ReplayBuilder, record: Record, path: str, offset: int) -> None:
    match record.type:
        case RecordType.ENTRY:
            builder.add_entry(decode_entry(record.payload), path, offset)
        case RecordType.HARD_STATE:
            builder.add_hard_state(decode_hard_state(record.payload))
        case RecordType.SNAPSHOT:
            index, term, replaces_log = decode_snapshot_marker(record.payload)
            marker = SnapshotMarker(index=index, term=term)
            builder.add_marker(marker, replaces_log, path, offset)
        case RecordType.METADATA:
            raise CorruptionError(path, offset, "metadata record after the segment head")
