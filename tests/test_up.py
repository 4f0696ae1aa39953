"""`raftkv up`: a real local cluster of `raftkv serve` processes, driven like an operator."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.cli import main
from raftkv.up import LAYOUT_FILE_NAME, plan_members, run_up, signal_group
from tests.procs import etcdctl

READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
PORT_SEARCH_ATTEMPTS = 100


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(size: int) -> int:
    """A base port at which all 3 * size ports of `raftkv up --size size` are free."""
    rng = random.Random()
    for _ in range(PORT_SEARCH_ATTEMPTS):
        # Below Linux's ephemeral range (32768+), where every other test's kernel-picked
        # ports and outgoing connections live, so nothing else grabs these meanwhile.
        base = rng.randrange(20_000, 32_000)
        members = plan_members(size, base, "127.0.0.1", Path("unused"))
        if all(port_is_free(port) for m in members for port in m.ports().values()):
            return base
    raise AssertionError("no free port range found")


class UpProcess:
    """`python -m raftkv up` in its own process group, its stdout collected by a thread."""

    def __init__(self, data_dir: Path, base_port: int, size: int = 3) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raftkv", "up", "--size", str(size)]
            + ["--data-dir", str(data_dir), "--base-port", str(base_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match is not None:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and self._done_reading()):
                    raise AssertionError(f"no line matching {pattern!r}:\n" + self.output())
                self._changed.wait(min(remaining, 0.5))

    def _done_reading(self) -> bool:
        return not self._reader.is_alive()

    def output(self) -> str:
        return "\n".join(self.lines)

    def member_pids(self) -> dict[str, int]:
        self.wait_for_line(r"try:")  # the member table is printed before this line
        return {
            match.group(1): int(match.group(2))
            for line in self.lines
            if (match := re.match(r"\s+(m\d+)\s+pid (\d+)\s", line)) is not None
        }

    def endpoints(self) -> str:
        return self.wait_for_line(r"etcdctl --endpoints=(\S+) put hello world").group(1)

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        exit_code = self.process.wait(timeout=EXIT_TIMEOUT_S)
        self._reader.join(timeout=EXIT_TIMEOUT_S)
        return exit_code

    def kill_everything(self, member_pids: dict[str, int]) -> None:
        """Cleanup for a failed test: SIGKILL `up` and every member's process group."""
        for pid in [self.process.pid, *member_pids.values()]:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=EXIT_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def logs_of(data_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(data_dir.glob("m*.log")))  # fmt: skip


def test_up_serves_etcdctl_stops_on_signals_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "up-data"
    base_port = free_base_port(3)
    up = UpProcess(data_dir, base_port)
    pids: dict[str, int] = {}
    try:
        pids = up.member_pids()
        assert sorted(pids) == ["m1", "m2", "m3"]
        up.wait_for_line(r"cluster ready: leader m[123] \(id [0-9a-f]+\)")
        endpoints = up.endpoints()
        assert endpoints == ",".join(f"127.0.0.1:{base_port + 10 * i}" for i in range(3))

        put = etcdctl(endpoints.split(","), "put", "hello", "world")
        assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr
        get = etcdctl(endpoints.split(","), "get", "hello")
        assert (get.returncode, get.stdout) == (0, "hello\nworld\n"), get.stderr

        # A member that dies is reported, not restarted.
        os.killpg(pids["m3"], signal.SIGKILL)
        up.wait_for_line(rf"member m3 \(pid {pids['m3']}\) exited with code -9", timeout_s=10)

        assert up.stop(signal.SIGINT) == 0, up.output()
        assert "raftkv up: stopped 3 members" in up.output()
        assert [name for name, pid in pids.items() if is_alive(pid)] == []
    except BaseException:
        print(up.output(), logs_of(data_dir), sep="\n", file=sys.stderr)
        raise
    finally:
        up.kill_everything(pids)

    again = UpProcess(data_dir, base_port)
    pids = {}
    try:
        pids = again.member_pids()
        again.wait_for_line(r"cluster ready")
        get = etcdctl(again.endpoints().split(","), "get", "hello")
        assert (get.returncode, get.stdout) == (0, "hello\nworld\n"), get.stderr
        assert again.stop(signal.SIGTERM) == 0, again.output()
        assert [name for name, pid in pids.items() if is_alive(pid)] == []
    except BaseException:
        print(again.output(), logs_of(data_dir), sep="\n", file=sys.stderr)
        raise
    finally:
        again.kill_everything(pids)


# --- Without a server: layout and refusals ---------------------------------------------------


def test_member_layout() -> None:
    members = plan_members(3, 2379, "127.0.0.1", Path("d"))
    assert [m.name for m in members] == ["m1", "m2", "m3"]
    assert [m.client_endpoint for m in members] == [
        "127.0.0.1:2379",
        "127.0.0.1:2389",
        "127.0.0.1:2399",
    ]
    assert [m.peer_url for m in members][1] == "http://127.0.0.1:2390"
    assert [m.gateway_url for m in members][2] == "http://127.0.0.1:2401"
    assert [m.data_dir for m in members] == [Path("d/m1"), Path("d/m2"), Path("d/m3")]
    assert members[0].log_path == Path("d/m1.log")


def _occupy_a_peer_port() -> tuple[int, int, socket.socket]:
    """A free base port for 2 members, with m2's peer port taken by a listener. Other
    tests pick ports concurrently, so a port free a moment ago may be gone: retry."""
    for _ in range(10):
        base_port = free_base_port(2)
        busy_port = base_port + limits.UP_PORT_STRIDE + 1  # m2's peer port
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", busy_port))
        except OSError:
            listener.close()
            continue
        listener.listen()
        return base_port, busy_port, listener
    raise AssertionError("no free port range in 10 attempts")


def test_up_refuses_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base_port, busy_port, listener = _occupy_a_peer_port()
    with listener:
        data_dir = tmp_path / "up"
        assert run_up(2, data_dir, base_port, "127.0.0.1") == 2
    err = capsys.readouterr().err
    assert f"raftkv up: cannot use 127.0.0.1:{busy_port} (m2 peer): already in use" in err
    assert not data_dir.exists()  # nothing was started or written


def test_up_refuses_a_data_dir_of_another_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "up"
    data_dir.mkdir()
    layout = {"size": 3, "base_port": 2379, "host": "127.0.0.1"}
    (data_dir / LAYOUT_FILE_NAME).write_text(json.dumps(layout))
    assert run_up(1, data_dir, free_base_port(1), "127.0.0.1") == 2
    assert "holds a cluster started with --size 3 --base-port 2379" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--size", "0"], ["--size", "8"], ["--base-port", "70000"]])
def test_up_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["up", *argv])
    assert raised.value.code == 2


def test_up_refuses_a_base_port_without_room(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--size", "3", "--base-port", "65530"]) == 2
    assert "leaves no room for 3 members" in capsys.readouterr().err


def test_a_reaped_member_is_never_signalled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # Once a member is reaped its pid, which is also its process group's id, may be reused
    # by an unrelated process group; killpg on it then would hit that group.
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    signalled: list[tuple[int, int]] = []
    real_killpg = os.killpg

    def recording_killpg(group: int, sig: int) -> None:
        signalled.append((group, sig))
        real_killpg(group, sig)

    monkeypatch.setattr(os, "killpg", recording_killpg)
    signal_group(process, signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert signalled == [(process.pid, signal.SIGKILL)]
    signal_group(process, signal.SIGKILL)
    signal_group(process, signal.SIGTERM)
    assert signalled == [(process.pid, signal.SIGKILL)]
