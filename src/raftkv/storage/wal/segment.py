"""Segment files: names, and the pure scan that splits valid records from a torn tail.

The torn-tail rule. A crash can only damage what was written after the last
fdatasync, and the WAL syncs a segment completely before it starts the next
one. So damage can legitimately appear only at the end of the *last* segment,
and only as a suffix: nothing valid after it. The scan therefore says:

- damage in the last segment with no valid record after it: a torn tail, to
  be truncated (the writes were never acknowledged as durable);
- damage anywhere else, damage followed by a valid record, or a header whose
  checksum is valid but whose fields are impossible: corruption of durable
  data. The node must stop; skipping a record could forget a vote or an
  acknowledged entry, which breaks Raft's safety.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from raftkv import limits
from raftkv.raft.messages import Index
from raftkv.storage.wal.record import (
    HEADER_BYTES,
    RECORD_ALIGN_BYTES,
    ZERO_HEADER,
    Decoded,
    DecodeStatus,
    Record,
    decode_record,
)

SEGMENT_SUFFIX = ".wal"
TEMP_SUFFIX = ".tmp"  # a segment being created; removed on open if a crash left one
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_NONZERO = re.compile(rb"[^\x00]")
_ZERO_SCAN_WINDOW_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, order=True)
class SegmentName:
    seq: int
    first_index: Index  # index of the first entry expected in this segment

    def file_name(self) -> str:
        return f"{self.seq:016x}-{self.first_index:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> SegmentName | None:
    """The segment a file name denotes, or None if it is not a segment name."""
    match = _SEGMENT_NAME.match(name)
    if match is None:
        return None
    return SegmentName(seq=int(match.group(1), 16), first_index=int(match.group(2), 16))


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    offset: int
    record: Record


@dataclass(frozen=True, slots=True)
class SegmentScan:
    records: list[ScannedRecord]
    valid_bytes: int  # end of the last valid record: the size after repair
    torn_detail: str  # why the bytes after valid_bytes are a torn tail ("" if none)


class ScanCorruption(Exception):
    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(f"offset {offset}: {detail}")
        self.offset = offset
        self.detail = detail


def scan_segment(
    data: bytes, *, is_last: bool, max_payload_bytes: int = limits.WAL_MAX_RECORD_BYTES
) -> SegmentScan:
    """All valid records of a segment; raises ScanCorruption per the torn-tail rule."""
    records: list[ScannedRecord] = []
    offset = 0
    while True:
        decoded = decode_record(data, offset, max_payload_bytes)
        if decoded.status is DecodeStatus.OK:
            assert decoded.record is not None
            records.append(ScannedRecord(offset, decoded.record))
            assert decoded.next_offset > offset
            offset = decoded.next_offset
            continue
        if decoded.status is DecodeStatus.END:
            return SegmentScan(records, offset, "")
        if is_last and _all_zeros(data, offset):
            return SegmentScan(records, offset, "")  # preallocated space: the data ends here
        _check_damage_is_torn_tail(data, offset, decoded, is_last, max_payload_bytes)
        return SegmentScan(records, offset, decoded.detail)


def _all_zeros(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def _next_nonzero(data: bytes, start: int) -> int | None:
    """Where the first non-zero byte at or after start is (None: zeros to the end). A
    preallocated tail is megabytes of zeros: bytes.count finds the window, a regex the
    byte in it (a regex over the whole tail is ten times slower)."""
    for window_start in range(start, len(data), _ZERO_SCAN_WINDOW_BYTES):
        window_end = min(window_start + _ZERO_SCAN_WINDOW_BYTES, len(data))
        if data.count(0, window_start, window_end) != window_end - window_start:
            found = _NONZERO.search(data, window_start, window_end)
            assert found is not None
            return found.start()
    return None


def _check_damage_is_torn_tail(
    data: bytes, offset: int, decoded: Decoded, is_last: bool, max_payload_bytes: int
) -> None:
    status, detail = decoded.status, decoded.detail
    assert status not in (DecodeStatus.OK, DecodeStatus.END), status
    if status is DecodeStatus.IMPOSSIBLE:
        raise ScanCorruption(offset, detail)
    if not is_last:
        raise ScanCorruption(offset, f"{detail}, and this is not the last segment")
    # A valid header's length is trusted, so the search skips that record's
    # payload (which may itself hold bytes that look like a record).
    resume = offset + RECORD_ALIGN_BYTES
    if status is not DecodeStatus.BAD_HEADER:
        resume = max(resume, decoded.next_offset)
    following = find_valid_record(data, resume, max_payload_bytes)
    if following is not None:
        raise ScanCorruption(offset, f"{detail}, followed by a valid record at offset {following}")


def find_valid_record(data: bytes, start: int, max_payload_bytes: int) -> int | None:
    """Offset of the first valid record at an aligned offset >= start, if any."""
    offset = start + (-start % RECORD_ALIGN_BYTES)
    while offset + HEADER_BYTES <= len(data):
        if data[offset : offset + HEADER_BYTES] == ZERO_HEADER:
            # Zeros (a sector-padded tail, preallocated space) are the common case: jump to
            # the first header that could hold the next non-zero byte, which may be the
            # header's second 8 bytes.
            nonzero = _next_nonzero(data, offset)
            if nonzero is None:
                return None
            aligned = nonzero - nonzero % RECORD_ALIGN_BYTES
            offset = max(offset + RECORD_ALIGN_BYTES, aligned - HEADER_BYTES + RECORD_ALIGN_BYTES)
            continue
        decoded = decode_record(data, offset, max_payload_bytes)
        if decoded.status is DecodeStatus.OK:
            return offset
        offset += RECORD_ALIGN_BYTES
    return None
