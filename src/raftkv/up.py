"""``raftkv up``: a local cluster whose members are separate ``raftkv serve`` processes.

Member i (0-based) is ``m{i+1}``; its client (gRPC), peer and JSON-gateway ports are
``base_port + UP_PORT_STRIDE * i`` plus 0, 1 and 2, its data is ``DATA_DIR/m{i+1}`` and its
log ``DATA_DIR/m{i+1}.log``. Each member runs in its own process group, so Ctrl-C reaches
only ``up``, which then stops the members in order: SIGTERM, a grace period, SIGKILL.
Running ``up`` again on the same data directory resumes the same cluster: the members find
their data and, like etcd, ignore the ``--initial-cluster*`` flags.

With ``--tls DIR`` (the files ``raftkv certs --out DIR`` writes), every URL is ``https://``
and the members use mutual TLS on their client, gateway and peer URLs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol, TextIO

import grpc

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

EXIT_OK = 0
EXIT_MEMBERS_GONE = 1
EXIT_REFUSED = 2
LAYOUT_FILE_NAME = "raftkv-up.json"
CLUSTER_TOKEN = "raftkv-up"
PROGRESS_INTERVAL_S = 1.0
WATCH_INTERVAL_S = 0.5
STATUS_TIMEOUT_S = 0.8
# After this long without a leader, `up` points at the logs (once) and keeps waiting.
LEADER_HINT_AFTER_S = 30.0
LOG_TAIL_LINES = 10
# Environment variables that would make `raftkv serve` ignore the flags `up` passes.
_CONFIG_FILE_ENV = ("ETCD_CONFIG_FILE", "RAFTKV_CONFIG_FILE")


@dataclass(frozen=True)
class UpMember:
    """One planned member: its name, ports and files."""

    name: str
    host: str
    client_port: int
    peer_port: int
    gateway_port: int
    data_dir: Path
    log_path: Path
    tls_dir: Path | None = None  # `raftkv certs` files: https and mutual TLS everywhere

    @property
    def scheme(self) -> str:
        return "http" if self.tls_dir is None else "https"

    @property
    def client_endpoint(self) -> str:
        """``host:port`` as etcdctl's --endpoints and grpc.insecure_channel take it."""
        return f"{_url_host(self.host)}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.client_endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.peer_port}"

    @property
    def gateway_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.gateway_port}"

    def ports(self) -> dict[str, int]:
        return {"client": self.client_port, "peer": self.peer_port, "gateway": self.gateway_port}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def plan_members(
    size: int, base_port: int, host: str, data_dir: Path, tls_dir: Path | None = None
) -> tuple[UpMember, ...]:
    """The members of a ``size``-member cluster; see the module docstring for the layout."""
    assert 1 <= size <= limits.UP_MAX_MEMBERS, size
    assert base_port >= 1, base_port
    assert last_port(size, base_port) <= 65535, base_port
    members = []
    for index in range(size):
        name = f"m{index + 1}"
        client_port = base_port + limits.UP_PORT_STRIDE * index
        members.append(
            UpMember(
                name=name,
                host=host,
                client_port=client_port,
                peer_port=client_port + 1,
                gateway_port=client_port + 2,
                data_dir=data_dir / name,
                log_path=data_dir / f"{name}.log",
                tls_dir=tls_dir,
            )
        )
    return tuple(members)


def last_port(size: int, base_port: int) -> int:
    """The highest port a ``size``-member cluster at ``base_port`` uses."""
    return base_port + limits.UP_PORT_STRIDE * (size - 1) + 2


