"""WAL record encoding: round trips, alignment, and detection of every single-bit flip."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv import limits
from raftkv.raft.messages import Entry, EntryType, HardState
from raftkv.storage.wal.record import (
    HEADER_BYTES,
    RECORD_ALIGN_BYTES,
    DecodeStatus,
    Record,
    RecordFormatError,
    RecordType,
    SegmentMetadata,
    decode_entry,
    decode_hard_state,
    decode_metadata,
    decode_record,
    decode_snapshot_marker,
    encode_entry,
    encode_hard_state,
    encode_metadata,
    encode_record,
    encode_snapshot_marker,
    encoded_size,
)
from raftkv.storage.wal.segment import find_valid_record

WAL_MAX = limits.WAL_MAX_RECORD_BYTES

record_types = st.sampled_from(list(RecordType))
payloads = st.binary(min_size=1, max_size=300)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
positive_u64 = st.integers(min_value=1, max_value=2**64 - 1)
entries = st.builds(
    Entry,
    term=positive_u64,
    index=positive_u64,
    type=st.sampled_from(list(EntryType)),
    data=st.binary(max_size=200),
)


@given(record_types, payloads)
def test_record_round_trip(record_type: RecordType, payload: bytes) -> None:
    encoded = encode_record(record_type, payload)
    assert len(encoded) == encoded_size(len(payload))
    assert len(encoded) % RECORD_ALIGN_BYTES == 0
    decoded = decode_record(encoded, 0)
    assert decoded.status is DecodeStatus.OK
    assert decoded.record == Record(record_type, payload)
    assert decoded.next_offset == len(encoded)
    assert decode_record(encoded, decoded.next_offset).status is DecodeStatus.END


@given(st.lists(st.tuples(record_types, payloads), min_size=1, max_size=10))
def test_records_decode_in_sequence(records: list[tuple[RecordType, bytes]]) -> None:
    buffer = b"".join(encode_record(kind, payload) for kind, payload in records)
    offset = 0
    decoded_records = []
    while (decoded := decode_record(buffer, offset)).status is DecodeStatus.OK:
        assert decoded.record is not None
        decoded_records.append((decoded.record.type, decoded.record.payload))
        offset = decoded.next_offset
    assert decoded.status is DecodeStatus.END
    assert decoded_records == records


@given(record_types, payloads, st.data())
def test_every_single_bit_flip_is_detected(
    record_type: RecordType, payload: bytes, data: st.DataObject
) -> None:
    encoded = bytearray(encode_record(record_type, payload))
    bit = data.draw(st.integers(min_value=0, max_value=len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    decoded = decode_record(bytes(encoded), 0)
    assert decoded.status is not DecodeStatus.OK


@given(record_types, payloads, st.data())
def test_truncated_record_is_never_ok(
    record_type: RecordType, payload: bytes, data: st.DataObject
) -> None:
    encoded = encode_record(record_type, payload)
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded) - 1))
    truncated = encoded[:cut]
    decoded = decode_record(truncated, 0)
    expected = DecodeStatus.BAD_HEADER if cut < HEADER_BYTES else DecodeStatus.SHORT_PAYLOAD
    assert decoded.status is expected


def test_zeros_are_a_bad_header() -> None:
    assert decode_record(bytes(64), 0).status is DecodeStatus.BAD_HEADER


def _header_with_valid_crc(length: int, type_value: int) -> bytes:
    head = struct.pack("<IB3xI", length, type_value, 0)
    return head + zlib.crc32(head).to_bytes(4, "little")


def test_checksummed_header_with_impossible_length_is_impossible() -> None:
    buffer = _header_with_valid_crc(2**31, RecordType.ENTRY) + bytes(64)
    decoded = decode_record(buffer, 0)
    assert decoded.status is DecodeStatus.IMPOSSIBLE
    assert "length" in decoded.detail


def test_checksummed_header_with_unknown_type_is_impossible() -> None:
    buffer = _header_with_valid_crc(8, 99) + bytes(8)
    assert decode_record(buffer, 0).status is DecodeStatus.IMPOSSIBLE


def test_encoder_refuses_empty_and_oversized_payloads() -> None:
    with pytest.raises(AssertionError):
        encode_record(RecordType.ENTRY, b"")
    with pytest.raises(AssertionError):
        encode_record(RecordType.ENTRY, bytes(limits.WAL_MAX_RECORD_BYTES + 1))


@given(entries)
def test_entry_payload_round_trip(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@given(u64, u64, u64)
def test_hard_state_payload_round_trip(term: int, vote: int, commit: int) -> None:
    hard_state = HardState(term=term, vote=vote, commit=commit)
    assert decode_hard_state(encode_hard_state(hard_state)) == hard_state


@given(u64, u64, st.booleans())
def test_snapshot_marker_payload_round_trip(index: int, term: int, replaces_log: bool) -> None:
    payload = encode_snapshot_marker(index, term, replaces_log)
    assert decode_snapshot_marker(payload) == (index, term, replaces_log)


@given(u64, positive_u64, u64)
def test_metadata_payload_round_trip(seq: int, first_index: int, previous_bytes: int) -> None:
    metadata = SegmentMetadata(seq, first_index, previous_bytes)
    assert decode_metadata(encode_metadata(metadata)) == metadata


def test_malformed_payloads_raise_record_format_error() -> None:
    with pytest.raises(RecordFormatError):
        decode_entry(b"short")
    with pytest.raises(RecordFormatError):
        decode_entry(struct.pack("<QQB", 1, 1, 7))  # unknown entry type
    with pytest.raises(RecordFormatError):
        decode_hard_state(bytes(23))
    with pytest.raises(RecordFormatError, match="version"):
        decode_metadata(struct.pack("<IQQQ", 99, 0, 1, 0))


def _find_valid_record_reference(data: bytes, start: int) -> int | None:
    """The plain search: try every aligned offset."""
    offset = start + (-start % RECORD_ALIGN_BYTES)
    while offset + HEADER_BYTES <= len(data):
        if decode_record(data, offset).status is DecodeStatus.OK:
            return offset
        offset += RECORD_ALIGN_BYTES
    return None


_PIECES = st.one_of(
    st.integers(0, 3000).map(bytes),  # zero runs, any length (alignment shifts)
    st.binary(min_size=1, max_size=40),  # garbage
    st.binary(min_size=1, max_size=60).map(lambda p: encode_record(RecordType.ENTRY, p)),
)


@given(st.lists(_PIECES, max_size=12), st.integers(0, 200))
def test_the_zero_skipping_search_finds_what_the_plain_search_finds(
    pieces: list[bytes], start: int
) -> None:
    data = b"".join(pieces)
    start = min(start, len(data))
    assert find_valid_record(data, start, WAL_MAX) == _find_valid_record_reference(data, start)


def test_the_search_crosses_long_zero_runs_to_a_record() -> None:
    record = encode_record(RecordType.HARD_STATE, b"x" * 9)
    for zeros in (16, 65536 - 8, 65536, 65536 + 8, 3 * 65536 + 40):
        data = bytes(zeros) + record + bytes(100_000)
        assert find_valid_record(data, 0, WAL_MAX) == zeros
        assert find_valid_record(data, zeros + 8, WAL_MAX) is None
