"""One WAL record: pure encoding and decoding, no I/O.

A record is a 16-byte header, the payload, and zero padding to a multiple of
8 bytes (all integers little-endian)::

    0        4      5         8          12         16             16+length
    +--------+------+---------+----------+----------+----------------+--------+
    | length | type | 0  0  0 | data_crc | head_crc | payload        | 0 pad  |
    |  u32   |  u8  | reserved|   u32    |   u32    | (length bytes) | to 8   |
    +--------+------+---------+----------+----------+----------------+--------+

    data_crc = crc32(type byte + payload)
    head_crc = crc32(header bytes 0..12)

The header has its own checksum so that a damaged length is never trusted: a
flipped bit in the length of a record in the middle of the log must read as
corruption, not as "the record runs past the end of the file, so it is a torn
tail". Alignment lets a scan look for a later valid record at 8-byte offsets
(see ``segment.scan_segment``).
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from raftkv import limits
from raftkv.raft.messages import Entry, EntryType, HardState, Index, Term

RECORD_ALIGN_BYTES = 8
_HEADER = struct.Struct("<IB3xII")
HEADER_BYTES = _HEADER.size
_HEAD_CRC_COVERS_BYTES = 12  # length, type, reserved, data_crc
ZERO_HEADER = bytes(HEADER_BYTES)

assert HEADER_BYTES == 16
assert HEADER_BYTES % RECORD_ALIGN_BYTES == 0


class RecordType(enum.IntEnum):
    # Numbers follow etcd's walpb record types.
    METADATA = 1  # first record of every segment: format version, seq, first index
    ENTRY = 2
    HARD_STATE = 3
    SNAPSHOT = 5  # snapshot marker: (index, term) of a durable snapshot


_RECORD_TYPES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True, slots=True)
class Record:
    type: RecordType
    payload: bytes


def padded_size(length: int) -> int:
    return length + (-length % RECORD_ALIGN_BYTES)


def encoded_size(payload_bytes: int) -> int:
    return HEADER_BYTES + padded_size(payload_bytes)


def encode_record(record_type: RecordType, payload: bytes) -> bytes:
    assert 0 < len(payload) <= limits.WAL_MAX_RECORD_BYTES, len(payload)
    data_crc = zlib.crc32(payload, zlib.crc32(bytes((record_type,))))
    head = _HEADER.pack(len(payload), record_type, data_crc, 0)[:_HEAD_CRC_COVERS_BYTES]
    head_crc = zlib.crc32(head)
    padding = bytes(-len(payload) % RECORD_ALIGN_BYTES)
    encoded = b"".join((head, head_crc.to_bytes(4, "little"), payload, padding))
    assert len(encoded) == encoded_size(len(payload))
    assert len(encoded) % RECORD_ALIGN_BYTES == 0
    return encoded


class DecodeStatus(enum.Enum):
    OK = "ok"
    END = "end"  # the offset is the end of the buffer
    # Header checksum mismatch, or fewer than HEADER_BYTES left: torn, zeros, or garbage.
    BAD_HEADER = "bad header"
    # Header valid, but the payload runs past the end of the buffer.
    SHORT_PAYLOAD = "short payload"
    # Header valid, but the payload checksum (or the padding) is wrong.
    BAD_PAYLOAD = "bad payload"
    # Header checksum valid but its fields cannot be: this was written so, or the
    # damage beat a CRC. Never a torn write.
    IMPOSSIBLE = "impossible header"


@dataclass(frozen=True, slots=True)
class Decoded:
    status: DecodeStatus
    record: Record | None = None
    # OK: where the next record starts. SHORT_PAYLOAD, BAD_PAYLOAD: where this
    # record ends according to its (valid) header. Otherwise the offset itself.
    next_offset: int = 0
    detail: str = ""


def decode_record(
    buffer: bytes, offset: int, max_payload_bytes: int = limits.WAL_MAX_RECORD_BYTES
) -> Decoded:
    """Decode the record at offset; never raises on bad input, it reports it."""
    assert offset % RECORD_ALIGN_BYTES == 0, offset
    assert 0 <= offset <= len(buffer), (offset, len(buffer))
    if offset == len(buffer):
        return Decoded(DecodeStatus.END, next_offset=offset)
    if len(buffer) - offset < HEADER_BYTES:
        detail = f"{len(buffer) - offset} bytes left, less than a header"
        return Decoded(DecodeStatus.BAD_HEADER, next_offset=offset, detail=detail)
    length, type_value, data_crc, head_crc = _HEADER.unpack_from(buffer, offset)
    if zlib.crc32(buffer[offset : offset + _HEAD_CRC_COVERS_BYTES]) != head_crc:
        return Decoded(DecodeStatus.BAD_HEADER, next_offset=offset, detail="header crc mismatch")
    impossible = _impossible_header(buffer, offset, length, type_value, max_payload_bytes)
    if impossible:
        return Decoded(DecodeStatus.IMPOSSIBLE, next_offset=offset, detail=impossible)
    return _decode_payload(buffer, offset, length, RecordType(type_value), data_crc)


def _impossible_header(
    buffer: bytes, offset: int, length: int, type_value: int, max_payload_bytes: int
) -> str:
    if length == 0 or length > max_payload_bytes:
        return f"record length {length} outside 1..{max_payload_bytes}"
    if type_value not in _RECORD_TYPES:
        return f"unknown record type {type_value}"
    if buffer[offset + 5 : offset + 8] != b"\0\0\0":
        return "reserved header bytes are not zero"
    return ""


def _decode_payload(
    buffer: bytes, offset: int, length: int, record_type: RecordType, data_crc: int
) -> Decoded:
    start = offset + HEADER_BYTES
    end = start + padded_size(length)
    if end > len(buffer):
        detail = f"{record_type.name} record of {length} bytes runs past the end ({len(buffer)})"
        return Decoded(DecodeStatus.SHORT_PAYLOAD, next_offset=end, detail=detail)
    payload = bytes(buffer[start : start + length])
    if zlib.crc32(payload, zlib.crc32(bytes((record_type,)))) != data_crc:
        detail = f"{record_type.name} record data crc mismatch"
        return Decoded(DecodeStatus.BAD_PAYLOAD, next_offset=end, detail=detail)
    if any(buffer[start + length : end]):
        detail = f"{record_type.name} record has non-zero padding"
        return Decoded(DecodeStatus.BAD_PAYLOAD, next_offset=end, detail=detail)
    return Decoded(DecodeStatus.OK, Record(record_type, payload), next_offset=end)


# --- Payloads ----------------------------------------------------------------


class RecordFormatError(Exception):
    """A payload that passed its checksum but does not parse: a bug or a bad version."""


_ENTRY_HEADER = struct.Struct("<QQB")
_HARD_STATE = struct.Struct("<QQQ")
_SNAPSHOT_MARKER = struct.Struct("<QQB")
_METADATA = struct.Struct("<IQQQ")

WAL_FORMAT_VERSION = 1


def encode_entry(entry: Entry) -> bytes:
    assert entry.index >= 1, entry.index
    assert entry.term >= 1, entry.term
    return _ENTRY_HEADER.pack(entry.term, entry.index, entry.type.value) + entry.data


def decode_entry(payload: bytes) -> Entry:
    if len(payload) < _ENTRY_HEADER.size:
        raise RecordFormatError(f"entry payload of {len(payload)} bytes is too short")
    term, index, type_value = _ENTRY_HEADER.unpack_from(payload)
    try:
        entry_type = EntryType(type_value)
    except ValueError:
        raise RecordFormatError(f"unknown entry type {type_value}") from None
    if index < 1 or term < 1:
        raise RecordFormatError(f"entry with index {index} term {term}")
    return Entry(term=term, index=index, type=entry_type, data=payload[_ENTRY_HEADER.size :])


def encode_hard_state(hard_state: HardState) -> bytes:
    return _HARD_STATE.pack(hard_state.term, hard_state.vote, hard_state.commit)


def decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _unpack_exact(_HARD_STATE, payload, "hard state")
    return HardState(term=term, vote=vote, commit=commit)


def encode_snapshot_marker(index: Index, term: Term, replaces_log: bool) -> bytes:
    """replaces_log: a leader's snapshot that discarded our log, rather than a local
    snapshot of it. Recorded so that replay never has to compare terms with
    entries that release_to may have removed."""
    assert index >= 0 and term >= 0, (index, term)
    return _SNAPSHOT_MARKER.pack(index, term, int(replaces_log))


def decode_snapshot_marker(payload: bytes) -> tuple[Index, Term, bool]:
    """(index, term, replaces_log)."""
    index, term, replaces_log = _unpack_exact(_SNAPSHOT_MARKER, payload, "snapshot marker")
    if replaces_log not in (0, 1):
        raise RecordFormatError(f"snapshot marker flag {replaces_log}")
    return index, term, bool(replaces_log)


@dataclass(frozen=True, slots=True)
class SegmentMetadata:
    seq: int
    first_index: Index
    # Size of the segment before this one when this one was created: a
    # previous segment that lost or gained bytes at a record boundary is
    # caught by this, since its own records would all still look valid.
    previous_segment_bytes: int


def encode_metadata(metadata: SegmentMetadata) -> bytes:
    assert metadata.seq >= 0 and metadata.first_index >= 1, metadata
    assert metadata.previous_segment_bytes >= 0, metadata
    return _METADATA.pack(
        WAL_FORMAT_VERSION, metadata.seq, metadata.first_index, metadata.previous_segment_bytes
    )


def decode_metadata(payload: bytes) -> SegmentMetadata:
    """Raises RecordFormatError on another format version."""
    version, seq, first_index, previous_bytes = _unpack_exact(_METADATA, payload, "metadata")
    if version != WAL_FORMAT_VERSION:
        raise RecordFormatError(f"WAL format version {version}, expected {WAL_FORMAT_VERSION}")
    return SegmentMetadata(seq, first_index, previous_bytes)


def _unpack_exact(layout: struct.Struct, payload: bytes, what: str) -> tuple[int, ...]:
    if len(payload) != layout.size:
        raise RecordFormatError(f"{what} payload is {len(payload)} bytes, expected {layout.size}")
    values: tuple[int, ...] = layout.unpack(payload)
    return values
