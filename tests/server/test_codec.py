"""The peer message codec: round trip, determinism, strict decoding, limits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv import limits
from raftkv.raft.messages import (
    LOCAL_MESSAGE_TYPES,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from raftkv.server.codec import (
    VERSION,
    WIRE_TYPE_NUMBERS,
    MessageDecodeError,
    MessageTooLargeError,
    decode_message,
    encode_message,
)
from raftkv.server.varint import put_uvarint

uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
wire_types = st.sampled_from(sorted(set(MessageType) - LOCAL_MESSAGE_TYPES, key=lambda t: t.value))
entries = st.builds(Entry, uint64, uint64, st.sampled_from(EntryType), st.binary(max_size=64))
node_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    nodes = draw(st.lists(node_ids, max_size=12, unique=True))
    split = draw(st.integers(min_value=0, max_value=len(nodes)))
    return ConfState(frozenset(nodes[:split]), frozenset(nodes[split:]))


snapshots = st.builds(
    Snapshot,
    st.builds(SnapshotMetadata, uint64, uint64, conf_states()),
    st.binary(max_size=32),
)
messages = st.builds(
    Message,
    type=wire_types,
    to=uint64,
    frm=uint64,
    term=uint64,
    log_term=uint64,
    index=uint64,
    entries=st.lists(entries, max_size=8).map(tuple),
    commit=uint64,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=uint64,
    context=st.binary(max_size=80),
)


def without_snapshot_data(msg: Message) -> Message:
    if msg.snapshot is None:
        return msg
    return dataclasses.replace(msg, snapshot=Snapshot(msg.snapshot.metadata, b""))


def sample_message() -> Message:
    conf_state = ConfState(frozenset({1, 2, 3}), frozenset({9}))
    return Message(
        MessageType.SNAP,
        to=2,
        frm=1,
        term=7,
        index=300,
        commit=299,
        entries=(Entry(7, 301, EntryType.NORMAL, b"put"), Entry(7, 302, EntryType.CONF_CHANGE)),
        snapshot=Snapshot(SnapshotMetadata(299, 6, conf_state), b"image"),
        reject=True,
        reject_hint=5,
        context=b"ctx",
    )


@settings(max_examples=300)
@given(messages)
def test_round_trip_over_all_fields(msg: Message) -> None:
    encoded = encode_message(msg)
    decoded = decode_message(encoded)
    assert decoded == without_snapshot_data(msg)
    # One encoding per message: the decoded message encodes to the same bytes.
    assert encode_message(decoded) == encoded


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_canonically_or_raise_the_typed_error(data: bytes) -> None:
    try:
        decoded = decode_message(data)
    except MessageDecodeError:
        return
    assert encode_message(decoded) == data


@settings(max_examples=100)
@given(messages, st.data())
def test_every_single_byte_change_is_caught_or_decodes_canonically(
    msg: Message, data: st.DataObject
) -> None:
    encoded = bytearray(encode_message(msg))
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[position] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = decode_message(bytes(encoded))
    except MessageDecodeError:
        return
    assert encode_message(decoded) == bytes(encoded)


def test_snapshot_data_is_not_carried() -> None:
    image = b"x" * (4 * limits.MIB)
    msg = dataclasses.replace(sample_message(), snapshot=Snapshot(SnapshotMetadata(10, 2), image))
    encoded = encode_message(msg)
    assert len(encoded) < 100
    decoded = decode_message(encoded)
    assert decoded.snapshot == Snapshot(SnapshotMetadata(10, 2), b"")


def test_every_truncation_is_rejected() -> None:
    encoded = encode_message(sample_message())
    for length in range(len(encoded)):
        with pytest.raises(MessageDecodeError):
            decode_message(encoded[:length])


def test_trailing_bytes_are_rejected() -> None:
    encoded = encode_message(sample_message())
    with pytest.raises(MessageDecodeError, match="trailing"):
        decode_message(encoded + b"\x00")


def header(type_number: int, version: int = VERSION) -> bytearray:
    """A message prefix up to (not including) the flags byte, all numeric fields zero."""
    return bytearray((version, type_number)) + bytes(7)


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(MessageDecodeError, match="version"):
        decode_message(bytes(header(3, version=VERSION + 1)) + b"\x00\x00\x00")


def test_minimal_message_decodes() -> None:
    # Sanity for the hand-built inputs below: zero fields, no flags, context or entries.
    decoded = decode_message(bytes(header(WIRE_TYPE_NUMBERS[MessageType.APP])) + b"\x00\x00\x00")
    assert decoded == Message(MessageType.APP)


@pytest.mark.parametrize("number", [10, 11, 19, 255])
def test_unknown_message_type_is_rejected(number: int) -> None:
    with pytest.raises(MessageDecodeError, match="unknown message type"):
        decode_message(bytes(header(number)) + b"\x00\x00\x00")


@pytest.mark.parametrize("local_type", sorted(LOCAL_MESSAGE_TYPES, key=str))
def test_local_message_types_never_cross_the_wire(local_type: MessageType) -> None:
    with pytest.raises(MessageDecodeError, match="local message type"):
        decode_message(bytes(header(WIRE_TYPE_NUMBERS[local_type])) + b"\x00\x00\x00")
    with pytest.raises(AssertionError):
        encode_message(Message(local_type, to=2, frm=1))


def test_unknown_flag_bits_are_rejected() -> None:
    with pytest.raises(MessageDecodeError, match="flag"):
        decode_message(bytes(header(3)) + b"\x04\x00\x00")


def test_unknown_entry_type_is_rejected() -> None:
    data = header(3) + b"\x00\x00" + b"\x01" + b"\x01\x01" + b"\x07" + b"\x00"
    with pytest.raises(MessageDecodeError, match="entry type"):
        decode_message(bytes(data))


def test_over_long_and_non_canonical_varints_are_rejected() -> None:
    over_long = bytearray((VERSION, 3)) + b"\x80" * 10 + b"\x01"
    with pytest.raises(MessageDecodeError, match="longer than 10 bytes"):
        decode_message(bytes(over_long))
    too_big = bytearray((VERSION, 3)) + b"\xff" * 9 + b"\x02"  # 2**64 and more
    with pytest.raises(MessageDecodeError, match="oversized"):
        decode_message(bytes(too_big))
    redundant_zero = bytearray((VERSION, 3)) + b"\x81\x00" + bytes(6) + b"\x00\x00\x00"
    with pytest.raises(MessageDecodeError, match="non-canonical"):
        decode_message(bytes(redundant_zero))


def snapshot_message_bytes(voters: list[int], learners: list[int]) -> bytes:
    out = header(WIRE_TYPE_NUMBERS[MessageType.SNAP]) + b"\x02\x00\x00"
    put_uvarint(out, 10)
    put_uvarint(out, 2)
    for nodes in (voters, learners):
        put_uvarint(out, len(nodes))
        for node in nodes:
            put_uvarint(out, node)
    return bytes(out)


def test_conf_state_ids_must_be_canonical() -> None:
    decoded = decode_message(snapshot_message_bytes([1, 2], [5]))
    assert decoded.snapshot is not None
    assert decoded.snapshot.metadata.conf_state == ConfState(frozenset({1, 2}), frozenset({5}))
    for voters, learners, problem in [
        ([2, 1], [], "ascending"),
        ([1, 1], [], "ascending"),
        ([1, 2], [2], "both voter and learner"),
        ([0, 1], [], "node id 0"),
    ]:
        with pytest.raises(MessageDecodeError, match=problem):
            decode_message(snapshot_message_bytes(voters, learners))


def test_more_conf_nodes_than_the_limit_are_rejected() -> None:
    voters = list(range(1, limits.SNAPSHOT_MAX_CONF_NODES + 1))
    decode_message(snapshot_message_bytes(voters, []))  # exactly at the limit
    with pytest.raises(MessageDecodeError, match="learners exceed the limit"):
        decode_message(snapshot_message_bytes(voters, [limits.SNAPSHOT_MAX_CONF_NODES + 1]))


def test_entry_count_beyond_the_limit_is_rejected() -> None:
    count = limits.PEER_MAX_ENTRIES_PER_MESSAGE + 1
    data = header(3) + b"\x00\x00"
    put_uvarint(data, count)
    # Empty entries are four bytes each, so the count is bounded by the limit, not the bytes.
    data += b"\x01\x01\x00\x00" * count
    with pytest.raises(MessageDecodeError, match="entries exceed the limit"):
        decode_message(bytes(data))
    with pytest.raises(MessageTooLargeError, match="entries"):
        encode_message(Message(MessageType.APP, entries=(Entry(1, 1),) * count))


def test_entry_count_beyond_the_remaining_bytes_is_rejected() -> None:
    data = header(3) + b"\x00\x00" + b"\x05" + b"\x01\x01\x00\x00"
    with pytest.raises(MessageDecodeError, match="remaining bytes"):
        decode_message(bytes(data))


def test_largest_append_fits_and_larger_messages_are_refused() -> None:
    # Raft's largest APP: entries up to the per-message size plus one request of the
    # largest size --max-request-bytes allows.
    filler = [Entry(5, i, EntryType.NORMAL, b"f" * 1000) for i in range(1, 1000)]
    big = Entry(5, 1000, EntryType.NORMAL, b"b" * limits.MAX_REQUEST_BYTES_CEILING)
    largest = Message(MessageType.APP, to=2, frm=1, term=5, entries=(*filler, big))
    assert decode_message(encode_message(largest)) == largest
    too_large = dataclasses.replace(largest, entries=(big, big))
    with pytest.raises(MessageTooLargeError, match="exceeds"):
        encode_message(too_large)
    with pytest.raises(MessageDecodeError, match="exceeds"):
        decode_message(bytes(limits.PEER_MAX_MESSAGE_BYTES + 1))
