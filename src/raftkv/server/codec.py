"""The binary codec of Raft messages between members (the payload of a transport frame).

Format (every integer is an unsigned LEB128 varint, ``raftkv.server.varint``)::

    message  = version:u8 type:u8 to frm term log_term index commit reject_hint
               flags:u8 context:bytes entry_count entry* [snapshot]
    entry    = term index type:u8 data:bytes
    snapshot = index term voter_count voter* learner_count learner*
    bytes    = length raw

``flags`` bit 0 is ``reject``, bit 1 says a snapshot follows. Voter and learner ids are
written in strictly ascending order. Message type numbers are etcd's raftpb numbers.

A snapshot's ``data`` is never carried: it may be gigabytes, and the transport streams
it separately from a file. Only the metadata travels, and decoding yields
``Snapshot(metadata, data=b"")``.

Deterministic (one encoding per message) and strict: decoding rejects an unknown version,
type, entry type or flag bit, a local-only message type, a truncated or over-long varint,
unsorted or overlapping node ids, trailing bytes, and more entries, nodes or bytes than
``raftkv.limits`` allows, with ``MessageDecodeError``.
"""

from __future__ import annotations

from raftkv import limits
from raftkv.raft.messages import (
    LOCAL_MESSAGE_TYPES,
    NO_NODE,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from raftkv.server.varint import ByteReader, put_uvarint

VERSION = 1

_M = MessageType
# etcd's raftpb.MessageType numbers. The local types keep theirs so that decoding can name
# them; they are never encoded. raftkv has no MsgUnreachable (10) or MsgSnapStatus (11).
WIRE_TYPE_NUMBERS: dict[MessageType, int] = {
    _M.HUP: 0,
    _M.BEAT: 1,
    _M.PROP: 2,
    _M.APP: 3,
    _M.APP_RESP: 4,
    _M.VOTE: 5,
    _M.VOTE_RESP: 6,
    _M.SNAP: 7,
    _M.HEARTBEAT: 8,
    _M.HEARTBEAT_RESP: 9,
    _M.CHECK_QUORUM: 12,
    _M.TRANSFER_LEADER: 13,
    _M.TIMEOUT_NOW: 14,
    _M.READ_INDEX: 15,
    _M.READ_INDEX_RESP: 16,
    _M.PRE_VOTE: 17,
    _M.PRE_VOTE_RESP: 18,
}
_TYPES_BY_NUMBER = {number: kind for kind, number in WIRE_TYPE_NUMBERS.items()}
_ENTRY_TYPES_BY_NUMBER = {kind.value: kind for kind in EntryType}

_FLAG_REJECT = 1 << 0
_FLAG_SNAPSHOT = 1 << 1
_KNOWN_FLAGS = _FLAG_REJECT | _FLAG_SNAPSHOT

assert set(WIRE_TYPE_NUMBERS) == set(MessageType), "every message type needs a wire number"
assert len(_TYPES_BY_NUMBER) == len(WIRE_TYPE_NUMBERS), "wire numbers must be distinct"
assert all(0 <= kind.value <= 0xFF for kind in EntryType)


class MessageDecodeError(ValueError):
    """The bytes are not a message this version can read."""


class MessageTooLargeError(ValueError):
    """The message exceeds what a peer accepts (``PEER_MAX_MESSAGE_BYTES`` or entries)."""


# --- Encoding ------------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """The wire bytes of ``msg`` (a snapshot's data is left out).

    Raises MessageTooLargeError beyond the peer limits; a local type is a caller bug."""
    assert msg.type not in LOCAL_MESSAGE_TYPES, f"{msg.type.name} never crosses the wire"
    if len(msg.entries) > limits.PEER_MAX_ENTRIES_PER_MESSAGE:
        raise MessageTooLargeError(
            f"{len(msg.entries)} entries exceed {limits.PEER_MAX_ENTRIES_PER_MESSAGE}"
        )
    out = bytearray((VERSION, WIRE_TYPE_NUMBERS[msg.type]))
    for value in (msg.to, msg.frm, msg.term, msg.log_term, msg.index, msg.commit):
        put_uvarint(out, value)
    put_uvarint(out, msg.reject_hint)
    has_snapshot = msg.snapshot is not None
    out.append((_FLAG_REJECT if msg.reject else 0) | (_FLAG_SNAPSHOT if has_snapshot else 0))
    _put_bytes(out, msg.context)
    put_uvarint(out, len(msg.entries))
    for entry in msg.entries:
        _put_entry(out, entry)
    if msg.snapshot is not None:
        _put_snapshot_metadata(out, msg.snapshot.metadata)
    if len(out) > limits.PEER_MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"{msg.type.name} of {len(out)} bytes exceeds {limits.PEER_MAX_MESSAGE_BYTES}"
        )
    return bytes(out)


def _put_bytes(out: bytearray, value: bytes) -> None:
    put_uvarint(out, len(value))
    out += value


def _put_entry(out: bytearray, entry: Entry) -> None:
    put_uvarint(out, entry.term)
    put_uvarint(out, entry.index)
    out.append(entry.type.value)
    _put_bytes(out, entry.data)


def _put_snapshot_metadata(out: bytearray, metadata: SnapshotMetadata) -> None:
    conf_state = metadata.conf_state
    node_count = len(conf_state.voters) + len(conf_state.learners)
    assert node_count <= limits.SNAPSHOT_MAX_CONF_NODES, node_count
    put_uvarint(out, metadata.index)
    put_uvarint(out, metadata.term)
    for nodes in (conf_state.voters, conf_state.learners):
        put_uvarint(out, len(nodes))
        for node in sorted(nodes):
            put_uvarint(out, node)


# --- Decoding ------------------------------------------------------------------------


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """The message ``data`` holds; MessageDecodeError if it is malformed or over a limit."""
    if len(data) > limits.PEER_MAX_MESSAGE_BYTES:
        raise MessageDecodeError(
            f"message of {len(data)} bytes exceeds {limits.PEER_MAX_MESSAGE_BYTES}"
        )
    reader = _Reader(data)
    version = reader.byte()
    if version != VERSION:
        raise MessageDecodeError(f"message version {version}, expected {VERSION}")
    msg_type = reader.message_type()
    to, frm, term, log_term, index, commit, reject_hint = (reader.uvarint() for _ in range(7))
    flags = reader.byte()
    if flags & ~_KNOWN_FLAGS:
        raise MessageDecodeError(f"unknown flag bits {flags:#x}")
    context = reader.raw()
    entry_count = reader.count(limits.PEER_MAX_ENTRIES_PER_MESSAGE, "entries")
    entries = tuple(reader.entry() for _ in range(entry_count))
    snapshot = Snapshot(reader.snapshot_metadata()) if flags & _FLAG_SNAPSHOT else None
    if not reader.at_end():
        raise MessageDecodeError(f"{len(data) - reader.pos} trailing bytes")
    return Message(
        type=msg_type,
        to=to,
        frm=frm,
        term=term,
        log_term=log_term,
        index=index,
        entries=entries,
        commit=commit,
        snapshot=snapshot,
        reject=bool(flags & _FLAG_REJECT),
        reject_hint=reject_hint,
        context=context,
    )


class _Reader(ByteReader):
    error = MessageDecodeError
    what = "message"

    def count(self, maximum: int, what: str) -> int:
        # Every item takes at least one byte: a count beyond the remaining bytes is malformed.
        value = self.uvarint()
        if value > maximum:
            raise MessageDecodeError(f"{value} {what} exceed the limit {maximum}")
        if value > len(self.data) - self.pos:
            raise MessageDecodeError(f"{value} {what} exceed the remaining bytes")
        return value

    def message_type(self) -> MessageType:
        number = self.byte()
        msg_type = _TYPES_BY_NUMBER.get(number)
        if msg_type is None:
            raise MessageDecodeError(f"unknown message type {number}")
        if msg_type in LOCAL_MESSAGE_TYPES:
            raise MessageDecodeError(f"local message type {msg_type.name} is never sent")
        return msg_type

    def entry(self) -> Entry:
        term = self.uvarint()
        index = self.uvarint()
        number = self.byte()
        entry_type = _ENTRY_TYPES_BY_NUMBER.get(number)
        if entry_type is None:
            raise MessageDecodeError(f"unknown entry type {number}")
        return Entry(term, index, entry_type, self.raw())

    def snapshot_metadata(self) -> SnapshotMetadata:
        index = self.uvarint()
        term = self.uvarint()
        voters = self.node_ids(limits.SNAPSHOT_MAX_CONF_NODES, "voters")
        learners = self.node_ids(limits.SNAPSHOT_MAX_CONF_NODES - len(voters), "learners")
        if set(voters) & set(learners):
            raise MessageDecodeError("a node is both voter and learner")
        conf_state = ConfState(frozenset(voters), frozenset(learners))
        return SnapshotMetadata(index, term, conf_state)

    def node_ids(self, maximum: int, what: str) -> list[int]:
        count = self.count(maximum, what)
        ids = [self.uvarint() for _ in range(count)]
        if NO_NODE in ids:
            raise MessageDecodeError(f"node id {NO_NODE} among the {what}")
        if any(before >= after for before, after in zip(ids, ids[1:], strict=False)):
            raise MessageDecodeError(f"{what} not in strictly ascending order")
        return ids
