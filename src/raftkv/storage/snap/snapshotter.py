"""Raft snapshot files: atomic save, verified load, purge, and chunked streaming.

File format (integers little-endian), also the byte stream sent to a follower::

    0        8         12      20      28        32         36
    +--------+---------+-------+-------+---------+----------+------------+----------+
    | magic  | version | index | term  | voters  | learners | voter ids  | learner  |
    | 8 B    | u32     | u64   | u64   | count   | count    | u64 each   | ids u64  |
    +--------+---------+-------+-------+---------+----------+------------+----------+
    | data length u64 | data (the state machine image) | sha256 of all bytes before |
    +-----------------+--------------------------------+----------------------------+

A file is named ``{term:016x}-{index:016x}.snap`` and written atomically:
temp file, write, fdatasync, rename, fsync of the directory. A reader thus
sees either no file or a complete one; a checksum mismatch is corruption of
durable bytes, not a torn write.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from raftkv import limits
from raftkv.raft.messages import ConfState, Index, Snapshot, SnapshotMetadata, Term
from raftkv.storage.disk import Disk, join
from raftkv.storage.errors import CorruptionError, StorageError

MAGIC = b"RKVSNAP\x00"
FORMAT_VERSION = 1
SNAP_SUFFIX = ".snap"
TEMP_SUFFIX = ".tmp"
_PREFIX = struct.Struct("<8sIQQII")
_NODE_ID = struct.Struct("<Q")
_DATA_LENGTH = struct.Struct("<Q")
CHECKSUM_BYTES = hashlib.sha256().digest_size
_SNAP_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")

assert _PREFIX.size == 36
assert CHECKSUM_BYTES == 32


class SnapshotNotFoundError(StorageError):
    """The snapshot file the WAL names is not in the snapshot directory."""


# -- Encoding (pure) ----------------------------------------------------------


def _encode_header(snapshot: Snapshot) -> bytes:
    meta = snapshot.metadata
    voters = sorted(meta.conf_state.voters)
    learners = sorted(meta.conf_state.learners)
    assert len(voters) + len(learners) <= limits.SNAPSHOT_MAX_CONF_NODES
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, meta.index, meta.term, len(voters), len(learners))]
    parts.extend(_NODE_ID.pack(node) for node in voters + learners)
    parts.append(_DATA_LENGTH.pack(len(snapshot.data)))
    return b"".join(parts)


def _pieces(snapshot: Snapshot) -> tuple[bytes, bytes, bytes]:
    """(header, data, checksum): the file is their concatenation, never built in one copy."""
    header = _encode_header(snapshot)
    digest = hashlib.sha256(header)
    digest.update(snapshot.data)
    checksum = digest.digest()
    assert len(header) + len(snapshot.data) + len(checksum) <= limits.SNAPSHOT_MAX_BYTES
    return header, snapshot.data, checksum


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return b"".join(_pieces(snapshot))


def chunks(snapshot: Snapshot, chunk_bytes: int = limits.SNAPSHOT_CHUNK_BYTES) -> Iterator[bytes]:
    """The encoded file as a stream of chunks of at most chunk_bytes each."""
    assert 0 < chunk_bytes <= limits.SNAPSHOT_CHUNK_BYTES, chunk_bytes
    pending = bytearray()
    for piece in _pieces(snapshot):
        view = memoryview(piece)
        while view:
            take = chunk_bytes - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) == chunk_bytes:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)


# -- Decoding (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    metadata: SnapshotMetadata
    size: int  # header bytes
    data_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.size + self.data_bytes + CHECKSUM_BYTES


def _parse_header(buffer: bytes | bytearray, source: str) -> _Header | None:
    """The header, None if buffer is too short to hold it; CorruptionError if invalid."""
    if len(buffer) < _PREFIX.size:
        return None
    magic, version, index, term, voter_count, learner_count = _PREFIX.unpack_from(buffer)
    if magic != MAGIC:
        raise CorruptionError(source, 0, "not a raftkv snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptionError(source, 8, f"snapshot format version {version}, expected 1")
    node_count = voter_count + learner_count
    if node_count > limits.SNAPSHOT_MAX_CONF_NODES:
        raise CorruptionError(source, 28, f"{node_count} nodes in the configuration")
    size = _PREFIX.size + node_count * _NODE_ID.size + _DATA_LENGTH.size
    if len(buffer) < size:
        return None
    ids = [_NODE_ID.unpack_from(buffer, _PREFIX.size + i * 8)[0] for i in range(node_count)]
    (data_bytes,) = _DATA_LENGTH.unpack_from(buffer, size - _DATA_LENGTH.size)
    if size + data_bytes + CHECKSUM_BYTES > limits.SNAPSHOT_MAX_BYTES:
        raise CorruptionError(source, size - 8, f"data length {data_bytes} exceeds the limit")
    conf_state = _conf_state(ids[:voter_count], ids[voter_count:], source)
    metadata = SnapshotMetadata(index=index, term=term, conf_state=conf_state)
    return _Header(metadata, size, data_bytes)


def _conf_state(voters: list[int], learners: list[int], source: str) -> ConfState:
    # Checked after the checksum by decode_snapshot; a stream reaches here first,
    # so bad ids are reported rather than tripping ConfState's asserts.
    if 0 in voters or 0 in learners or set(voters) & set(learners):
        raise CorruptionError(source, _PREFIX.size, "invalid node ids in the configuration")
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))


def decode_snapshot(blob: bytes | bytearray, source: str) -> Snapshot:
    """Verify and decode a whole snapshot file or stream; source names it in errors."""
    if len(blob) < _PREFIX.size + _DATA_LENGTH.size + CHECKSUM_BYTES:
        raise CorruptionError(source, len(blob), f"{len(blob)} bytes is too short for a snapshot")
    checksum_offset = len(blob) - CHECKSUM_BYTES
    view = memoryview(blob)
    if hashlib.sha256(view[:checksum_offset]).digest() != bytes(view[checksum_offset:]):
        raise CorruptionError(source, checksum_offset, "snapshot checksum mismatch")
    header = _parse_header(blob, source)
    if header is None or header.total_bytes != len(blob):
        expected = "?" if header is None else str(header.total_bytes)
        raise CorruptionError(source, 0, f"snapshot is {len(blob)} bytes, header says {expected}")
    data = bytes(view[header.size : header.size + header.data_bytes])
    return Snapshot(metadata=header.metadata, data=data)


# -- Files --------------------------------------------------------------------


def snapshot_file_name(term: Term, index: Index) -> str:
    return f"{term:016x}-{index:016x}{SNAP_SUFFIX}"


def _parse_snap_name(name: str) -> tuple[Index, Term] | None:
    """(index, term) of a snapshot file name, ordered so that max() is the newest."""
    match = _SNAP_NAME.match(name)
    if match is None:
        return None
    return int(match.group(2), 16), int(match.group(1), 16)


class Snapshotter:
    """Snapshot files in one directory, all through the injected Disk."""

    def __init__(self, disk: Disk, directory: str) -> None:
        self._disk = disk
        self._directory = directory

    @property
    def directory(self) -> str:
        return self._directory

    def save(self, snapshot: Snapshot) -> str:
        """Write the snapshot atomically; returns its path. Durable when this returns."""
        meta = snapshot.metadata
        assert not snapshot.is_empty, "an empty snapshot is never saved"
        assert meta.term >= 1, meta
        self._disk.makedirs(self._directory)
        path = join(self._directory, snapshot_file_name(meta.term, meta.index))
        temp_path = path + TEMP_SUFFIX
        file = self._disk.create(temp_path)
        try:
            for piece in _pieces(snapshot):
                if piece:
                    file.write(piece)
            file.sync()
        finally:
            file.close()
        self._disk.rename(temp_path, path)
        self._disk.sync_dir(self._directory)
        return path

    def names(self) -> list[str]:
        """Snapshot file names, oldest first."""
        if not self._disk.exists(self._directory):
            return []
        found = [
            (key, name)
            for name in self._disk.list_dir(self._directory)
            if (key := _parse_snap_name(name)) is not None
        ]
        return [name for _, name in sorted(found)]

    def load(self, index: Index, term: Term) -> Snapshot:
        """The snapshot that a WAL marker (index, term) names."""
        name = snapshot_file_name(term, index)
        if not self._disk.exists(join(self._directory, name)):
            raise SnapshotNotFoundError(f"{join(self._directory, name)} does not exist")
        return self._load_file(name)

    def load_newest(self) -> Snapshot | None:
        """The newest snapshot, or None if there is none.

        A newest file that fails its checksum raises CorruptionError; we do NOT
        fall back to an older file. Files are written atomically, so a bad one
        means durable bytes changed (failing media, a bug, an operator), and the
        WAL may already have been released up to the newest snapshot: an older
        one could not be brought forward, and starting from it would silently
        rewind this node. An operator decides (restore, or remove the member
        and re-add it to receive a fresh snapshot from the leader).
        """
        names = self.names()
        if not names:
            return None
        return self._load_file(names[-1])

    def purge(self, keep: int = limits.SNAPSHOT_KEEP_FILES) -> list[str]:
        """Remove all but the newest keep files and unfinished temp files; returns paths.

        Call it only after the WAL marker of the newest snapshot is synced, so
        that the snapshot the WAL names is never the one removed.
        """
        assert keep >= 1, keep
        if not self._disk.exists(self._directory):
            return []
        names = self.names()
        doomed = names[: max(0, len(names) - keep)]
        doomed += [
            name
            for name in self._disk.list_dir(self._directory)
            if name.endswith(SNAP_SUFFIX + TEMP_SUFFIX)
        ]
        paths = [join(self._directory, name) for name in doomed]
        for path in paths:
            self._disk.remove(path)
        if paths:
            self._disk.sync_dir(self._directory)
        return paths

    def _load_file(self, name: str) -> Snapshot:
        path = join(self._directory, name)
        snapshot = decode_snapshot(self._disk.read(path), path)
        key = _parse_snap_name(name)
        meta = snapshot.metadata
        if key != (meta.index, meta.term):
            detail = f"file holds snapshot {meta.term}/{meta.index}, unlike its name"
            raise CorruptionError(path, 0, detail)
        return snapshot


# -- Receiving a stream -------------------------------------------------------


class SnapshotReceiver:
    """Reassembles a snapshot stream (``chunks``) and verifies it before use.

    ``source`` names the stream in errors, e.g. ``"<snapshot stream from node 3>"``.
    """

    def __init__(
        self,
        source: str,
        *,
        max_bytes: int = limits.SNAPSHOT_MAX_BYTES,
        chunk_bytes: int = limits.SNAPSHOT_CHUNK_BYTES,
    ) -> None:
        assert 0 < chunk_bytes <= max_bytes <= limits.SNAPSHOT_MAX_BYTES, (chunk_bytes, max_bytes)
        self._source = source
        self._max_bytes = max_bytes
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._header: _Header | None = None
        self._finished = False

    @property
    def received_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> None:
        """Add the next chunk; raises CorruptionError as soon as the stream is invalid."""
        assert not self._finished, "feed after finish"
        received = len(self._buffer)
        if len(chunk) > self._chunk_bytes:
            detail = f"chunk of {len(chunk)} bytes exceeds {self._chunk_bytes}"
            raise CorruptionError(self._source, received, detail)
        if received + len(chunk) > self._max_bytes:
            detail = f"stream exceeds the limit of {self._max_bytes} bytes"
            raise CorruptionError(self._source, received, detail)
        self._buffer += chunk
        if self._header is None:
            self._header = _parse_header(self._buffer, self._source)
        header = self._header
        if header is not None and len(self._buffer) > header.total_bytes:
            detail = f"stream is longer than the {header.total_bytes} bytes its header announces"
            raise CorruptionError(self._source, header.total_bytes, detail)
        if header is not None and header.total_bytes > self._max_bytes:
            detail = f"header announces {header.total_bytes} bytes, over {self._max_bytes}"
            raise CorruptionError(self._source, 0, detail)

    def finish(self) -> Snapshot:
        """The verified snapshot; CorruptionError if the stream is short or fails its checksum."""
        assert not self._finished, "finish twice"
        self._finished = True
        header = self._header
        if header is None or len(self._buffer) < header.total_bytes:
            expected = "?" if header is None else str(header.total_bytes)
            detail = f"stream ended after {len(self._buffer)} of {expected} bytes"
            raise CorruptionError(self._source, len(self._buffer), detail)
        snapshot = decode_snapshot(self._buffer, self._source)
        self._buffer = bytearray()
        return snapshot
