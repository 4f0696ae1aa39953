"""LEB128 varints shared by raftkv's binary codecs (``requests.py``, ``codec.py``).

Unsigned varints hold a uint64; signed ones are zigzag-encoded first. Reading is strict:
a truncated varint, one longer than 10 bytes, one whose value exceeds 64 bits, or one with
a redundant trailing zero byte (a second encoding of the same value) is a ``VarintError``.
That keeps every codec built on these helpers deterministic: one encoding per value.
"""

from __future__ import annotations

UINT64_MAX = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# A varint of a 64-bit value takes at most 10 bytes (7 bits per byte).
MAX_VARINT_BYTES = 10


class VarintError(ValueError):
    """The bytes do not hold a canonical uint64 varint at this position."""


def put_uvarint(out: bytearray, value: int) -> None:
    assert 0 <= value <= UINT64_MAX, f"{value} does not fit a uint64 varint"
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_svarint(out: bytearray, value: int) -> None:
    assert INT64_MIN <= value <= INT64_MAX, f"{value} is not an int64"
    put_uvarint(out, (value << 1) ^ (value >> 63))


def read_uvarint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``."""
    assert pos >= 0, pos
    try:
        byte = data[pos]
    except IndexError:
        raise VarintError("truncated varint") from None
    if byte < 0x80:  # one byte: types, counts, flags and small numbers (the common case)
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while shift < 7 * MAX_VARINT_BYTES:
        pos += 1
        try:
            byte = data[pos]
        except IndexError:
            raise VarintError("truncated varint") from None
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            # After a byte with the continuation bit, a last byte of 0 is redundant.
            if value > UINT64_MAX or byte == 0:
                raise VarintError("non-canonical or oversized varint")
            return value, pos + 1
        shift += 7
    raise VarintError("varint longer than 10 bytes")


def zigzag_decode(raw: int) -> int:
    """The int64 a zigzag-encoded uvarint stands for."""
    return (raw >> 1) ^ -(raw & 1)


class ByteReader:
    """A strict cursor over encoded bytes; a codec subclasses it and names its error type,
    which every malformation (truncation, a bad varint) is raised as."""

    error: type[ValueError] = ValueError
    what = "record"  # for "truncated <what>"

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.error(f"truncated {self.what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uvarint(self) -> int:
        try:
            value, self.pos = read_uvarint(self.data, self.pos)
        except VarintError as error:
            raise self.error(str(error)) from error
        return value

    def svarint(self) -> int:
        return zigzag_decode(self.uvarint())

    def raw(self) -> bytes:
        length = self.uvarint()
        end = self.pos + length
        if end > len(self.data):
            raise self.error("truncated bytes field")
        value = bytes(self.data[self.pos : end])
        self.pos = end
        return value
