"""OsDisk error reporting, and SimDisk's crash model."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from raftkv.sim.disk import SECTOR_BYTES, SimDisk
from raftkv.storage.disk import Disk, OsDisk, join
from raftkv.storage.errors import DiskError

# -- OsDisk ---------------------------------------------------------------------


def test_os_disk_primitives(tmp_path: Path) -> None:
    disk = OsDisk()
    directory = str(tmp_path / "a" / "b")
    disk.makedirs(directory)
    path = join(directory, "f")
    file = disk.create(path)
    file.write(b"hello ")
    file.write(b"world")
    assert file.size == 11
    file.sync()
    file.truncate(5)
    file.write(b"!")
    file.close()
    assert disk.read(path) == b"hello!"
    appended = disk.open_append(path)
    assert appended.size == 6
    appended.write(b"?")
    appended.close()
    disk.rename(path, join(directory, "g"))
    disk.sync_dir(directory)
    assert disk.list_dir(directory) == ["g"]
    assert disk.read(join(directory, "g")) == b"hello!?"
    disk.remove(join(directory, "g"))
    assert not disk.exists(join(directory, "g"))


def test_os_disk_write_enospc_raises_disk_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = OsDisk()
    path = str(tmp_path / "segment.wal")
    file = disk.create(path)

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DiskError) as caught:
        file.write(b"x" * 100)
    message = str(caught.value)
    assert path in message
    assert "ENOSPC" in message and "No space left" in message
    assert file.size == 0


def test_os_disk_partial_write_then_enospc_counts_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = OsDisk()
    file = disk.create(str(tmp_path / "f"))
    real_pwrite = os.pwrite
    calls = []

    def half_then_full(fd: int, data: memoryview, offset: int) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_pwrite(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(DiskError, match="ENOSPC"):
        file.write(b"x" * 100)
    assert file.size == 50


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_os_disk_real_disk_full_is_a_disk_error() -> None:
    file = OsDisk().open_append("/dev/full")
    with pytest.raises(DiskError, match="/dev/full.*ENOSPC"):
        file.write(b"x" * 4096)
    file.close()


def test_os_disk_fdatasync_failure_raises_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raftkv.storage.disk as disk_module

    file = OsDisk().create(str(tmp_path / "f"))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(disk_module, "_fdatasync", failing)
    with pytest.raises(DiskError, match=r"fdatasync .*f failed.*EIO"):
        file.sync()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_os_disk_create_in_read_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(DiskError, match="EACCES"):
            OsDisk().create(str(directory / "f"))
    finally:
        directory.chmod(0o700)


def test_os_disk_missing_files_are_disk_errors(tmp_path: Path) -> None:
    disk = OsDisk()
    missing = str(tmp_path / "missing")
    for call in (
        lambda: disk.open_append(missing),
        lambda: disk.read(missing),
        lambda: disk.rename(missing, missing + "2"),
        lambda: disk.remove(missing),
        lambda: disk.list_dir(missing),
    ):
        with pytest.raises(DiskError, match="missing"):
            call()


# -- SimDisk ----------------------------------------------------------------------


def _sim_with_file(content_synced: bytes, content_unsynced: list[bytes]) -> tuple[SimDisk, str]:
    disk = SimDisk()
    disk.makedirs("/d")
    file = disk.create("/d/f")
    disk.sync_dir("/d")
    file.write(content_synced)
    file.sync()
    for data in content_unsynced:
        file.write(data)
    return disk, "/d/f"


def test_sim_disk_is_a_disk() -> None:
    disk: Disk = SimDisk()
    disk.makedirs("/x/y")
    assert disk.exists("/x") and disk.exists("/x/y")
    assert disk.list_dir("/x/y") == []


def test_sim_crash_keeps_synced_bytes_and_a_prefix_of_the_rest() -> None:
    synced = b"S" * 100
    writes = [b"a" * 40, b"b" * 40, b"c" * 40]
    outcomes = set()
    for seed in range(300):
        disk, path = _sim_with_file(synced, writes)
        disk.crash(random.Random(seed))
        content = disk.read(path)
        assert content.startswith(synced), seed
        assert len(content) < len(synced) + 120 + SECTOR_BYTES
        intact = synced + b"".join(writes)
        if content == intact[: len(content)]:
            outcomes.add("prefix" if len(content) < len(intact) else "all")
        else:
            outcomes.add("garbage")
        assert disk.durable_content(path) == content  # the crash result is now durable
    assert outcomes == {"prefix", "all", "garbage"}


def test_sim_crash_without_unsynced_writes_changes_nothing() -> None:
    for seed in range(50):
        disk, path = _sim_with_file(b"durable", [])
        disk.crash(random.Random(seed))
        assert disk.read(path) == b"durable"


def test_sim_unsynced_writes_can_be_lost_entirely() -> None:
    lost = False
    for seed in range(100):
        disk, path = _sim_with_file(b"", [b"x" * 10])
        disk.crash(random.Random(seed))
        lost |= disk.read(path) == b""
    assert lost


def test_sim_unsynced_truncate_may_be_undone() -> None:
    contents = set()
    for seed in range(100):
        disk, path = _sim_with_file(b"0123456789", [])
        file = disk.open_append(path)
        file.truncate(4)
        file.write(b"ab")
        disk.crash(random.Random(seed))
        contents.add(disk.read(path))
    assert b"0123456789" in contents
    assert b"0123ab" in contents
    assert all(c.startswith(b"0123") for c in contents)


def test_sim_create_without_sync_dir_may_be_lost() -> None:
    survived = set()
    for seed in range(100):
        disk = SimDisk()
        disk.makedirs("/d")
        file = disk.create("/d/new")
        file.write(b"data")
        file.sync()  # the content is durable, the directory entry is not
        disk.crash(random.Random(seed))
        survived.add(disk.exists("/d/new"))
        if disk.exists("/d/new"):
            assert disk.read("/d/new") == b"data"
    assert survived == {True, False}


def test_sim_create_with_sync_dir_survives() -> None:
    for seed in range(50):
        disk = SimDisk()
        disk.makedirs("/d")
        disk.create("/d/new").sync()
        disk.sync_dir("/d")
        disk.crash(random.Random(seed))
        assert disk.list_dir("/d") == ["new"]


def test_sim_rename_is_atomic_and_lost_without_sync_dir() -> None:
    outcomes = set()
    for seed in range(100):
        disk = SimDisk()
        disk.makedirs("/d")
        for name, data in (("target", b"old"), ("temp", b"new")):
            file = disk.create(f"/d/{name}")
            file.write(data)
            file.sync()
        disk.sync_dir("/d")
        disk.rename("/d/temp", "/d/target")
        disk.crash(random.Random(seed))
        names = tuple(disk.list_dir("/d"))
        assert names in (("target", "temp"), ("target",)), names
        outcomes.add(disk.read("/d/target"))
        if names == ("target",):
            assert disk.read("/d/target") == b"new"
    assert outcomes == {b"old", b"new"}


def test_sim_remove_without_sync_dir_may_come_back() -> None:
    back = set()
    for seed in range(100):
        disk, path = _sim_with_file(b"x", [])
        disk.remove(path)
        assert not disk.exists(path)
        disk.crash(random.Random(seed))
        back.add(disk.exists(path))
    assert back == {True, False}


def test_sim_handles_from_before_a_crash_are_dead() -> None:
    disk, path = _sim_with_file(b"x", [])
    file = disk.open_append(path)
    disk.crash(random.Random(0))
    with pytest.raises(AssertionError, match="crash"):
        file.write(b"y")


def test_sim_injected_write_error_fails_one_write() -> None:
    disk, path = _sim_with_file(b"x", [])
    file = disk.open_append(path)
    disk.inject_write_error = True
    with pytest.raises(DiskError, match=path):
        file.write(b"y")
    assert disk.read(path) == b"x"
    file.write(b"z")
    assert disk.read(path) == b"xz"


def test_sim_missing_paths_are_disk_errors() -> None:
    disk = SimDisk()
    with pytest.raises(DiskError, match="/nope"):
        disk.list_dir("/nope")
    with pytest.raises(DiskError, match="/nope/f"):
        disk.create("/nope/f")
    with pytest.raises(DiskError, match="/f"):
        disk.read("/f")


def test_sim_crash_is_deterministic() -> None:
    def run(seed: int) -> bytes:
        disk, path = _sim_with_file(b"s" * 10, [bytes(range(200)), b"q" * 50])
        disk.crash(random.Random(seed))
        return disk.read(path)

    assert [run(seed) for seed in range(20)] == [run(seed) for seed in range(20)]
