"""raftkv's HPACK decoder against the ``hpack`` package's, on blocks its encoder makes."""

from __future__ import annotations

from collections.abc import Callable

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.api.h2.hpack_decoder import Header, HpackDecoder

NAMES = [b":path", b"content-type", b"grpc-timeout", b"te", b"token", b"x-a", b"user-agent"]
header = st.tuples(
    st.sampled_from(NAMES)
    | st.binary(min_size=1, max_size=12).map(lambda b: b"x-" + b.hex().encode()),
    st.sampled_from([b"", b"application/grpc", b"/etcdserverpb.KV/Range", b"5S"])
    | st.binary(max_size=300),
)
# Each block: its headers, and a table size for the encoder to announce first (or None).
blocks = st.lists(
    st.tuples(st.lists(header, max_size=8), st.none() | st.integers(0, 4096)),
    min_size=1,
    max_size=12,
)


def as_list(headers: list[Header]) -> list[Header]:
    return list(headers)


def decoder(
    parse: Callable[[list[Header]], list[Header]] = as_list, cached_blocks: int = 64
) -> HpackDecoder[list[Header]]:
    return HpackDecoder(parse, 16 * 1024, cached_blocks, 1024)


@settings(max_examples=300, deadline=None)
@given(blocks, st.booleans())
def test_decodes_what_hpack_decodes(
    sequence: list[tuple[list[Header], int | None]], huffman: bool
) -> None:
    encoder = hpack.Encoder()
    theirs = hpack.Decoder()
    theirs.max_header_list_size = 1 << 30
    ours = decoder()
    for headers, table_size in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size
        # Sent twice: the second may come from the cache, and must still be right.
        for _ in range(2):
            block = encoder.encode(headers, huffman=huffman)
            expected = [(name, value) for name, value in theirs.decode(block, raw=True)]
            assert ours.decode(block) == expected
            assert list(ours.table) == [
                (entry[0], entry[1]) for entry in theirs.header_table.dynamic_entries
            ]


def test_a_repeated_block_is_parsed_once_until_the_table_changes() -> None:
    parsed: list[list[Header]] = []

    def parse(headers: list[Header]) -> list[Header]:
        parsed.append(headers)
        return headers

    ours = decoder(parse)
    indexed = bytes([0x80 | 2, 0x80 | 4])  # :method GET, :path /
    adds = b"\x40\x03x-a\x01v"  # x-a: v, added to the table
    assert ours.decode(indexed) == [(b":method", b"GET"), (b":path", b"/")]
    assert ours.decode(indexed) == [(b":method", b"GET"), (b":path", b"/")]
    assert len(parsed) == 1
    refers = bytes([0x80 | 62])  # the newest dynamic entry
    assert ours.decode(adds) == [(b"x-a", b"v")]
    assert ours.decode(refers) == [(b"x-a", b"v")]
    ours.decode(b"\x40\x03x-b\x01w")  # now entry 62 is x-b: the cached block must not answer
    assert ours.decode(refers) == [(b"x-b", b"w")]
    assert ours.decode(indexed) == [(b":method", b"GET"), (b":path", b"/")]
    assert len(parsed) == 6  # the table changed, so the cache was dropped


def test_the_cache_is_bounded_and_keeps_remembering() -> None:
    parsed: list[list[Header]] = []

    def parse(headers: list[Header]) -> list[Header]:
        parsed.append(headers)
        return headers

    ours = decoder(parse, cached_blocks=4)
    # Blocks that never come back, as from a client whose every timeout differs...
    for timeout in range(100):
        ours.decode(b"\x0f\x0d" + bytes([5]) + f"{timeout:04d}m".encode()[:5])
        assert ours.cached_blocks <= 4
    # ...do not stop a block that does come back from being remembered.
    parsed.clear()
    for _ in range(5):
        ours.decode(bytes([0x80 | 4]))
    assert len(parsed) == 1


@pytest.mark.parametrize(
    "block",
    [
        bytes([0x80]),  # index 0
        bytes([0x80 | 62]),  # an empty dynamic table
        b"\x7f",  # an integer cut short
        b"\x7f\xff\xff\xff\xff\xff\x01",  # an integer too large
        b"\x00\x05ab",  # a name cut short
        b"\x00",  # a literal without its name
        b"\x3f\xe2\x1f",  # a table size of 4097
        bytes([0x82, 0x20]),  # a table size update after a field
        b"\x00\x81\xff\x00",  # Huffman padding that is not the EOS prefix
    ],
)
def test_malformed_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(hpack.HPACKError):
        decoder().decode(block)


def test_a_header_list_over_the_limit_is_refused() -> None:
    ours: HpackDecoder[list[Header]] = HpackDecoder(as_list, 100, 64, 1024)
    ours.decode(b"\x00\x01a" + bytes([30]) + b"v" * 30)  # 1 + 30 + 32 = 63 bytes
    with pytest.raises(hpack.OversizedHeaderListError):
        ours.decode(b"\x00\x01a" + bytes([40]) + b"v" * 40 + b"\x00\x01b\x01w")


def test_an_entry_larger_than_the_table_empties_it() -> None:
    ours = decoder()
    ours.decode(b"\x40\x01a\x01b")
    assert ours.table == ((b"a", b"b"),)
    ours.decode(b"\x3f\x11" + b"\x40\x01c\x01d")  # size 48: room for a + b (34), not c + d too
    assert ours.table == ((b"c", b"d"),)
    ours.decode(b"\x40\x01e" + bytes([100]) + b"v" * 100)  # 133 bytes
    assert ours.table == ()
