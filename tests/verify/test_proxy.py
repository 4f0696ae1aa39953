"""ProxyNetwork with real sockets: fake raftkv and etcd peers, then real 3-member raftkv and
etcd clusters whose peer traffic passes through the proxy's fronts.

A "sink" is a TCP server in this process that records what each accepted connection sends
and can answer it; clients are plain sockets connected to a front.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.transport import ConnectionKind, encode_handshake
from raftkv.verify.cluster import Flavor, MemberProcess, free_ports, server_command
from raftkv.verify.proxy import (
    ProxyClosedError,
    ProxyNetwork,
    SenderScanner,
    WireProtocol,
    sniff,
)

LOOPBACK = "127.0.0.1"
CLUSTER_ID = 0xC1
SENDER_ID = 7
HELD_CHECK_S = 1.0  # how long held bytes must stay held
ARRIVAL_TIMEOUT_S = 5.0
POLL_S = 0.02
BULK_BYTES = 64 * 1024
SLOW_RATE_KBIT = 512  # 64 KiB minus the 16 KiB burst: ~0.77 s at 64 kB/s
SLOW_MIN_ELAPSED_S = 0.6
SLOW_MIN_RATIO = 3.0
LOSS_PERCENT = 50.0
LOSS_MESSAGES = 20
LOSS_STALLED_S = 0.15  # a stall is 0.2 s; an unstalled message arrives in a few ms
LOSS_MIN_STALLED = 4  # 10 of 20 are expected; fewer than 4 (or more than 16) has p ~ 0.1%

CLUSTER_START_TIMEOUT_S = 30.0
ELECTION_TIMEOUT_S = 10.0
REJOIN_TIMEOUT_S = 10.0
STATUS_TIMEOUT_S = 0.5
PUT_TIMEOUT_S = 3.0
TIMING_FLAGS = ["--heartbeat-interval=100", "--election-timeout=1000"]


# --- Helpers ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float = ARRIVAL_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()


class Sink:
    """Records what every accepted connection sends; can answer the n-th connection."""

    def __init__(self) -> None:
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._received: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self._received.append(buffer)
                self._sockets.append(conn)
            threading.Thread(target=self._read, args=(conn, buffer), daemon=True).start()

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        with suppress(OSError):
            while chunk := conn.recv(65536):
                with self._lock:
                    buffer.extend(chunk)

    def received(self, index: int = 0) -> bytes:
        with self._lock:
            return bytes(self._received[index]) if index < len(self._received) else b""

    def has(self, expected: bytes, index: int = 0, timeout_s: float = ARRIVAL_TIMEOUT_S) -> bool:
        """Whether connection ``index`` has received exactly ``expected`` within the time."""
        return wait_until(lambda: self.received(index) == expected, timeout_s)

    def reply(self, data: bytes, index: int = 0) -> None:
        with self._lock:
            conn = self._sockets[index]
        conn.sendall(data)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for conn in self._sockets:
                conn.close()


def receive(conn: socket.socket, size: int, timeout_s: float) -> bytes:
    """Up to ``size`` bytes, reading until they are all there or the time is up."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def proxy() -> Iterator[ProxyNetwork]:
    with ProxyNetwork(seed=1) as network:
        yield network


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clients() -> Iterator[Callable[[int], socket.socket]]:
    """Opens client connections to a port; closes them all at the end."""
    with ExitStack() as stack:

        def connect(port: int) -> socket.socket:
            return stack.enter_context(socket.create_connection((LOOPBACK, port), timeout=5))

        yield connect


def hello(member_id: int = SENDER_ID) -> bytes:
    return encode_handshake(CLUSTER_ID, member_id, ConnectionKind.STREAM)


def etcd_request(sender: str | None, body: bytes = b"hello", path: str = "/raft") -> bytes:
    header = f"X-Server-From: {sender}\r\n" if sender is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{header}"
        f"Content-Type: application/protobuf\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# --- Sniffing -----------------------------------------------------------------------------


