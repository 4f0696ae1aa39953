"""The protobuf wire format for messages of int64 fields only (etcd's ``leasepb.Lease``,
which raftkv has no generated module for).

Facts (protobuf encoding): a field is a varint tag ``field_number << 3 | wire_type`` and a
payload; int64 is wire type 0 (varint, 7 bits a byte, low bits first, a negative value as
its 64-bit two's complement, so 10 bytes); proto3 leaves out fields equal to 0. A reader
skips fields it does not know: wire type 1 is 8 bytes, 2 a varint length and that many
bytes, 5 is 4 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from raftkv.storage.etcdsnap.errors import SnapshotFormatError

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LENGTH_DELIMITED = 2
WIRE_FIXED32 = 5
_FIXED_BYTES = {WIRE_FIXED64: 8, WIRE_FIXED32: 4}
_U64_LIMIT = 1 << 64
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_VARINT_MAX_BYTES = 10


def _varint(value: int) -> bytes:
    assert 0 <= value < _U64_LIMIT
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_int64_fields(fields: Iterable[tuple[int, int]]) -> bytes:
    """(field number, value) pairs in field order; zeros are left out."""
    out = bytearray()
    for number, value in fields:
        assert number >= 1 and _INT64_MIN <= value <= _INT64_MAX
        if value == 0:
            continue
        out += _varint(number << 3 | WIRE_VARINT)
        out += _varint(value % _U64_LIMIT)
    return bytes(out)


def _read_varint(data: bytes, offset: int, where: str) -> tuple[int, int]:
    value = 0
    for index in range(_VARINT_MAX_BYTES):
        if offset + index >= len(data):
            break
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if value >= _U64_LIMIT:
                break
            return value, offset + index + 1
    raise SnapshotFormatError(f"{where}: bad varint at byte {offset}")


def decode_int64_fields(data: bytes, where: str) -> dict[int, int]:
    """The varint fields of a message as int64s (the last one wins, as in protobuf)."""
    fields: dict[int, int] = {}
    offset = 0
    while offset < len(data):
        tag, offset = _read_varint(data, offset, where)
        number, wire_type = tag >> 3, tag & 0x7
        if number == 0:
            raise SnapshotFormatError(f"{where}: field number 0")
        if wire_type == WIRE_VARINT:
            value, offset = _read_varint(data, offset, where)
            fields[number] = value - _U64_LIMIT if value > _INT64_MAX else value
        elif wire_type in _FIXED_BYTES:
            offset += _FIXED_BYTES[wire_type]
        elif wire_type == WIRE_LENGTH_DELIMITED:
            length, offset = _read_varint(data, offset, where)
            offset += length
        else:
            raise SnapshotFormatError(f"{where}: unsupported wire type {wire_type}")
        if offset > len(data):
            raise SnapshotFormatError(f"{where}: field {number} runs past the message")
    return fields
