"""read_uvarint against a plain reference decoder of the same strict rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv.server.varint import (
    MAX_VARINT_BYTES,
    UINT64_MAX,
    VarintError,
    put_uvarint,
    read_uvarint,
)


def reference(data: bytes, pos: int) -> tuple[int, int] | str:
    """The rules, one byte at a time: (value, end) or the error's text."""
    value = 0
    for count in range(MAX_VARINT_BYTES):
        if pos + count >= len(data):
            return "truncated varint"
        byte = data[pos + count]
        value |= (byte & 0x7F) << (7 * count)
        if byte < 0x80:
            if value > UINT64_MAX or (byte == 0 and count > 0):
                return "non-canonical or oversized varint"
            return value, pos + count + 1
    return "varint longer than 10 bytes"


def outcome(data: bytes, pos: int) -> tuple[int, int] | str:
    try:
        return read_uvarint(data, pos)
    except VarintError as error:
        return str(error)


@given(st.binary(max_size=24), st.integers(min_value=0, max_value=26))
def test_any_bytes_decode_as_the_reference_does(data: bytes, pos: int) -> None:
    assert outcome(data, pos) == reference(data, pos)
    assert outcome(bytearray(data), pos) == reference(data, pos)
    assert outcome(memoryview(data), pos) == reference(data, pos)


@given(st.integers(min_value=0, max_value=UINT64_MAX), st.binary(max_size=4))
def test_every_uint64_round_trips(value: int, prefix: bytes) -> None:
    out = bytearray(prefix)
    put_uvarint(out, value)
    assert read_uvarint(bytes(out) + b"\x01", len(prefix)) == (value, len(out))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "truncated varint"),
        (b"\x80", "truncated varint"),
        (b"\x80\x00", "non-canonical or oversized varint"),
        (b"\xff" * 9 + b"\x02", "non-canonical or oversized varint"),  # 2**64 and up
        (b"\xff" * 10, "varint longer than 10 bytes"),
    ],
)
def test_malformed_varints(data: bytes, error: str) -> None:
    with pytest.raises(VarintError, match=error):
        read_uvarint(data, 0)
