"""``raftkv up --tls DIR``: a local cluster with mutual TLS everywhere, from ``raftkv certs``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from raftkv.certs import generate_dev_certs
from raftkv.up import LAYOUT_FILE_NAME, run_up
from raftkv.verify.cluster import etcdctl_command
from tests.test_up import free_base_port

READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0


def read_until(process: subprocess.Popen[str], pattern: str, lines: list[str]) -> re.Match[str]:
    """Read ``up``'s output until a line matches (its output is line-buffered)."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        match = re.search(pattern, line)
        if match is not None:
            return match
    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(lines))


def test_up_with_tls_serves_etcdctl_with_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = generate_dev_certs(tmp_path / "certs", ["127.0.0.1"])
    data_dir = tmp_path / "up-data"
    base_port = free_base_port(3)
    command = [sys.executable, "-m", "raftkv", "up", "--size", "3", "--data-dir", str(data_dir)]
    command += ["--base-port", str(base_port), "--tls", str(tmp_path / "certs")]
    up = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    member_pids: list[int] = []
    try:
        hint = read_until(
            up, r"etcdctl --endpoints=(\S+) (--cacert=\S+ --cert=\S+ --key=\S+) put", lines
        )
        member_pids = [int(m.group(1)) for line in lines if (m := re.search(r" pid (\d+) ", line))]
        endpoints, tls_flags = hint.group(1), hint.group(2).split()
        assert all(endpoint.startswith("https://") for endpoint in endpoints.split(","))
        assert tls_flags == [
            f"--cacert={certs.ca_cert}",
            f"--cert={certs.client_cert}",
            f"--key={certs.client_key}",
        ]
        read_until(up, r"cluster ready: leader m[123]", lines)
        base = etcdctl_command(endpoints.split(","), 5.0)
        env = {**os.environ, "ETCDCTL_API": "3"}
        put = subprocess.run(
            [*base, *tls_flags, "put", "k", "v"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert put.returncode == 0 and put.stdout == "OK\n", put.stderr
        plain = subprocess.run(
            [*base, "--dial-timeout=1s", "get", "k"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert plain.returncode != 0 and "v" not in plain.stdout.split()
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=EXIT_TIMEOUT_S) == 0
        read_until(up, r"raftkv up: stopped 3 members", lines)
    finally:
        for pid in [up.pid, *member_pids]:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            up.wait(timeout=EXIT_TIMEOUT_S)
        if up.stdout is not None:
            up.stdout.close()
    # The data directory remembers TLS: resuming it without --tls is refused.
    assert '"tls": true' in (data_dir / LAYOUT_FILE_NAME).read_text()
    capsys.readouterr()
    assert run_up(3, data_dir, base_port, "127.0.0.1") == 2
    assert "with --tls; pass the same" in capsys.readouterr().err


def test_up_refuses_missing_or_unfit_certificates(tmp_path: Path) -> None:
    assert run_up(1, tmp_path / "a", free_base_port(1), "127.0.0.1", tls_dir=tmp_path / "x") == 2
    generate_dev_certs(tmp_path / "certs", ["localhost"])
    base_port = free_base_port(1)
    assert run_up(1, tmp_path / "b", base_port, "127.0.0.1", tls_dir=tmp_path / "certs") == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
