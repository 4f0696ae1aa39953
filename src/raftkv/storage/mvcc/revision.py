"""Revisions: (main, sub) packed into one int, and their DB_KEY encoding.

etcd's revision is a pair: ``main`` is the store revision a request created
(one per Put, DeleteRange or Txn that changed something), ``sub`` numbers the
changes inside that request (etcd ``server/storage/mvcc/revision.go``). We pack
the pair as ``main << SUB_BITS | sub`` so that comparing revisions is comparing
ints, and so that the index keeps one small int per revision instead of a pair.

On disk (DB_KEY) a revision is the 8-byte big-endian packed int, which sorts
in revision order; a tombstone (the change a delete makes) carries a trailing
``b"t"`` like etcd's ``markTombstone``. A revision is never both, so the marker
does not disturb the order.
"""

from __future__ import annotations

import struct

from raftkv import limits

SUB_BITS = limits.MVCC_REVISION_SUB_BITS
SUB_LIMIT = limits.MVCC_MAX_CHANGES_PER_REVISION
MAIN_MAX = limits.MVCC_MAX_MAIN_REVISION

TOMBSTONE_MARK = b"t"
_PACKED = struct.Struct(">Q")
REVISION_KEY_BYTES = _PACKED.size
TOMBSTONE_KEY_BYTES = REVISION_KEY_BYTES + len(TOMBSTONE_MARK)

assert SUB_LIMIT == 1 << SUB_BITS
assert MAIN_MAX << SUB_BITS | (SUB_LIMIT - 1) < 2**64


def pack(main: int, sub: int) -> int:
    """The packed revision (main, sub); ordering packed ints orders revisions."""
    assert 0 <= main <= MAIN_MAX, f"main revision {main} out of range"
    assert 0 <= sub < SUB_LIMIT, f"sub revision {sub} out of range"
    return main << SUB_BITS | sub


def main_of(packed: int) -> int:
    return packed >> SUB_BITS


def sub_of(packed: int) -> int:
    return packed & (SUB_LIMIT - 1)


def revision_key(packed: int, tombstone: bool = False) -> bytes:
    """The DB_KEY key of a revision."""
    assert packed >= 0
    key = _PACKED.pack(packed)
    return key + TOMBSTONE_MARK if tombstone else key


def parse_revision_key(key: bytes) -> tuple[int, bool]:
    """(packed revision, is tombstone) of a DB_KEY key."""
    if len(key) == REVISION_KEY_BYTES:
        return _PACKED.unpack(key)[0], False
    assert len(key) == TOMBSTONE_KEY_BYTES, f"bad revision key length {len(key)}"
    assert key[REVISION_KEY_BYTES:] == TOMBSTONE_MARK, f"bad revision key mark {key!r}"
    return _PACKED.unpack_from(key)[0], True
