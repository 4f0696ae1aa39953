"""The bbolt writer and reader: round trips, bbolt's own check, and damaged files."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.storage.etcdsnap.bbolt import (
    BRANCH_PAGE,
    LEAF_PAGE,
    META_FIELDS,
    PAGE_HEADER,
    BoltReader,
    BoltWriter,
    fnv1a_64,
)
from raftkv.storage.etcdsnap.errors import SnapshotFormatError

SMALL_PAGE_BYTES = 512  # small pages: deep trees and overflow pages from few keys

Bucket = dict[bytes, bytes]


def write(buckets: dict[bytes, Bucket], page_bytes: int = SMALL_PAGE_BYTES) -> bytes:
    handle = io.BytesIO()
    writer = BoltWriter(handle, page_bytes=page_bytes)
    for name in sorted(buckets):
        writer.add_bucket(name, sorted(buckets[name].items()))
    size = writer.finish()
    data = handle.getvalue()
    assert len(data) == size and size % page_bytes == 0
    return data


def read(data: bytes) -> dict[bytes, Bucket]:
    reader = BoltReader(memoryview(data))
    assert reader.check() == []
    contents = {}
    for bucket in reader.buckets():
        assert bucket.is_bucket
        items = [(entry.key, entry.value) for entry in reader.items(bucket)]
        assert all(not entry.is_bucket for entry in reader.items(bucket))
        assert [key for key, _ in items] == sorted(key for key, _ in items)
        contents[bucket.key] = dict(items)
    return contents


def page_types(data: bytes, page_bytes: int = SMALL_PAGE_BYTES) -> list[int]:
    """The flags of every page that starts a page (overflow pages are skipped)."""
    flags = []
    pgid = 0
    while pgid * page_bytes < len(data):
        _, page_flags, _, overflow = PAGE_HEADER.unpack_from(data, pgid * page_bytes)
        flags.append(page_flags)
        pgid += overflow + 1
    return flags


keys = st.binary(min_size=1, max_size=40)
values = st.one_of(
    st.binary(max_size=60),
    st.binary(min_size=SMALL_PAGE_BYTES, max_size=4 * SMALL_PAGE_BYTES),  # overflow pages
)
bucket_contents = st.dictionaries(keys, values, max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.binary(min_size=1, max_size=12), bucket_contents, max_size=5))
def test_what_is_written_reads_back(buckets: dict[bytes, Bucket]) -> None:
    assert read(write(buckets)) == buckets


def test_many_keys_make_branch_pages_and_large_values_overflow() -> None:
    many = {b"k%06d" % i: b"v" * (i % 30) for i in range(20_000)}
    large = {b"big": b"x" * 10 * SMALL_PAGE_BYTES, b"small": b"y"}
    data = write({b"many": many, b"large": large})
    assert read(data) == {b"many": many, b"large": large}
    types = page_types(data)
    assert types.count(BRANCH_PAGE) > 10  # several levels of branches
    reader = BoltReader(memoryview(data))
    overflowing = [
        PAGE_HEADER.unpack_from(data, pgid * SMALL_PAGE_BYTES)[3]
        for pgid in range(2, reader.meta.high_water_pgid)
        if PAGE_HEADER.unpack_from(data, pgid * SMALL_PAGE_BYTES)[0] == pgid
        and PAGE_HEADER.unpack_from(data, pgid * SMALL_PAGE_BYTES)[1] == LEAF_PAGE
    ]
    assert max(overflowing) >= 10


def test_empty_database_and_empty_bucket() -> None:
    assert read(write({})) == {}
    assert read(write({b"empty": {}})) == {b"empty": {}}


def test_default_page_size_is_4k() -> None:
    data = write({b"b": {b"k": b"v"}}, page_bytes=4096)
    reader = BoltReader(memoryview(data))
    assert reader.meta.page_bytes == 4096 and reader.meta.txid == 1


def _corrupt_meta(data: bytes, page_id: int) -> bytes:
    page_bytes = BoltReader(memoryview(data)).meta.page_bytes
    at = page_id * page_bytes + PAGE_HEADER.size + 12  # the flags field, under the checksum
    return data[:at] + b"\xff" + data[at + 1 :]


def test_a_damaged_meta_page_falls_back_to_the_other() -> None:
    data = write({b"b": {b"k": b"v"}})
    for page_id in (0, 1):
        damaged = _corrupt_meta(data, page_id)
        assert read(damaged) == {b"b": {b"k": b"v"}}
    with pytest.raises(SnapshotFormatError, match="no valid meta page"):
        BoltReader(memoryview(_corrupt_meta(_corrupt_meta(data, 0), 1)))


def test_the_meta_checksum_is_fnv1a_64_of_the_fields() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    data = write({b"b": {}})
    fields = data[PAGE_HEADER.size : PAGE_HEADER.size + META_FIELDS.size]
    (checksum,) = struct.unpack_from("<Q", data, PAGE_HEADER.size + META_FIELDS.size)
    assert checksum == fnv1a_64(fields)


def test_a_truncated_file_is_refused() -> None:
    data = write({b"b": {b"k%d" % i: b"v" * 50 for i in range(100)}})
    with pytest.raises(SnapshotFormatError, match="truncated"):
        BoltReader(memoryview(data[: len(data) - SMALL_PAGE_BYTES]))


def test_check_finds_pages_nobody_uses_and_bad_pointers() -> None:
    data = write({b"b": {b"k%d" % i: b"v" * 50 for i in range(100)}})
    reader = BoltReader(memoryview(data))
    # A branch that points at a page outside the file fails reading and the check.
    root_pgid = reader.bucket(b"b")
    assert root_pgid is not None
    (bucket_root, _) = struct.unpack_from("<QQ", root_pgid.value)
    header = PAGE_HEADER.unpack_from(data, bucket_root * SMALL_PAGE_BYTES)
    assert header[1] == BRANCH_PAGE
    element_at = bucket_root * SMALL_PAGE_BYTES + PAGE_HEADER.size
    broken = bytearray(data)
    struct.pack_into("<Q", broken, element_at + 8, 10**6)  # the first child's pgid
    broken_reader = BoltReader(memoryview(bytes(broken)))
    assert any("outside" in problem for problem in broken_reader.check())
    bucket = broken_reader.bucket(b"b")
    assert bucket is not None
    with pytest.raises(SnapshotFormatError, match="outside"):
        list(broken_reader.items(bucket))
    # Pointing it at its sibling leaves one page unreachable and one referenced twice.
    (second_child,) = struct.unpack_from("<Q", data, element_at + 16 + 8)
    struct.pack_into("<Q", broken, element_at + 8, second_child)
    problems = BoltReader(memoryview(bytes(broken))).check()
    assert any("multiple references" in problem for problem in problems)
    assert any("unreachable unfreed" in problem for problem in problems)


def test_a_page_that_lies_about_its_id_is_refused() -> None:
    data = bytearray(write({b"b": {b"k": b"v"}}))
    struct.pack_into("<Q", data, 2 * SMALL_PAGE_BYTES, 99)
    reader = BoltReader(memoryview(bytes(data)))
    bucket = reader.bucket(b"b")
    assert bucket is not None
    with pytest.raises(SnapshotFormatError, match="says it is page 99"):
        list(reader.items(bucket))
