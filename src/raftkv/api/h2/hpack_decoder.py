"""HPACK (RFC 7541) decoding for the gRPC front end, with whole header blocks cached.

Why not the ``hpack`` package's ``Decoder``: it builds a ``HeaderTuple`` and converts every
field it decodes, and was 11-19% of a member's event-loop samples at 1000 clients
(docs/performance.md, change 11). This decoder yields plain ``(name, value)`` bytes, and a
client that repeats a request's headers (grpcio indexes them, and reuses the encoding of
nearby timeouts) sends the same block bytes again: a block that left the dynamic table as
it was is remembered, with what the caller made of it, until the table next changes.

``hpack`` still supplies the static table, the Huffman code and the error types (the
front end answers any ``hpack.HPACKError`` with a COMPRESSION_ERROR GOAWAY).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]
Parsed = TypeVar("Parsed")

_STATIC: tuple[Header, ...] = HeaderTable.STATIC_TABLE
_ENTRY_OVERHEAD_BYTES = 32  # RFC 7541 4.1: each entry's size is name + value + 32
_MAX_INTEGER_SHIFT = 28  # longer integers are refused (no field of ours is over 2^28)
_DEFAULT_TABLE_BYTES = 4096  # SETTINGS_HEADER_TABLE_SIZE: the front end never changes it


class HpackDecoder(Generic[Parsed]):
    """One connection's decoding state: its dynamic table and its block cache.

    ``decode(block)`` gives ``parse(headers)`` for the block, ``parse`` run once per
    distinct block while the table is unchanged. ``parse`` must not keep the list."""

    def __init__(
        self,
        parse: Callable[[list[Header]], Parsed],
        max_header_list_bytes: int,
        max_cached_blocks: int,
        max_cached_block_bytes: int,
    ) -> None:
        self._parse = parse
        self._max_header_list_bytes = max_header_list_bytes
        self._max_cached_blocks = max_cached_blocks
        self._max_cached_block_bytes = max_cached_block_bytes
        self._table: collections.deque[Header] = collections.deque()  # newest first
        self._table_bytes = 0
        self._table_limit_bytes = _DEFAULT_TABLE_BYTES
        self._cache: dict[bytes, Parsed] = {}

    @property
    def cached_blocks(self) -> int:
        return len(self._cache)

    @property
    def table(self) -> tuple[Header, ...]:
        """The dynamic table, newest entry first (for tests)."""
        return tuple(self._table)

    def decode(self, block: bytes) -> Parsed:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        headers, table_changed = self._decode(block)
        parsed = self._parse(headers)
        if table_changed:
            self._cache.clear()  # an index in a remembered block may mean another field now
        elif len(block) <= self._max_cached_block_bytes:
            if len(self._cache) >= self._max_cached_blocks:
                # Full of blocks that did not come back (a client whose timeouts all
                # differ, say): start again rather than never remember another.
                self._cache.clear()
            self._cache[block] = parsed
        return parsed

    def _decode(self, block: bytes) -> tuple[list[Header], bool]:
        headers: list[Header] = []
        table_changed = False
        list_bytes = 0
        position = 0
        while position < len(block):
            first = block[position]
            if first & 0x80:  # an indexed field
                index, position = _integer(block, position, 7)
                header = self._entry(index)
            elif first & 0x40:  # a literal added to the table
                header, position = self._literal(block, position, 6)
                self._add(header)
                table_changed = True
            elif first & 0x20:  # a table size update, only before the first field
                if headers:
                    raise HPACKDecodingError("table size update after a header field")
                size, position = _integer(block, position, 5)
                self._resize(size)
                table_changed = True
                continue
            else:  # a literal not indexed, or never indexed
                header, position = self._literal(block, position, 4)
            list_bytes += len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD_BYTES
            if list_bytes > self._max_header_list_bytes:
                raise OversizedHeaderListError(
                    f"header list over {self._max_header_list_bytes} bytes"
                )
            headers.append(header)
        return headers, table_changed

    def _literal(self, block: bytes, position: int, prefix_bits: int) -> tuple[Header, int]:
        index, position = _integer(block, position, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, position = _string(block, position)
        value, position = _string(block, position)
        return (name, value), position

    def _entry(self, index: int) -> Header:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        dynamic_index = index - len(_STATIC) - 1
        if 0 <= dynamic_index < len(self._table):
            return self._table[dynamic_index]
        raise InvalidTableIndex(f"no header table entry {index}")

    def _add(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD_BYTES
        self._table.appendleft(header)
        self._table_bytes += size
        self._evict()

    def _resize(self, size: int) -> None:
        if size > _DEFAULT_TABLE_BYTES:
            raise InvalidTableSizeError(f"table size {size} over {_DEFAULT_TABLE_BYTES}")
        self._table_limit_bytes = size
        self._evict()

    def _evict(self) -> None:
        # An entry larger than the whole table empties it and is not kept (RFC 7541 4.4).
        while self._table_bytes > self._table_limit_bytes:
            name, value = self._table.pop()
            self._table_bytes -= len(name) + len(value) + _ENTRY_OVERHEAD_BYTES
        assert self._table_bytes >= 0, "the table's size went negative"


def _integer(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """An integer with an N-bit prefix (RFC 7541 5.1) and the position after it."""
    mask = (1 << prefix_bits) - 1
    value = block[position] & mask
    position += 1
    if value < mask:
        return value, position
    shift = 0
    while True:
        if position >= len(block):
            raise HPACKDecodingError("header block ends inside an integer")
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > _MAX_INTEGER_SHIFT:
            raise HPACKDecodingError("integer too large in a header block")


def _string(block: bytes, position: int) -> tuple[bytes, int]:
    """A string literal (RFC 7541 5.2), Huffman-coded or not, and the position after it."""
    if position >= len(block):
        raise HPACKDecodingError("header block ends before a string")
    huffman = block[position] & 0x80
    length, position = _integer(block, position, 7)
    end = position + length
    if end > len(block):
        raise HPACKDecodingError("header block ends inside a string")
    raw = block[position:end]
    return (decode_huffman(raw) if huffman else raw), end