class MemberAddresses(Protocol):
    """What the serve flags need of a member (``UpMember``, or a test harness's own)."""

    @property
    def name(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def client_url(self) -> str: ...

    @property
    def gateway_url(self) -> str: ...

    @property
    def peer_url(self) -> str: ...


def member_serve_flags(
    member: MemberAddresses, initial_cluster: str, state: str, token: str
) -> list[str]:
    """The ``raftkv serve`` flags for one local member: gRPC, gateway and peer URLs on its
    own ports, its data dir, and the cluster it bootstraps (``new``) or joins."""
    return [
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--listen-client-urls={member.client_url}",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-client-http-urls={member.gateway_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={token}",
    ]


def serve_flags(member: UpMember, members: Sequence[UpMember]) -> list[str]:
    """The ``raftkv serve`` flags that start ``member`` of ``members``."""
    initial_cluster = ",".join(f"{peer.name}={peer.peer_url}" for peer in members)
    flags = member_serve_flags(member, initial_cluster, "new", CLUSTER_TOKEN)
    if member.tls_dir is not None:
        flags += tls_serve_flags(member.tls_dir)
    return flags


def tls_serve_flags(tls_dir: Path) -> list[str]:
    """Mutual TLS on the client and peer sides with the files of ``raftkv certs``."""
    from raftkv.certs import DevCertFiles

    files = DevCertFiles.in_directory(tls_dir)
    return [
        f"--cert-file={files.server_cert}",
        f"--key-file={files.server_key}",
        f"--trusted-ca-file={files.ca_cert}",
        "--client-cert-auth",
        f"--peer-cert-file={files.peer_cert}",
        f"--peer-key-file={files.peer_key}",
        f"--peer-trusted-ca-file={files.ca_cert}",
        "--peer-client-cert-auth",
    ]


def run_up(
    size: int,
    data_dir: Path,
    base_port: int,
    host: str,
    out: TextIO = sys.stdout,
    tls_dir: Path | None = None,
) -> int:
    """Start the cluster, report until it has a leader, then wait for Ctrl-C or SIGTERM."""
    if last_port(size, base_port) > 65535:
        return _refuse(f"--base-port {base_port} leaves no room for {size} members")
    if tls_dir is not None:
        tls_dir = tls_dir.absolute()  # the members may run elsewhere
    members = plan_members(size, base_port, host, data_dir, tls_dir)
    refusal = (
        _check_tls_files(tls_dir, host)
        or _check_layout(data_dir, size, base_port, host, tls_dir is not None)
        or _check_ports_free(members)
    )
    if refusal is not None:
        return _refuse(refusal)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_layout(data_dir, size, base_port, host, tls_dir is not None)
    with _stop_requested() as stop, ExitStack() as cleanup:
        processes: dict[str, subprocess.Popen[bytes]] = {}
        cleanup.callback(_stop_members, members, processes, out)
        for member in members:
            processes[member.name] = _start_member(member, members)
        _print_endpoints(members, processes, data_dir, out)
        return _supervise(members, processes, stop, out)


def _refuse(message: str) -> int:
    print(f"raftkv up: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()  # a pipe reader (a test, a supervisor) sees each line as it happens


def _check_tls_files(tls_dir: Path | None, host: str) -> str | None:
    """A refusal if ``tls_dir`` lacks a file of ``raftkv certs`` or its certificates do not
    name ``host``."""
    if tls_dir is None:
        return None
    from raftkv.certs import DevCertFiles
    from raftkv.server.tls import TlsFilesError, certificate_host_names

    files = DevCertFiles.in_directory(tls_dir)
    make_them = f"make them with: raftkv certs --out {tls_dir} --hosts {host}"
    missing = [path.name for path in files.all_paths() if not path.is_file()]
    if missing:
        return f"--tls {tls_dir}: no {', '.join(missing)}; {make_them}"
    try:
        names = certificate_host_names(str(files.server_cert))
    except TlsFilesError as error:
        return f"--tls {tls_dir}: {error}"
    if host.strip("[]") not in names:
        return f"--tls {tls_dir}: the certificates do not name {host}; {make_them} --force"
    return None


def _layout(size: int, base_port: int, host: str, tls: bool) -> dict[str, object]:
    layout: dict[str, object] = {"size": size, "base_port": base_port, "host": host}
    if tls:  # absent without TLS, so layouts written before --tls existed still match
        layout["tls"] = True
    return layout


def _check_layout(
    data_dir: Path, size: int, base_port: int, host: str, tls: bool = False
) -> str | None:
    """A refusal if ``data_dir`` holds a cluster started with other settings."""
    layout_path = data_dir / LAYOUT_FILE_NAME
    try:
        stored = json.loads(layout_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"cannot read {layout_path}: {error}"
    if stored == _layout(size, base_port, host, tls):
        return None
    with_tls = " with --tls" if stored.get("tls") else " without --tls"
    return (
        f"{data_dir} holds a cluster started with --size {stored.get('size')} "
        f"--base-port {stored.get('base_port')} --host {stored.get('host')}{with_tls}; "
        "pass the same, or use another --data-dir"
    )


def _write_layout(data_dir: Path, size: int, base_port: int, host: str, tls: bool) -> None:
    layout = _layout(size, base_port, host, tls)
    (data_dir / LAYOUT_FILE_NAME).write_text(json.dumps(layout) + "\n", encoding="utf-8")


def _check_ports_free(members: Sequence[UpMember]) -> str | None:
    """A refusal naming the first port that cannot be bound, or None if all are free."""
    for member in members:
        for role, port in member.ports().items():
            problem = _bind_problem(member.host, port)
            if problem is not None:
                return (
                    f"cannot use {_url_host(member.host)}:{port} ({member.name} {role}): {problem}"
                )
    return None


def _bind_problem(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers do: a port in TIME_WAIT from the previous run is usable.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return "already in use" if error.errno == errno.EADDRINUSE else str(error)
    return None


@contextmanager
def _stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs; the old handlers come back."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_member(member: UpMember, members: Sequence[UpMember]) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key not in _CONFIG_FILE_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # the log file shows what happened up to a crash
    command = [sys.executable, "-m", "raftkv", "serve", *serve_flags(member, members)]
    with member.log_path.open("ab") as log_file:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: Ctrl-C goes to `up` only
        )


def _print_endpoints(
    members: Sequence[UpMember],
    processes: dict[str, subprocess.Popen[bytes]],
    data_dir: Path,
    out: TextIO,
) -> None:
    _say(out, f"raftkv up: {len(members)} members, data in {data_dir}")
    for member in members:
        _say(
            out,
            f"  {member.name}  pid {processes[member.name].pid}  client {member.client_endpoint}"
            f"  peer {member.peer_url}  gateway {member.gateway_url}  log {member.log_path}",
        )
    endpoints = ",".join(member.client_endpoint for member in members)
    etcdctl_tls = curl_tls = ""
    tls_dir = members[0].tls_dir
    if tls_dir is not None:
        endpoints = ",".join(member.client_url for member in members)
        ca, cert, key = (tls_dir / name for name in ("ca.crt", "client.crt", "client.key"))
        etcdctl_tls = f" --cacert={ca} --cert={cert} --key={key}"
        curl_tls = f" --cacert {ca} --cert {cert} --key {key}"
    _say(out, "try:")
    _say(out, f"  etcdctl --endpoints={endpoints}{etcdctl_tls} put hello world")
    _say(out, f"  etcdctl --endpoints={endpoints}{etcdctl_tls} get hello")
    _say(out, f"  curl -s{curl_tls} {members[0].gateway_url}/health")
    _say(out, "Ctrl-C stops the cluster; run the same command again to resume it.")


def _supervise(
    members: Sequence[UpMember],
    processes: dict[str, subprocess.Popen[bytes]],
    stop: threading.Event,
    out: TextIO,
) -> int:
    """Report progress until there is a leader, then report exits until asked to stop."""
    exited: set[str] = set()
    leader_found = False
    started = time.monotonic()
    hinted = False
    credentials = _channel_credentials(members[0].tls_dir)
    with ExitStack() as channels:
        stubs = {
            member.name: _maintenance_stub(channels, member.client_endpoint, credentials)
            for member in members
        }
        while not stop.is_set():
            _report_exits(members, processes, exited, out)
            if len(exited) == len(members):
                _say(out, "raftkv up: every member has exited")
                return EXIT_MEMBERS_GONE
            if leader_found:
                stop.wait(WATCH_INTERVAL_S)
                continue
            leader_found = _report_progress(members, stubs, exited, started, out)
            if not leader_found and not hinted and time.monotonic() - started > LEADER_HINT_AFTER_S:
                hinted = True
                _say(out, f"still no leader: see the member logs in {members[0].log_path.parent}")
            if not leader_found:
                stop.wait(PROGRESS_INTERVAL_S)
    return EXIT_OK


def _report_exits(
    members: Sequence[UpMember],
    processes: dict[str, subprocess.Popen[bytes]],
    exited: set[str],
    out: TextIO,
) -> None:
    for member in members:
        process = processes[member.name]
        if member.name in exited or process.poll() is None:
            continue
        exited.add(member.name)
        _say(
            out,
            f"member {member.name} (pid {process.pid}) exited with code {process.returncode}; "
            f"last lines of {member.log_path}:",
        )
        for line in _log_tail(member.log_path, LOG_TAIL_LINES):
            _say(out, f"    {line}")


def _log_tail(log_path: Path, lines: int) -> list[str]:
    try:
        text = log_path.read_bytes()[-64 * limits.KIB :].decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _channel_credentials(tls_dir: Path | None) -> grpc.ChannelCredentials | None:
    """The client certificate of ``raftkv certs`` for the members' TLS gRPC ports."""
    if tls_dir is None:
        return None
    from raftkv.certs import DevCertFiles
    from raftkv.server.tls import read_pem

    files = DevCertFiles.in_directory(tls_dir)
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(str(files.ca_cert)),
        private_key=read_pem(str(files.client_key)),
        certificate_chain=read_pem(str(files.client_cert)),
    )


def _maintenance_stub(
    channels: ExitStack, endpoint: str, credentials: grpc.ChannelCredentials | None
) -> rpc_pb2_grpc.MaintenanceStub:
    if credentials is None:
        channel = channels.enter_context(grpc.insecure_channel(endpoint))
    else:
        channel = channels.enter_context(grpc.secure_channel(endpoint, credentials))
    return rpc_pb2_grpc.MaintenanceStub(channel)


@dataclass(frozen=True)
class MemberStatus:
    member_id: int
    leader_id: int  # 0 when the member knows no leader


def query_statuses(
    stubs: Mapping[str, rpc_pb2_grpc.MaintenanceStub], timeout_s: float
) -> dict[str, MemberStatus]:
    """Maintenance.Status of every member that answers within ``timeout_s``, in parallel."""
    futures = {
        name: stub.Status.future(rpc_pb2.StatusRequest(), timeout=timeout_s)
        for name, stub in stubs.items()
    }
    statuses: dict[str, MemberStatus] = {}
    for name, future in futures.items():
        try:
            response = future.result()
        except grpc.RpcError:
            continue
        statuses[name] = MemberStatus(response.header.member_id, response.leader)
    return statuses


def find_leader(statuses: dict[str, MemberStatus]) -> tuple[str, int] | None:
    """(name, id) of a leader that some member reports and that answers itself."""
    names_by_id = {status.member_id: name for name, status in statuses.items()}
    for status in statuses.values():
        if status.leader_id != 0 and status.leader_id in names_by_id:
            return names_by_id[status.leader_id], status.leader_id
    return None


def _report_progress(
    members: Sequence[UpMember],
    stubs: Mapping[str, rpc_pb2_grpc.MaintenanceStub],
    exited: set[str],
    started: float,
    out: TextIO,
) -> bool:
    """One progress line; True (and the ready line) once there is a leader."""
    live = {name: stub for name, stub in stubs.items() if name not in exited}
    statuses = query_statuses(live, STATUS_TIMEOUT_S)
    leader = find_leader(statuses)
    if leader is not None:
        name, member_id = leader
        _say(out, f"cluster ready: leader {name} (id {member_id:x})")
        return True
    answering = " ".join(m.name for m in members if m.name in statuses) or "none"
    elapsed_s = time.monotonic() - started
    _say(out, f"[{elapsed_s:4.0f}s] answering: {answering} (of {len(members)}); leader: none yet")
    return False


def _stop_members(
    members: Sequence[UpMember], processes: dict[str, subprocess.Popen[bytes]], out: TextIO
) -> None:
    """SIGTERM every member's group, wait out the grace period, SIGKILL what is left."""
    running = [processes[m.name] for m in members if m.name in processes]
    for process in running:
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + limits.UP_STOP_GRACE_SECONDS
    killed = 0
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait()
            killed += 1
    suffix = f" ({killed} needed SIGKILL)" if killed else ""
    _say(out, f"raftkv up: stopped {len(running)} members{suffix}")


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group a member was started in (``start_new_session``), unless the
    member was reaped already: its pid, and so its group id, may be another's by then."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, sig)
