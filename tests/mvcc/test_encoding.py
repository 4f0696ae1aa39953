"""Revision keys and KeyValue encoding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from raftkv.storage.mvcc import KeyValue
from raftkv.storage.mvcc.encoding import decode, decode_meta, encode
from raftkv.storage.mvcc.revision import (
    SUB_LIMIT,
    main_of,
    pack,
    parse_revision_key,
    revision_key,
    sub_of,
)

revisions = st.tuples(st.integers(0, 2**40), st.integers(0, SUB_LIMIT - 1))


@given(revisions, st.booleans())
def test_revision_key_round_trip(revision: tuple[int, int], tombstone: bool) -> None:
    main, sub = revision
    packed = pack(main, sub)
    assert (main_of(packed), sub_of(packed)) == (main, sub)
    assert parse_revision_key(revision_key(packed, tombstone)) == (packed, tombstone)


@given(revisions, revisions, st.booleans(), st.booleans())
def test_revision_keys_sort_like_revisions(
    left: tuple[int, int], right: tuple[int, int], left_tomb: bool, right_tomb: bool
) -> None:
    if left == right:
        return
    left_key = revision_key(pack(*left), left_tomb)
    right_key = revision_key(pack(*right), right_tomb)
    assert (left_key < right_key) == (left < right)


@given(
    st.builds(
        KeyValue,
        key=st.binary(min_size=1, max_size=64),
        create_revision=st.integers(0, 2**62),
        mod_revision=st.integers(0, 2**62),
        version=st.integers(0, 2**62),
        value=st.binary(max_size=300),
        lease=st.integers(-(2**63), 2**63 - 1),
    )
)
def test_key_value_round_trip(kv: KeyValue) -> None:
    data = encode(kv)
    assert decode(data) == kv
    assert decode_meta(data) == (kv.key, kv.create_revision, kv.version, kv.lease)