def test_sniff_names_the_sender_of_each_protocol() -> None:
    handshake = hello(0xABC)
    assert sniff(handshake[:10], final=False) is None  # half a handshake: read on
    raftkv = sniff(handshake + b"frames", final=False)
    assert raftkv is not None and raftkv.protocol is WireProtocol.RAFTKV
    assert raftkv.sender_id == 0xABC

    request = etcd_request("1f")
    assert sniff(request[:20], final=False) is None  # the header block is not complete
    stream = sniff(b"GET /raft/stream/message/1f HTTP/1.1\r\nX-Server-From: 2A\r\n"
                   b"X-Raft-To: 1f\r\n\r\n", final=False)  # fmt: skip
    assert stream is not None and stream.protocol is WireProtocol.HTTP
    assert (stream.sender_id, stream.receiver_id) == (0x2A, 0x1F)

    probe = sniff(b"GET /raft/probing HTTP/1.1\r\nHost: x\r\n\r\n", final=False)
    assert probe is not None and probe.sender_id is None
    garbage = sniff(b"\x00\x01binary", final=False)
    assert garbage is not None and garbage.protocol is WireProtocol.OTHER
    cut_short = sniff(request[:20], final=True)
    assert cut_short is not None and cut_short.sender_id is None


def test_scanner_finds_the_header_split_across_reads() -> None:
    scanner = SenderScanner()
    stream = etcd_request(None, path="/version") + etcd_request("1f", body=b"x-server-from: 99")
    split_at = stream.index(b"X-Server-From") + 5  # in the middle of the header name
    assert scanner.feed(stream[:split_at]) is None
    assert scanner.feed(stream[split_at : split_at + 12]) is None  # "rom: 1" and no line end
    assert scanner.feed(stream[split_at + 12 :]) == 0x1F


# --- Faults on fake peers -----------------------------------------------------------------


