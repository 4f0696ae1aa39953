"""The DB_KEY value: one KeyValue in a fixed header plus the key and value bytes.

Layout (big-endian)::

    u8  format (1)
    i64 create_revision
    i64 mod_revision
    i64 version
    i64 lease
    u32 key length
    key bytes, then value bytes (the rest)

etcd stores a protobuf ``mvccpb.KeyValue``; a fixed struct is cheaper to
encode and decode in Python and as compact for small keys. A tombstone stores
the key with zero create_revision, version and lease (etcd stores just the
key); its mod_revision is the delete's revision, so the value describes itself.
"""

from __future__ import annotations

import struct

from raftkv.storage.mvcc.txn import KeyValue

FORMAT_V1 = 1
_HEADER = struct.Struct(">BqqqqI")
HEADER_BYTES = _HEADER.size


def encode(kv: KeyValue) -> bytes:
    header = _HEADER.pack(
        FORMAT_V1, kv.create_revision, kv.mod_revision, kv.version, kv.lease, len(kv.key)
    )
    return b"".join((header, kv.key, kv.value))


def decode(data: bytes) -> KeyValue:
    fmt, create, mod, version, lease, key_length = _HEADER.unpack_from(data)
    assert fmt == FORMAT_V1, f"unknown KeyValue format {fmt}"
    key_end = HEADER_BYTES + key_length
    assert key_end <= len(data), "KeyValue key runs past the value"
    return KeyValue(data[HEADER_BYTES:key_end], create, mod, version, data[key_end:], lease)


def decode_meta(data: bytes) -> tuple[bytes, int, int, int]:
    """(key, create_revision, version, lease) without copying the value (index restore)."""
    fmt, create, _mod, version, lease, key_length = _HEADER.unpack_from(data)
    assert fmt == FORMAT_V1, f"unknown KeyValue format {fmt}"
    return bytes(data[HEADER_BYTES : HEADER_BYTES + key_length]), create, version, lease


def encode_tombstone(key: bytes, mod_revision: int) -> bytes:
    return encode(KeyValue(key=key, mod_revision=mod_revision))
