"""Defragment reclaims the space that compaction freed, and keeps every live byte."""

from __future__ import annotations

from pathlib import Path

from raftkv.storage.backend import Backend
from raftkv.storage.mvcc import DeleteRangeRequest, KVStore, PutRequest, RangeRequest


def test_defragment_shrinks_the_file_and_keeps_the_data(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"), map_size_bytes=1 << 30)
    kv = KVStore(backend)
    value = b"x" * 4096
    with backend.write() as batch:
        for number in range(2000):
            kv.put(batch, PutRequest(key=f"k{number:05d}".encode(), value=value))
        batch.set_consistent_index(10, 2)
    with backend.write() as batch:
        kv.delete_range(batch, DeleteRangeRequest(key=b"k00100", range_end=b"k99999"))
        kv.compact(batch, kv.current_revision)
        batch.set_consistent_index(11, 2)
    before_bytes = backend.size_bytes()
    backend.defragment()
    after_bytes = backend.size_bytes()
    assert after_bytes < before_bytes // 4, (before_bytes, after_bytes)
    assert backend.consistent_index().index == 11
    kv.restore()
    live = kv.range(RangeRequest(key=b"\0", range_end=b"\0"))
    assert [item.key for item in live.kvs] == [f"k{n:05d}".encode() for n in range(100)]
    assert all(item.value == value for item in live.kvs)
    backend.close()