def test_drop_holds_one_direction_of_an_identified_raftkv_connection(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    front = proxy.front(receiver, sink.port)
    proxy.identify(SENDER_ID, sender)
    client = clients(front)
    client.sendall(hello() + b"one")
    assert sink.has(hello() + b"one")
    [described] = proxy.connections()
    assert (described.protocol, described.sender_host, described.front_host) == (
        WireProtocol.RAFTKV,
        sender,
        receiver,
    )

    proxy.drop(sender, receiver)
    client.sendall(b"two")
    assert not sink.has(hello() + b"onetwo", timeout_s=HELD_CHECK_S)
    proxy.heal()
    assert sink.has(hello() + b"onetwo")  # held, not lost

    # The reply direction is dst -> src traffic: drop(receiver, sender) holds it alone.
    proxy.drop(receiver, sender)
    sink.reply(b"answer")
    client.sendall(b"three")
    assert sink.has(hello() + b"onetwothree")
    assert receive(client, 6, HELD_CHECK_S) == b""
    proxy.undrop(receiver, sender)
    assert receive(client, 6, ARRIVAL_TIMEOUT_S) == b"answer"


def test_reply_handshake_teaches_which_member_is_behind_a_front(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    client.sendall(hello())
    assert sink.has(hello())
    assert proxy.member_hosts() == {}
    sink.reply(hello(member_id=9))
    assert receive(client, len(hello()), ARRIVAL_TIMEOUT_S) == hello(member_id=9)
    assert proxy.member_hosts() == {9: receiver}
    # Member 9 is known now, so its connections are faulted without an identify().
    client_of_9 = clients(proxy.front(sender, sink.port))
    client_of_9.sendall(hello(member_id=9))
    assert sink.has(hello(member_id=9), index=1)
    proxy.drop(receiver, sender)
    client_of_9.sendall(b"held")
    assert not sink.has(hello(member_id=9) + b"held", index=1, timeout_s=HELD_CHECK_S)


def test_partition_holds_an_etcd_request_and_heal_delivers_it(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    proxy.identify(0x1F, sender)
    request = etcd_request("1f")
    client.sendall(request)
    assert sink.has(request)

    proxy.partition([{sender}, {receiver}])
    client.sendall(request)
    assert not sink.has(request * 2, timeout_s=HELD_CHECK_S)
    proxy.heal()
    assert sink.has(request * 2)


def test_keep_alive_connection_is_identified_by_its_first_request_naming_a_sender(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    """etcd's prober and pipeline share connections: a probe first names no sender."""
    sender, receiver = proxy.add_host(), proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    proxy.identify(0x1F, sender)
    probe = b"GET /raft/probing HTTP/1.1\r\nHost: x\r\n\r\n"
    client.sendall(probe)
    assert sink.has(probe)
    proxy.partition([{sender}, {receiver}])
    client.sendall(probe)
    assert sink.has(probe * 2)  # an unknown sender passes the partition

    request = etcd_request("1f")
    split_at = request.index(b"Server-From")
    client.sendall(request[:split_at])  # the header arrives in two reads
    time.sleep(0.1)
    client.sendall(request[split_at:])
    assert not sink.has(probe * 2 + request, timeout_s=HELD_CHECK_S)
    [described] = proxy.connections()
    assert (described.sender_id, described.sender_host) == (0x1F, sender)
    proxy.heal()
    assert sink.has(probe * 2 + request)


def test_etcd_stream_request_teaches_its_receiver(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    proxy.add_host()
    receiver = proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    stream = b"GET /raft/stream/message/1f HTTP/1.1\r\nX-Server-From: 1f\r\nX-Raft-To: 2a\r\n\r\n"
    client.sendall(stream)
    assert sink.has(stream)
    assert proxy.member_hosts() == {0x2A: receiver}


def test_unknown_sender_is_never_faulted_until_identified(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    front = proxy.front(receiver, sink.port)
    raftkv_client, other_client = clients(front), clients(front)
    raftkv_client.sendall(hello(member_id=99))
    assert sink.has(hello(member_id=99), index=0)
    other_client.sendall(b"\x00not a known protocol")
    assert sink.has(b"\x00not a known protocol", index=1)

    proxy.partition([{sender}, {receiver}])
    for host in (sender, receiver):
        proxy.slow(host, 8)  # 64 KiB would take a minute
        proxy.lossy(host, 90)
    payload = b"u" * BULK_BYTES
    started = time.monotonic()
    raftkv_client.sendall(payload)
    other_client.sendall(payload)
    sink.reply(payload, index=0)
    assert sink.has(hello(member_id=99) + payload, index=0)
    assert sink.has(b"\x00not a known protocol" + payload, index=1)
    assert receive(raftkv_client, BULK_BYTES, ARRIVAL_TIMEOUT_S) == payload
    assert time.monotonic() - started < 2.0

    # Identified after it connected: from now on its bytes are faulted.
    proxy.identify(99, sender)
    raftkv_client.sendall(b"late")
    assert not sink.has(hello(member_id=99) + payload + b"late", timeout_s=HELD_CHECK_S)
    proxy.heal()
    assert sink.has(hello(member_id=99) + payload + b"late")


def test_slow_throttles_only_what_the_slow_host_sends(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    proxy.identify(SENDER_ID, sender)
    payload = b"s" * BULK_BYTES
    expected = hello()

    def timed_send() -> float:
        nonlocal expected
        expected += payload
        started = time.monotonic()
        client.sendall(payload)
        assert sink.has(expected, timeout_s=10)
        return time.monotonic() - started

    def timed_reply() -> float:
        started = time.monotonic()
        sink.reply(payload)
        assert receive(client, BULK_BYTES, 10) == payload
        return time.monotonic() - started

    client.sendall(hello())
    assert sink.has(hello())
    fast_s = timed_send()
    proxy.slow(sender, SLOW_RATE_KBIT)
    slow_s = timed_send()
    assert slow_s >= SLOW_MIN_ELAPSED_S and slow_s >= SLOW_MIN_RATIO * fast_s, (fast_s, slow_s)
    reply_s = timed_reply()  # the receiver is not slow
    assert slow_s >= SLOW_MIN_RATIO * reply_s, (reply_s, slow_s)
    proxy.slow(receiver, SLOW_RATE_KBIT)
    assert timed_reply() >= SLOW_MIN_ELAPSED_S
    proxy.heal()
    assert timed_send() < slow_s / SLOW_MIN_RATIO


def test_lossy_stalls_some_pieces(
    proxy: ProxyNetwork, sink: Sink, clients: Callable[[int], socket.socket]
) -> None:
    sender, receiver = proxy.add_host(), proxy.add_host()
    client = clients(proxy.front(receiver, sink.port))
    proxy.identify(SENDER_ID, sender)
    client.sendall(hello())
    assert sink.has(hello())
    proxy.lossy(sender, LOSS_PERCENT)
    expected = hello()
    latencies_s = []
    for index in range(LOSS_MESSAGES):
        message = f"m{index:03}".encode()
        expected += message
        started = time.monotonic()
        client.sendall(message)
        assert sink.has(expected)  # each is delivered, some late
        latencies_s.append(time.monotonic() - started)
    stalled = sum(latency_s >= LOSS_STALLED_S for latency_s in latencies_s)
    assert LOSS_MIN_STALLED <= stalled <= LOSS_MESSAGES - LOSS_MIN_STALLED, latencies_s


def test_member_down_closes_the_connection_and_close_is_final(
    proxy: ProxyNetwork, clients: Callable[[int], socket.socket]
) -> None:
    [dead_port] = free_ports(1)
    client = clients(proxy.front(proxy.add_host(), dead_port))
    client.sendall(hello())
    assert receive(client, 1, ARRIVAL_TIMEOUT_S) == b""  # closed: nobody behind the front
    proxy.close()
    proxy.close()
    with pytest.raises(ProxyClosedError):
        proxy.heal()


# --- Real clusters --------------------------------------------------------------------------


@dataclass
class ProxiedMember:
    process_member: MemberProcess
    front_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def front_url(self) -> str:
        return f"http://{LOOPBACK}:{self.front_port}"

    @property
    def endpoint(self) -> str:
        return self.process_member.client_endpoint


def start_members(
    flavor: Flavor, proxy: ProxyNetwork, root: Path, stack: ExitStack
) -> list[ProxiedMember]:
    """Three members that listen on their own peer ports and advertise their fronts."""
    members = []
    for index in range(3):
        host = proxy.add_host()
        client_port, peer_port, gateway_port = free_ports(3)
        planned = MemberProcess(
            name=f"m{index + 1}",
            host=LOOPBACK,
            client_port=client_port,
            peer_port=peer_port,
            gateway_port=gateway_port,
            data_dir=root / f"m{index + 1}",
            log_path=root / f"m{index + 1}.log",
            host_index=host,
        )
        members.append(ProxiedMember(planned, proxy.front(host, peer_port)))
    initial_cluster = ",".join(f"{m.process_member.name}={m.front_url}" for m in members)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "RAFTKV_"))}
    for member in members:
        command = [
            f"--initial-advertise-peer-urls={member.front_url}"
            if arg.startswith("--initial-advertise-peer-urls=")
            else arg
            for arg in server_command(flavor, member.process_member, initial_cluster, "new")
        ]
        with member.process_member.log_path.open("ab") as log:
            member.process = subprocess.Popen(
                [*command, *TIMING_FLAGS],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        stack.callback(kill_group, member.process)
    return members


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def status(member: ProxiedMember) -> tuple[int, int] | None:
    """(member id, leader id) as the member reports them, or None if it does not answer."""
    with grpc.insecure_channel(member.endpoint) as channel:
        try:
            response = rpc_pb2_grpc.MaintenanceStub(channel).Status(
                rpc_pb2.StatusRequest(), timeout=STATUS_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        return response.header.member_id, response.leader


def put(member: ProxiedMember, key: bytes, value: bytes) -> bool:
    with grpc.insecure_channel(member.endpoint) as channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Put(
                rpc_pb2.PutRequest(key=key, value=value), timeout=PUT_TIMEOUT_S
            )
        except grpc.RpcError:
            return False
        return True


def local_value(member: ProxiedMember, key: bytes) -> bytes | None:
    """The member's own (serializable) view of ``key``."""
    with grpc.insecure_channel(member.endpoint) as channel:
        try:
            response = rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=key, serializable=True), timeout=STATUS_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        return response.kvs[0].value if response.kvs else None


def front_urls_listed(member: ProxiedMember) -> set[str]:
    with grpc.insecure_channel(member.endpoint) as channel:
        response = rpc_pb2_grpc.ClusterStub(channel).MemberList(
            rpc_pb2.MemberListRequest(), timeout=ARRIVAL_TIMEOUT_S
        )
        return {url for listed in response.members for url in listed.peerURLs}


def logs(members: list[ProxiedMember]) -> str:
    return "\n".join(
        f"--- {m.process_member.name} ---\n"
        + m.process_member.log_path.read_text(errors="replace")[-3000:]
        for m in members
    )


def agreed_leader(members: list[ProxiedMember]) -> int | None:
    """The leader id every given member reports, if they all answer and agree."""
    statuses = [status(member) for member in members]
    leaders = {s[1] for s in statuses if s is not None}
    if None in statuses or len(leaders) != 1:
        return None
    leader = leaders.pop()
    return leader if leader != 0 else None


@pytest.mark.parametrize("flavor", ["raftkv", "etcd"])
def test_isolated_leader_is_replaced_and_rejoins(flavor: Flavor, tmp_path: Path) -> None:
    with ExitStack() as stack:
        proxy = stack.enter_context(ProxyNetwork(seed=1))
        members = start_members(flavor, proxy, tmp_path, stack)
        hosts = [m.process_member.host_index for m in members]
        assert wait_until(lambda: agreed_leader(members) is not None, CLUSTER_START_TIMEOUT_S), (
            logs(members)
        )
        ids = {}
        for member, host in zip(members, hosts, strict=True):
            answer = status(member)
            assert answer is not None
            ids[answer[0]] = host
        # The members reach each other through the fronts, and the proxy saw who is who.
        assert front_urls_listed(members[0]) == {m.front_url for m in members}
        assert wait_until(lambda: proxy.member_hosts() == ids), (proxy.member_hosts(), ids)
        for member_id, host in ids.items():
            proxy.identify(member_id, host)

        old_leader_id = agreed_leader(members)
        assert old_leader_id is not None
        old_host = ids[old_leader_id]
        old = next(m for m in members if m.process_member.host_index == old_host)
        rest = [m for m in members if m is not old]
        proxy.partition([[old_host], [host for host in hosts if host != old_host]])

        def new_leader() -> int | None:
            leader = agreed_leader(rest)
            return leader if leader not in (None, old_leader_id) else None

        assert wait_until(lambda: new_leader() is not None, ELECTION_TIMEOUT_S), logs(members)
        assert not put(old, b"from-the-old-leader", b"lost"), "an isolated leader committed"
        assert put(rest[0], b"during-partition", b"majority")

        proxy.heal()

        # The old leader follows again (a leader that all three agree on, not itself).
        def rejoined() -> bool:
            leader = agreed_leader(members)
            return leader is not None and leader != old_leader_id

        assert wait_until(rejoined, REJOIN_TIMEOUT_S), logs(members)
        assert wait_until(lambda: local_value(old, b"during-partition") == b"majority")
