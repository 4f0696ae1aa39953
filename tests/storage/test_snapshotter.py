"""Snapshot files (atomic save, verified load, purge) and snapshot streaming."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.raft.messages import ConfState, Snapshot, SnapshotMetadata
from raftkv.sim.disk import SimDisk
from raftkv.storage.disk import Disk, OsDisk, join
from raftkv.storage.errors import CorruptionError
from raftkv.storage.snap import (
    SnapshotNotFoundError,
    SnapshotReceiver,
    Snapshotter,
    chunks,
    decode_snapshot,
    encode_snapshot,
)


def make_snapshot(index: int, term: int = 1, data: bytes = b"state") -> Snapshot:
    conf = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    return Snapshot(SnapshotMetadata(index=index, term=term, conf_state=conf), data)


@pytest.fixture(params=["os", "sim"])
def disk_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Disk, str]]:
    if request.param == "os":
        yield OsDisk(), str(tmp_path / "snap")
    else:
        yield SimDisk(), "/data/snap"


def rewrite(disk: Disk, path: str, content: bytes) -> None:
    file = disk.create(path)
    file.write(content)
    file.sync()
    file.close()


node_ids = st.integers(min_value=1, max_value=2**64 - 1)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    members = draw(st.lists(node_ids, max_size=8, unique=True))
    split = draw(st.integers(min_value=0, max_value=len(members)))
    conf = ConfState(voters=frozenset(members[:split]), learners=frozenset(members[split:]))
    index = draw(st.integers(min_value=1, max_value=2**64 - 1))
    term = draw(st.integers(min_value=1, max_value=2**64 - 1))
    data = draw(st.binary(max_size=3000))
    return Snapshot(SnapshotMetadata(index=index, term=term, conf_state=conf), data)


# -- Files --------------------------------------------------------------------------


def test_load_newest_of_nothing_is_none(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    assert Snapshotter(disk, directory).load_newest() is None


def test_save_and_load_round_trip(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    snapshotter = Snapshotter(disk, directory)
    snapshot = make_snapshot(index=42, term=7, data=bytes(range(256)) * 10)
    path = snapshotter.save(snapshot)
    assert path == join(directory, "0000000000000007-000000000000002a.snap")
    assert disk.list_dir(directory) == ["0000000000000007-000000000000002a.snap"]
    assert snapshotter.load_newest() == snapshot
    assert snapshotter.load(42, 7) == snapshot
    with pytest.raises(SnapshotNotFoundError):
        snapshotter.load(41, 7)


def test_newest_is_by_index_and_purge_keeps_the_newest(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    snapshotter = Snapshotter(disk, directory)
    for index, term in [(10, 1), (30, 2), (20, 2), (40, 3), (50, 3)]:
        snapshotter.save(make_snapshot(index, term))
    newest = snapshotter.load_newest()
    assert newest is not None and newest.metadata.index == 50
    leftover = join(directory, "0000000000000003-0000000000000060.snap.tmp")
    rewrite(disk, leftover, b"half a snapshot")
    assert snapshotter.load_newest() == newest  # temp files are never loaded
    removed = snapshotter.purge(keep=2)
    assert len(removed) == 4 and leftover in removed
    assert snapshotter.names() == [
        "0000000000000003-0000000000000028.snap",
        "0000000000000003-0000000000000032.snap",
    ]


@pytest.mark.parametrize("offset", [0, 9, 13, 30, 40, 70, 90, -1])
def test_flipped_byte_is_corruption_naming_the_file(
    disk_dir: tuple[Disk, str], offset: int
) -> None:
    disk, directory = disk_dir
    snapshotter = Snapshotter(disk, directory)
    snapshotter.save(make_snapshot(5, data=b"x" * 100))
    path = snapshotter.save(make_snapshot(6, data=b"y" * 100))
    content = bytearray(disk.read(path))
    content[offset] ^= 0x01
    rewrite(disk, path, bytes(content))
    with pytest.raises(CorruptionError) as caught:
        snapshotter.load_newest()  # no silent fallback to the snapshot at 5
    assert caught.value.path == path
    assert path in str(caught.value)


def test_truncated_file_is_corruption(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    snapshotter = Snapshotter(disk, directory)
    path = snapshotter.save(make_snapshot(6, data=b"y" * 100))
    for size in (0, 10, 50, len(disk.read(path)) - 1):
        rewrite(disk, path, disk.read(path)[:size])
        with pytest.raises(CorruptionError, match=path):
            snapshotter.load_newest()


def test_file_whose_name_disagrees_with_its_content_is_corruption(
    disk_dir: tuple[Disk, str],
) -> None:
    disk, directory = disk_dir
    snapshotter = Snapshotter(disk, directory)
    path = snapshotter.save(make_snapshot(6, term=2))
    disk.rename(path, join(directory, "0000000000000002-0000000000000009.snap"))
    with pytest.raises(CorruptionError, match="unlike its name"):
        snapshotter.load_newest()


def test_save_is_durable_and_atomic_across_a_crash() -> None:
    for seed in range(30):
        disk = SimDisk()
        snapshotter = Snapshotter(disk, "/snap")
        snapshot = make_snapshot(9, data=random.Random(seed).randbytes(2000))
        snapshotter.save(snapshot)
        disk.crash(random.Random(seed))
        assert snapshotter.load_newest() == snapshot


def test_unfinished_save_leaves_no_snapshot() -> None:
    disk = SimDisk()
    snapshotter = Snapshotter(disk, "/snap")
    disk.makedirs("/snap")
    file = disk.create("/snap/0000000000000001-0000000000000009.snap.tmp")
    file.write(encode_snapshot(make_snapshot(9))[:30])
    disk.crash(random.Random(1))
    assert snapshotter.load_newest() is None


@settings(max_examples=50)
@given(snapshots())
def test_encode_decode_round_trip(snapshot: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(snapshot), "<test>") == snapshot


# -- Streaming ------------------------------------------------------------------------


@settings(max_examples=50)
@given(snapshots(), st.integers(min_value=1, max_value=700))
def test_stream_round_trip(snapshot: Snapshot, chunk_bytes: int) -> None:
    pieces = list(chunks(snapshot, chunk_bytes))
    assert all(0 < len(piece) <= chunk_bytes for piece in pieces)
    assert b"".join(pieces) == encode_snapshot(snapshot)
    receiver = SnapshotReceiver("<stream from node 2>", chunk_bytes=chunk_bytes)
    for piece in pieces:
        receiver.feed(piece)
    assert receiver.finish() == snapshot


def test_default_chunks_are_bounded() -> None:
    from raftkv import limits

    snapshot = make_snapshot(3, data=bytes(3 * limits.SNAPSHOT_CHUNK_BYTES + 5))
    pieces = list(chunks(snapshot))
    assert len(pieces) == 4
    assert all(len(piece) <= limits.SNAPSHOT_CHUNK_BYTES for piece in pieces)


def _corrupted_stream(position: int) -> list[bytes]:
    pieces = list(chunks(make_snapshot(8, data=bytes(range(256)) * 8), 300))
    chunk = bytearray(pieces[position])
    chunk[len(chunk) // 2] ^= 0x80
    pieces[position] = bytes(chunk)
    return pieces


@pytest.mark.parametrize("position", [0, 3, -1])
def test_corrupted_chunk_is_rejected(position: int) -> None:
    source = "<snapshot stream from node 3>"
    receiver = SnapshotReceiver(source, chunk_bytes=300)
    with pytest.raises(CorruptionError) as caught:
        for piece in _corrupted_stream(position):
            receiver.feed(piece)
        receiver.finish()
    assert caught.value.path == source


def test_short_stream_is_rejected() -> None:
    pieces = list(chunks(make_snapshot(8, data=bytes(1000)), 300))
    receiver = SnapshotReceiver("<node 3>", chunk_bytes=300)
    for piece in pieces[:-1]:
        receiver.feed(piece)
    with pytest.raises(CorruptionError, match="stream ended"):
        receiver.finish()


def test_stream_longer_than_announced_is_rejected() -> None:
    receiver = SnapshotReceiver("<node 3>")
    receiver.feed(encode_snapshot(make_snapshot(8)))
    with pytest.raises(CorruptionError, match="longer"):
        receiver.feed(b"extra")


def test_stream_size_is_bounded() -> None:
    snapshot = make_snapshot(8, data=bytes(5000))
    receiver = SnapshotReceiver("<node 3>", max_bytes=2000, chunk_bytes=1000)
    with pytest.raises(CorruptionError, match="limit|over"):
        for piece in chunks(snapshot, 1000):
            receiver.feed(piece)
    oversized = SnapshotReceiver("<node 3>", max_bytes=4000, chunk_bytes=1000)
    with pytest.raises(CorruptionError, match="exceeds"):
        oversized.feed(bytes(1001))


def test_stream_with_bad_magic_fails_at_once() -> None:
    receiver = SnapshotReceiver("<node 3>")
    with pytest.raises(CorruptionError, match="magic"):
        receiver.feed(b"NOTASNAPSHOT" + bytes(100))
