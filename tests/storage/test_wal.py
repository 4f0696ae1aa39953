"""WAL round trips, segments, release, torn-tail repair, and corruption detection."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from raftkv.sim.disk import SimDisk
from raftkv.storage.disk import Disk, OsDisk, join
from raftkv.storage.errors import CorruptionError, DiskError
from raftkv.storage.wal import (
    WAL,
    Replay,
    SnapshotMarker,
    SnapshotMismatchError,
    WALExistsError,
    WALNotFoundError,
    build_memory_storage,
)
from raftkv.storage.wal.record import (
    HEADER_BYTES,
    RecordType,
    encode_hard_state,
    encode_record,
)
from raftkv.storage.wal.segment import scan_segment

SMALL_SEGMENT_BYTES = 512


def entries(first: int, last: int, term: int = 1, tag: str = "") -> list[Entry]:
    return [Entry(term=term, index=i, data=f"{tag}v{i}".encode()) for i in range(first, last + 1)]


@pytest.fixture(params=["os", "sim"])
def disk_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Disk, str]]:
    if request.param == "os":
        yield OsDisk(), str(tmp_path / "wal")
    else:
        yield SimDisk(), "/data/wal"


def reopen(
    disk: Disk, directory: str, wal: WAL, segment_bytes: int = SMALL_SEGMENT_BYTES
) -> tuple[WAL, Replay]:
    wal.close()
    return WAL.open(disk, directory, segment_bytes=segment_bytes)


def rewrite(disk: Disk, path: str, content: bytes) -> None:
    file = disk.create(path)
    file.write(content)
    file.sync()
    file.close()


def flip_byte(disk: Disk, path: str, offset: int) -> None:
    content = bytearray(disk.read(path))
    content[offset] ^= 0x40
    rewrite(disk, path, bytes(content))


# -- Round trips ------------------------------------------------------------------


def test_new_wal_replays_empty(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal, replay = reopen(disk, directory, wal)
    assert replay.marker == SnapshotMarker()
    assert replay.hard_state == HardState()
    assert replay.entries == []
    assert [p.rsplit("/", 1)[1] for p in wal.segment_paths] == [
        "0000000000000000-0000000000000001.wal"
    ]


def test_create_refuses_an_existing_wal_and_open_needs_one(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    with pytest.raises(WALNotFoundError):
        WAL.open(disk, directory)
    WAL.create(disk, directory).close()
    with pytest.raises(WALExistsError):
        WAL.create(disk, directory)


def test_save_sync_reopen_round_trip(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, vote=2, commit=0), entries(1, 3))
    wal.save(HardState(term=1, vote=2, commit=3), entries(4, 5))
    wal.save(None, entries(6, 6))
    wal.sync()
    wal, replay = reopen(disk, directory, wal)
    assert replay.hard_state == HardState(term=1, vote=2, commit=3)
    assert replay.entries == entries(1, 6)
    # Appending after a reopen continues the same log.
    wal.save(HardState(term=2, vote=0, commit=6), [Entry(term=2, index=7, data=b"x")])
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    assert replay.entries == entries(1, 6) + [Entry(term=2, index=7, data=b"x")]
    assert replay.hard_state.commit == 6


def test_later_entries_overwrite_a_conflicting_suffix(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, commit=2), entries(1, 6))
    wal.save(HardState(term=2, commit=2), entries(4, 5, term=2, tag="new"))
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    assert replay.entries == entries(1, 3) + entries(4, 5, term=2, tag="new")


def test_local_snapshot_marker_keeps_the_log_after_it(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, commit=8), entries(1, 10))
    wal.save_snapshot_marker(8, 1)
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    assert replay.marker == SnapshotMarker(index=8, term=1)
    assert replay.entries == entries(9, 10)


def test_leader_snapshot_marker_replaces_the_log(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, commit=2), entries(1, 10))
    # The leader's snapshot at 6 (term 3) conflicts with our entry 6 (term 1).
    wal.save_snapshot_marker(6, 3)
    wal.save(HardState(term=3, commit=6), [])
    wal.sync()
    wal, replay = reopen(disk, directory, wal)
    assert replay.marker == SnapshotMarker(index=6, term=3)
    assert replay.entries == []
    assert replay.hard_state == HardState(term=3, commit=6)
    wal.save(HardState(term=3, commit=7), entries(7, 8, term=3))
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    assert replay.entries == entries(7, 8, term=3)


def test_segments_are_cut_and_named(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for index in range(1, 101):
        wal.save(HardState(term=1, commit=index - 1), entries(index, index))
    wal.sync()
    names = [path.rsplit("/", 1)[1] for path in wal.segment_paths]
    assert len(names) > 5
    assert disk.list_dir(directory) == names
    for seq, name in enumerate(names):
        assert name.startswith(f"{seq:016x}-") and name.endswith(".wal")
    first_indexes = [int(name[17:33], 16) for name in names]
    assert first_indexes == sorted(first_indexes)
    # A segment exceeds the size by at most one batch.
    for path in wal.segment_paths[:-1]:
        assert len(disk.read(path)) < SMALL_SEGMENT_BYTES + 128
    _, replay = reopen(disk, directory, wal)
    assert replay.entries == entries(1, 100)
    assert replay.hard_state == HardState(term=1, commit=99)


def test_release_to_removes_only_segments_below_the_index(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for index in range(1, 101):
        wal.save(HardState(term=1, vote=3, commit=index), entries(index, index))
    wal.save_snapshot_marker(60, 1)
    with pytest.raises(AssertionError):
        wal.release_to(60)  # the marker is not durable yet
    wal.sync()
    before = list(wal.segment_paths)
    removed = wal.release_to(60)
    assert removed > 0
    assert wal.segment_paths == before[removed:]
    first_kept = int(wal.segment_paths[0].rsplit("/", 1)[1][17:33], 16)
    assert first_kept <= 60  # the segment that holds entry 60 is kept
    wal, replay = reopen(disk, directory, wal)
    assert replay.marker == SnapshotMarker(60, 1)
    assert replay.entries == entries(61, 100)
    assert replay.hard_state == HardState(term=1, vote=3, commit=100)
    # A later local snapshot after the release still replays correctly.
    wal.save_snapshot_marker(90, 1)
    wal.sync()
    wal.release_to(90)
    _, replay = reopen(disk, directory, wal)
    assert replay.marker == SnapshotMarker(90, 1)
    assert replay.entries == entries(91, 100)


def test_release_keeps_the_hard_state_and_marker_from_removed_segments(
    disk_dir: tuple[Disk, str],
) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    wal.save(HardState(term=5, vote=2, commit=40), entries(1, 40, term=5))
    wal.save_snapshot_marker(30, 5)
    for index in range(41, 61):  # no hard state in these saves: it lives in old segments
        wal.save(None, entries(index, index, term=5))
    wal.sync()
    assert wal.release_to(30) == 0  # the first segment holds entry 30
    wal.save_snapshot_marker(45, 5)
    wal.sync()
    assert wal.release_to(45) >= 1
    _, replay = reopen(disk, directory, wal)
    assert replay.hard_state == HardState(term=5, vote=2, commit=40)
    assert replay.marker == SnapshotMarker(45, 5)
    assert replay.entries == entries(46, 60, term=5)


def test_group_commit_one_write_per_save_one_sync_per_batch() -> None:
    disk = SimDisk()
    wal = WAL.create(disk, "/wal")
    writes, syncs = disk.write_count, disk.sync_count
    for index in range(1, 11):
        wal.save(HardState(term=1, commit=index - 1), entries(index, index))
    wal.sync()
    assert disk.write_count - writes == 10
    assert disk.sync_count - syncs == 1


def test_build_memory_storage_from_replay_and_snapshot(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, commit=5), entries(1, 8))
    wal.save_snapshot_marker(5, 1)
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    conf = ConfState(voters=frozenset({1, 2, 3}))
    snapshot = Snapshot(SnapshotMetadata(index=5, term=1, conf_state=conf), b"image")
    storage = build_memory_storage(replay, snapshot)
    assert storage.snapshot() == snapshot
    assert storage.first_index() == 6 and storage.last_index() == 8
    assert storage.entries(6, 9, 1 << 20) == entries(6, 8)
    assert storage.initial_state() == (HardState(term=1, commit=5), conf)
    with pytest.raises(SnapshotMismatchError):
        build_memory_storage(replay, None)
    with pytest.raises(SnapshotMismatchError):
        build_memory_storage(replay, Snapshot(SnapshotMetadata(index=4, term=1), b""))


# -- Torn tails -------------------------------------------------------------------


def assert_data_ends_at(disk: Disk, path: str, size: int) -> None:
    """The file holds nothing past ``size`` but zeros: the repair cut it there, and an
    open WAL on a real disk preallocates past its data."""
    content = disk.read(path)
    assert len(content) >= size
    assert content[size:].count(0) == len(content) - size


def _wal_with_synced_records(disk: Disk, directory: str) -> tuple[str, int]:
    """A WAL holding entries 1..5 (synced); returns its segment path and size."""
    wal = WAL.create(disk, directory)
    wal.save(HardState(term=1, commit=5), entries(1, 5))
    wal.sync()
    wal.close()
    path = wal.segment_paths[-1]
    return path, len(disk.read(path))


@pytest.mark.parametrize("cut", [1, 8, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 3, 40])
def test_torn_tail_record_is_truncated_on_open(
    disk_dir: tuple[Disk, str], cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    disk, directory = disk_dir
    path, size = _wal_with_synced_records(disk, directory)
    # An unsynced sixth entry, torn after `cut` bytes.
    wal, _ = WAL.open(disk, directory)
    wal.save(None, [Entry(term=1, index=6, data=b"x" * 40)])
    wal.close()
    rewrite(disk, path, disk.read(path)[: size + cut])
    with caplog.at_level(logging.WARNING, logger="raftkv.storage.wal.wal"):
        wal, replay = WAL.open(disk, directory)
    assert replay.entries == entries(1, 5)
    assert_data_ends_at(disk, path, size)
    assert "torn tail" in caplog.text and path in caplog.text
    # The repaired WAL takes new records where the torn one was.
    wal.save(HardState(term=1, commit=6), [Entry(term=1, index=6, data=b"y")])
    wal.sync()
    _, replay = reopen(disk, directory, wal)
    assert replay.entries == entries(1, 5) + [Entry(term=1, index=6, data=b"y")]


@pytest.mark.parametrize("tail", [bytes(7), bytes(512), b"\xff" * 100, b"garbage!" * 9])
def test_zeros_or_garbage_after_the_last_record_are_truncated(
    disk_dir: tuple[Disk, str], tail: bytes
) -> None:
    disk, directory = disk_dir
    path, size = _wal_with_synced_records(disk, directory)
    rewrite(disk, path, disk.read(path) + tail)
    _, replay = WAL.open(disk, directory)
    assert replay.entries == entries(1, 5)
    assert replay.hard_state == HardState(term=1, commit=5)
    assert_data_ends_at(disk, path, size)


def test_torn_record_with_garbage_at_its_end_is_truncated(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    path, size = _wal_with_synced_records(disk, directory)
    wal, _ = WAL.open(disk, directory)
    wal.save(None, [Entry(term=1, index=6, data=b"x" * 100)])
    wal.close()
    content = bytearray(disk.read(path))
    content[-20:] = b"\x5a" * 20  # the end of the write never made it
    rewrite(disk, path, bytes(content))
    _, replay = WAL.open(disk, directory)
    assert replay.entries == entries(1, 5)
    assert_data_ends_at(disk, path, size)


# -- Corruption -------------------------------------------------------------------


def _record_offsets(disk: Disk, path: str) -> list[int]:
    return [scanned.offset for scanned in scan_segment(disk.read(path), is_last=True).records]


def _closed_wal_of_many_segments(disk: Disk, directory: str) -> WAL:
    """Entries 1..40, one save each, in SMALL_SEGMENT_BYTES segments; synced and closed."""
    wal = WAL.create(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for index in range(1, 41):
        wal.save(HardState(term=1, commit=index), entries(index, index))
    wal.sync()
    wal.close()
    return wal


@pytest.mark.parametrize("where", ["length", "type", "crc", "payload", "padding"])
def test_flipped_byte_mid_segment_is_corruption_naming_file_and_offset(
    disk_dir: tuple[Disk, str], where: str
) -> None:
    disk, directory = disk_dir
    path, _ = _wal_with_synced_records(disk, directory)
    offsets = _record_offsets(disk, path)
    target = offsets[5]  # entry 3 ("v3": 19 payload bytes, 5 of padding); valid records follow
    byte = {"length": 0, "type": 4, "crc": 9, "payload": HEADER_BYTES + 10, "padding": 37}[where]
    flip_byte(disk, path, target + byte)
    with pytest.raises(CorruptionError) as caught:
        WAL.open(disk, directory)
    assert caught.value.path == path
    assert caught.value.offset == target
    assert path in str(caught.value) and f"offset {target}" in str(caught.value)


def test_corruption_in_a_non_last_segment_is_never_repaired(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = _closed_wal_of_many_segments(disk, directory)
    first = wal.segment_paths[0]
    last_offset = _record_offsets(disk, first)[-1]
    flip_byte(disk, first, last_offset + HEADER_BYTES)  # its final record
    with pytest.raises(CorruptionError) as caught:
        WAL.open(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    assert caught.value.path == first
    assert caught.value.offset == last_offset
    assert "not the last segment" in caught.value.detail
    # Losing whole records at the end of a non-last segment is corruption too: the
    # next segment's head recorded how long this one was.
    rewrite(disk, first, disk.read(first)[:last_offset])
    with pytest.raises(CorruptionError, match="was created") as caught:
        WAL.open(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    assert caught.value.path == first


def test_missing_middle_segment_is_corruption(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = _closed_wal_of_many_segments(disk, directory)
    disk.remove(wal.segment_paths[2])
    with pytest.raises(CorruptionError, match="missing"):
        WAL.open(disk, directory)


def test_missing_oldest_segments_without_marker_is_corruption(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    wal = _closed_wal_of_many_segments(disk, directory)
    disk.remove(wal.segment_paths[0])  # not covered by any snapshot marker
    with pytest.raises(CorruptionError, match="records are missing"):
        WAL.open(disk, directory)


def test_renamed_segment_is_corruption(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    path, _ = _wal_with_synced_records(disk, directory)
    disk.rename(path, join(directory, "0000000000000000-0000000000000009.wal"))
    with pytest.raises(CorruptionError, match="unlike the file name"):
        WAL.open(disk, directory)


def test_unfinished_segment_temp_file_is_removed(disk_dir: tuple[Disk, str]) -> None:
    disk, directory = disk_dir
    _wal_with_synced_records(disk, directory)
    leftover = join(directory, "0000000000000001-0000000000000006.wal.tmp")
    rewrite(disk, leftover, b"partial")
    _, replay = WAL.open(disk, directory)
    assert replay.entries == entries(1, 5)
    assert not disk.exists(leftover)


# -- Disk errors ------------------------------------------------------------------


def test_wal_is_unusable_after_a_disk_error() -> None:
    disk = SimDisk()
    wal = WAL.create(disk, "/wal")
    wal.save(HardState(term=1, commit=1), entries(1, 1))
    disk.inject_write_error = True
    with pytest.raises(DiskError, match="injected"):
        wal.save(None, entries(2, 2))
    with pytest.raises(DiskError, match="unusable"):
        wal.save(None, entries(2, 2))
    with pytest.raises(DiskError, match="unusable"):
        wal.sync()


def test_a_disk_error_is_logged_as_fatal(caplog: pytest.LogCaptureFixture) -> None:
    disk = SimDisk()
    wal = WAL.create(disk, "/wal")
    disk.inject_write_error = True
    with caplog.at_level(logging.CRITICAL), pytest.raises(DiskError):
        wal.save(HardState(term=1, commit=0), entries(1, 1))
    fatal = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert fatal and "/wal" in fatal[0].getMessage() and "fatal" in fatal[0].getMessage()


def test_entries_must_continue_the_log() -> None:
    wal = WAL.create(SimDisk(), "/wal")
    wal.save(None, entries(1, 3))
    with pytest.raises(AssertionError, match="gap"):
        wal.save(None, entries(5, 5))
    with pytest.raises(AssertionError):
        wal.save(None, [Entry(term=1, index=4), Entry(term=1, index=6)])


def test_record_bytes_inside_a_torn_payload_do_not_count_as_a_valid_record(
    disk_dir: tuple[Disk, str],
) -> None:
    disk, directory = disk_dir
    path, size = _wal_with_synced_records(disk, directory)
    # A client value that holds an encoded WAL record, 8-byte aligned in the file
    # (record header 16 + entry header 17 + 7 bytes = 40).
    embedded = encode_record(RecordType.HARD_STATE, encode_hard_state(HardState(9, 9, 9)))
    value = b"padding" + embedded + b"z" * 200
    wal, _ = WAL.open(disk, directory)
    wal.save(None, [Entry(term=1, index=6, data=value)])
    wal.close()
    # Torn after the embedded record: the header of entry 6 is valid, its payload short.
    rewrite(disk, path, disk.read(path)[: size + 40 + len(embedded) + 16])
    _, replay = WAL.open(disk, directory)
    assert replay.entries == entries(1, 5)
    assert_data_ends_at(disk, path, size)


def test_open_makes_what_it_replayed_durable() -> None:
    for seed in range(40):
        disk = SimDisk()
        wal = WAL.create(disk, "/wal")
        wal.save(HardState(term=1, commit=3), entries(1, 3))
        # The process dies before its fsync; the page cache survives it.
        _, replayed = WAL.open(disk, "/wal")
        assert replayed.entries == entries(1, 3)
        disk.crash(random.Random(seed))  # then the power goes
        _, replay = WAL.open(disk, "/wal")
        assert replay == replayed, seed


# -- Preallocation (real files only: SimDisk does not model it) ------------------------

PREALLOCATED_SEGMENT_BYTES = 64 << 20


def _crash_image(source: Path, target: Path) -> str:
    """A copy of the WAL directory as a crash would leave it (the writer never closed)."""
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return str(target)


def _preallocated_wal(tmp_path: Path) -> tuple[WAL, str]:
    directory = str(tmp_path / "wal")
    wal = WAL.create(OsDisk(), directory, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    wal.save(HardState(term=1, commit=5), entries(1, 5))
    wal.sync()
    return wal, wal.segment_paths[-1]


def test_a_segment_is_preallocated_while_open_and_cut_back_on_close(tmp_path: Path) -> None:
    wal, path = _preallocated_wal(tmp_path)
    scan = scan_segment(Path(path).read_bytes(), is_last=True)
    assert len(scan.records) == 3 + 5 + 1  # the head, five entries, the hard state
    assert Path(path).stat().st_size >= limits.WAL_PREALLOCATE_BYTES > scan.valid_bytes
    wal.close()
    size = Path(path).stat().st_size
    assert size < 1024
    assert scan_segment(Path(path).read_bytes(), is_last=False).valid_bytes == size


def test_a_crash_leaves_zeros_past_the_data_which_end_the_replay_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal, _ = _preallocated_wal(tmp_path)
    image = _crash_image(tmp_path / "wal", tmp_path / "crashed")
    with caplog.at_level(logging.WARNING, logger="raftkv.storage.wal.wal"):
        reopened, replay = WAL.open(OsDisk(), image, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    assert replay.entries == entries(1, 5)
    assert replay.hard_state == HardState(term=1, commit=5)
    assert "torn tail" not in caplog.text  # nothing was torn: the rest is preallocated space
    # Writes continue where the data ended, inside the preallocated length.
    reopened.save(HardState(term=1, commit=6), entries(6, 6))
    reopened.sync()
    path = reopened.segment_paths[-1]
    assert Path(path).stat().st_size >= limits.WAL_PREALLOCATE_BYTES
    _, replay = reopen(OsDisk(), image, reopened, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    assert replay.entries == entries(1, 6)
    wal.close()


def test_a_torn_record_followed_by_preallocated_zeros_is_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal, path = _preallocated_wal(tmp_path)
    size = scan_segment(Path(path).read_bytes(), is_last=True).valid_bytes
    wal.save(None, [Entry(term=1, index=6, data=b"x" * 100)])  # never synced
    image = _crash_image(tmp_path / "wal", tmp_path / "crashed")
    crashed = join(image, Path(path).name)
    content = bytearray(Path(crashed).read_bytes())
    content[size + 60 : size + 140] = bytes(80)  # the end of the write never made it
    Path(crashed).write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING, logger="raftkv.storage.wal.wal"):
        _, replay = WAL.open(OsDisk(), image, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    assert replay.entries == entries(1, 5)
    assert "torn tail" in caplog.text
    assert_data_ends_at(OsDisk(), crashed, size)
    wal.close()


def test_zeros_in_the_middle_of_a_preallocated_segment_are_corruption(tmp_path: Path) -> None:
    wal, path = _preallocated_wal(tmp_path)
    image = _crash_image(tmp_path / "wal", tmp_path / "crashed")
    crashed = join(image, Path(path).name)
    target = _record_offsets(OsDisk(), crashed)[5]  # entry 3; entries 4, 5 follow
    content = bytearray(Path(crashed).read_bytes())
    content[target : target + HEADER_BYTES] = bytes(HEADER_BYTES)
    Path(crashed).write_bytes(bytes(content))
    with pytest.raises(CorruptionError) as caught:
        WAL.open(OsDisk(), image, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    assert caught.value.path == crashed and caught.value.offset == target
    wal.close()


def test_zeros_past_the_data_of_a_segment_before_the_last_are_corruption(
    disk_dir: tuple[Disk, str],
) -> None:
    # Every segment but the last was cut back to its data (and synced) before the next one
    # was made, so zeros there are damage, not preallocated space.
    disk, directory = disk_dir
    wal = _closed_wal_of_many_segments(disk, directory)
    first = wal.segment_paths[0]
    size = len(disk.read(first))
    rewrite(disk, first, disk.read(first) + bytes(4096))
    with pytest.raises(CorruptionError) as caught:
        WAL.open(disk, directory, segment_bytes=SMALL_SEGMENT_BYTES)
    assert caught.value.path == first and caught.value.offset == size


def test_the_preallocated_length_stays_ahead_of_the_data_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "WAL_PREALLOCATE_BYTES", 4096)
    directory = str(tmp_path / "wal")
    wal = WAL.create(OsDisk(), directory, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    path = wal.segment_paths[-1]
    lengths = set()
    for index in range(1, 201):
        wal.save(HardState(term=1, commit=index), [Entry(term=1, index=index, data=b"v" * 100)])
        data_end = scan_segment(Path(path).read_bytes(), is_last=True).valid_bytes
        length = Path(path).stat().st_size
        assert data_end < length <= data_end + 4096 + 200, (index, data_end, length)
        lengths.add(length)
    assert len(lengths) > 5  # it grew in steps, not per write
    wal.sync()
    _, replay = reopen(OsDisk(), directory, wal, segment_bytes=PREALLOCATED_SEGMENT_BYTES)
    assert len(replay.entries) == 200
