"""HTTP/2 framing (RFC 9113) and the few HPACK encodings (RFC 7541) a gRPC server sends.

Pure functions and constants; the connection state lives in ``server.py``. Decoding header
blocks is the ``hpack`` package's job (its dynamic table must see every block in order).
"""

from __future__ import annotations

import enum
import struct
from urllib.parse import quote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
# RFC 9113 6.5.2: the initial values until SETTINGS say otherwise.
DEFAULT_WINDOW_BYTES = 65_535
DEFAULT_MAX_FRAME_BYTES = 16_384
MAX_WINDOW_BYTES = 2**31 - 1
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


class FrameType(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Flag:
    """Plain ints: enum.IntFlag's ``&`` costs a microsecond, and it runs per frame."""

    END_STREAM = 0x1  # DATA, HEADERS; also ACK on SETTINGS and PING
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


ACK = 0x1


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    ENHANCE_YOUR_CALM = 11


class H2ConnectionError(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY(code)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def frame(kind: FrameType, flags: int, stream_id: int, payload: bytes) -> bytes:
    length = len(payload)
    assert length < 1 << 24, "a frame's length has 24 bits"
    head = bytes((length >> 16, (length >> 8) & 0xFF, length & 0xFF, kind, flags))
    return head + _U32.pack(stream_id) + payload


def settings_frame(settings: dict[Setting, int]) -> bytes:
    payload = b"".join(_SETTING.pack(key, value) for key, value in settings.items())
    return frame(FrameType.SETTINGS, 0, 0, payload)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % _SETTING.size:
        raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    return [_SETTING.unpack_from(payload, at) for at in range(0, len(payload), _SETTING.size)]


def window_update(stream_id: int, increment: int) -> bytes:
    assert 0 < increment <= MAX_WINDOW_BYTES
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def read_u31(payload: bytes, name: str) -> int:
    if len(payload) != 4:
        raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"{name} must be 4 bytes")
    value: int = _U32.unpack(payload)[0] & 0x7FFFFFFF
    return value


def strip_padding(flags: int, payload: bytes) -> bytes:
    """The payload of a DATA or HEADERS frame without its padding (and priority fields)."""
    start, end = 0, len(payload)
    if flags & Flag.PADDED:
        if not payload or payload[0] >= end:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
        start, end = 1, end - payload[0]
    return payload[start:end]


# --- HPACK, the encoder side: static-table references and literals "without indexing",
# so the response headers never touch the peer's dynamic table (and are precomputed).


def _integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data  # not Huffman-coded


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as "literal without indexing, new name" (RFC 7541 6.2.2)."""
    return b"\x00" + _string(name) + _string(value)


STATUS_200 = b"\x88"  # static table index 8
# content-type is static index 31: literal without indexing, indexed name (4-bit prefix).
CONTENT_TYPE_GRPC = _integer(31, 4, 0) + _string(b"application/grpc")
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_trailers(code: int, message: str) -> bytes:
    """grpc-status and grpc-message, the message percent-encoded as gRPC's spec asks."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
        block += literal(b"grpc-message", encoded)
    return block
