"""NetnsNetwork with real namespaces, real processes and real sockets.

Every host runs an agent (a TCP listener that reads to EOF and replies "<bytes> <udp
datagrams seen so far>", plus a UDP counter on the same port). Probes are short Python
processes started inside a host's namespace (or in the root namespace) that connect to an
agent and print what happened. These tests need root and network namespaces; without them
they fail with the reason (CI runs as root).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass

import pytest

from raftkv.verify.network import (
    NetnsNetwork,
    cleanup_stale,
    netns_available,
)

PROBE_TIMEOUT_S = 0.5
BULK_TIMEOUT_S = 15.0
PROCESS_TIMEOUT_S = 20.0
UDP_SETTLE_S = 0.2
UDP_DEADLINE_S = 3.0
# 64 KiB at 512 kbit/s is ~1 s on the slow link (a few ms on an unshaped one).
SLOW_RATE_KBIT = 512
BULK_BYTES = 64 * 1024
SLOW_MIN_ELAPSED_S = 0.5  # well under the ~0.8 s the limit forces even after the first burst
SLOW_MIN_RATIO = 3.0
LOSS_PERCENT = 30.0
LOSS_DATAGRAMS = 2000
LOSS_TOLERANCE_PERCENT = 7.0  # ~7 standard deviations of the binomial count

AGENT = r"""
import socket, sys, threading
host = sys.argv[1]
for _ in range(20):
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: never drop a datagram
    try:
        udp.bind((host, tcp.getsockname()[1]))
        break
    except OSError:
        tcp.close(); udp.close()
tcp.listen(64)
datagrams = [0]
def count():
    while True:
        udp.recv(2048)
        datagrams[0] += 1
def serve(conn):
    received = 0
    while chunk := conn.recv(65536):
        received += len(chunk)
    conn.sendall(f"{received} {datagrams[0]}".encode())
    conn.close()
threading.Thread(target=count, daemon=True).start()
print(tcp.getsockname()[1], flush=True)
while True:
    conn, _ = tcp.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

PROBE = r"""
import socket, sys, time
host, port, timeout, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
start = time.monotonic()
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"x" * size)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(100).decode()
    assert reply.split()[0] == str(size), reply
    print("ok", time.monotonic() - start)
except OSError as exc:
    print("fail", time.monotonic() - start, type(exc).__name__)
"""

UDP_SENDER = r"""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"d" * 16, (host, port))
    if i % 50 == 49:
        time.sleep(0.001)
print("sent", count)
"""

# Connects, waits for a line on stdin, half-closes, and reports whether the reply came in
# time; twice, so a test can cut the established connection in between and then restore it.
HELD_CONNECTION = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"x" * 100)
print("connected", flush=True)
sys.stdin.readline()
s.shutdown(socket.SHUT_WR)
for timeout in (1.0, 5.0):
    s.settimeout(timeout)
    try:
        print("reply", s.recv(100).decode(), flush=True)
        break
    except TimeoutError:
        print("timeout", flush=True)
        sys.stdin.readline()
"""

ROOT = None  # the root namespace's "host index" in probes and agents
Pair = tuple[int | None, int | None]  # (from host, to host)


def python_command(script: str, *args: object) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *map(str, args)]


def host_command(network: NetnsNetwork, host: int | None, argv: list[str]) -> list[str]:
    return argv if host is None else [*network.command_prefix(host), *argv]


def kill_group(process: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=PROCESS_TIMEOUT_S)


@dataclass
class Agents:
    network: NetnsNetwork
    ports: dict[int | None, int]  # host index (None: the root side) -> agent port
    processes: list[subprocess.Popen[str]]

    def address(self, host: int | None) -> str:
        return self.network.root_address if host is None else self.network.host_address(host)

    def start(self, host: int | None) -> None:
        argv = host_command(self.network, host, python_command(AGENT, self.address(host)))
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip().isdigit(), f"agent on host {host} did not start: {line!r}"
        self.ports[host] = int(line)

    def stop(self) -> None:
        for process in self.processes:
            kill_group(process)

    def probe_many(
        self, pairs: Sequence[Pair], size: int = 1
    ) -> dict[Pair, tuple[bool, float, str]]:
        """Connects from each src to dst's agent at once; (ok, elapsed_s, detail) per pair."""
        timeout = PROBE_TIMEOUT_S if size <= 1 else BULK_TIMEOUT_S
        running = {}
        for src, dst in pairs:
            probe = python_command(PROBE, self.address(dst), self.ports[dst], timeout, size)
            running[(src, dst)] = subprocess.Popen(
                host_command(self.network, src, probe),
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        results = {}
        try:
            for pair, process in running.items():
                out, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
                verdict, elapsed, *detail = out.split()
                results[pair] = (verdict == "ok", float(elapsed), " ".join(detail))
        finally:
            for process in running.values():
                if process.poll() is None:
                    kill_group(process)
        return results

    def reachable(self, src: int | None, dst: int | None) -> bool:
        return self.probe_many([(src, dst)])[(src, dst)][0]

    def udp_count(self, host: int | None) -> int:
        """Datagrams host's agent has received (asked from the root side, never faulted)."""
        with socket.create_connection((self.address(host), self.ports[host]), timeout=2) as s:
            s.shutdown(socket.SHUT_WR)
            return int(s.recv(100).decode().split()[1])

    def send_udp(self, src: int | None, dst: int | None, count: int) -> None:
        argv = python_command(UDP_SENDER, self.address(dst), self.ports[dst], count)
        subprocess.run(
            host_command(self.network, src, argv),
            check=True,
            capture_output=True,
            timeout=PROCESS_TIMEOUT_S,
        )

    def settled_udp_count(self, host: int | None, expected_at_most: int) -> int:
        """The count once it stops growing (or reaches expected_at_most)."""
        deadline = time.monotonic() + UDP_DEADLINE_S
        previous = -1
        while time.monotonic() < deadline:
            count = self.udp_count(host)
            if count == previous or count >= expected_at_most:
                return count
            previous = count
            time.sleep(UDP_SETTLE_S)
        return self.udp_count(host)


def require_namespaces() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.fail(f"network namespaces are unavailable: {reason}")


def namespaces_and_links() -> tuple[str, str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    return namespaces.stdout, links.stdout


@pytest.fixture
def agents() -> Iterator[Agents]:
    """A 3-host network with an agent on every host and on the root side."""
    require_namespaces()
    with ExitStack() as stack:
        network = stack.enter_context(NetnsNetwork.create(3))
        running = Agents(network, {}, [])
        stack.callback(running.stop)
        for host in (ROOT, 0, 1, 2):
            running.start(host)
        yield running


def all_pairs(hosts: Sequence[int]) -> list[Pair]:
    return [(a, b) for a in hosts for b in hosts if a != b]


def test_the_root_reaches_every_host_and_hosts_reach_each_other(agents: Agents) -> None:
    pairs = all_pairs([0, 1, 2]) + [(ROOT, h) for h in (0, 1, 2)] + [(h, ROOT) for h in (0, 1, 2)]
    results = agents.probe_many(pairs)
    assert {pair: ok for pair, (ok, _, _) in results.items()} == dict.fromkeys(pairs, True)

    added = agents.network.add_host()
    assert added == 3
    assert agents.network.host_address(3) != agents.network.host_address(2)
    agents.start(added)
    new_pairs = [(0, 3), (3, 0), (ROOT, 3)]
    results = agents.probe_many(new_pairs)
    assert all(ok for ok, _, _ in results.values()), results


def test_partition_cuts_groups_apart_both_ways_and_heal_restores(agents: Agents) -> None:
    network = agents.network
    network.partition([{0}, {1, 2}])
    network.partition([{0}, {1, 2}])  # idempotent
    cut: list[Pair] = [(0, 1), (1, 0), (0, 2), (2, 0)]
    kept: list[Pair] = (
        [(1, 2), (2, 1)] + [(ROOT, h) for h in (0, 1, 2)] + [(h, ROOT) for h in (0, 1, 2)]
    )
    results = agents.probe_many(cut + kept)
    for pair in cut:
        ok, _, detail = results[pair]
        assert not ok and detail == "TimeoutError", (pair, results[pair])  # silent, like a wire
    assert all(results[pair][0] for pair in kept), results

    network.heal()
    results = agents.probe_many(cut + kept)
    assert all(ok for ok, _, _ in results.values()), results


def test_drop_is_one_way_and_leaves_the_root_side_alone(agents: Agents) -> None:
    network = agents.network
    network.drop(0, 1)
    results = agents.probe_many([(0, 1), (ROOT, 1), (ROOT, 0), (0, 2), (1, 2), (2, 1)])
    assert results[(0, 1)][:1] == (False,) and results[(0, 1)][2] == "TimeoutError", results
    assert all(ok for pair, (ok, _, _) in results.items() if pair != (0, 1)), results

    # One way: datagrams from 1 reach 0, datagrams from 0 do not reach 1.
    before_0, before_1 = agents.udp_count(0), agents.udp_count(1)
    agents.send_udp(1, 0, 50)
    agents.send_udp(0, 1, 50)
    assert agents.settled_udp_count(0, before_0 + 50) == before_0 + 50
    assert agents.settled_udp_count(1, before_1 + 50) == before_1

    network.undrop(0, 1)
    network.undrop(0, 1)  # idempotent
    assert agents.reachable(0, 1)


def test_drop_cuts_an_established_connection_until_undropped(agents: Agents) -> None:
    network = agents.network
    argv = python_command(HELD_CONNECTION, network.host_address(1), agents.ports[1])
    client = subprocess.Popen(
        host_command(network, 0, argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        network.drop(0, 1)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "timeout"  # the FIN never arrives
        network.undrop(0, 1)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "reply 100 0"  # retransmitted, delivered
    finally:
        kill_group(client)


def test_slow_limits_host_to_host_traffic_but_not_the_root_side(agents: Agents) -> None:
    network = agents.network
    network.slow(0, SLOW_RATE_KBIT)
    network.slow(0, SLOW_RATE_KBIT)  # idempotent
    results = agents.probe_many([(0, 1), (1, 2), (0, ROOT)], size=BULK_BYTES)
    assert all(ok for ok, _, _ in results.values()), results
    slow_s, fast_s, to_root_s = (results[p][1] for p in [(0, 1), (1, 2), (0, ROOT)])
    assert slow_s >= SLOW_MIN_ELAPSED_S, results
    assert slow_s > SLOW_MIN_RATIO * fast_s, results
    assert slow_s > SLOW_MIN_RATIO * to_root_s, results

    network.heal()
    results = agents.probe_many([(0, 1), (1, 2)], size=BULK_BYTES)
    assert all(ok for ok, _, _ in results.values()), results
    assert results[(0, 1)][1] < SLOW_MIN_ELAPSED_S, results


def test_lossy_drops_a_share_of_host_to_host_packets_but_not_to_the_root(
    agents: Agents,
) -> None:
    network = agents.network
    network.lossy(0, LOSS_PERCENT)
    network.lossy(0, LOSS_PERCENT)  # idempotent
    targets = {1: agents.udp_count(1), 2: agents.udp_count(2), ROOT: agents.udp_count(ROOT)}
    agents.send_udp(0, 1, LOSS_DATAGRAMS)
    agents.send_udp(2, 1, LOSS_DATAGRAMS)  # from an unaffected host
    agents.send_udp(0, ROOT, LOSS_DATAGRAMS)
    expected_1 = targets[1] + 2 * LOSS_DATAGRAMS
    received_1 = agents.settled_udp_count(1, expected_1) - targets[1]
    received_root = agents.settled_udp_count(ROOT, targets[ROOT] + LOSS_DATAGRAMS)
    assert received_root - targets[ROOT] == LOSS_DATAGRAMS
    lost_percent = 100 * (2 * LOSS_DATAGRAMS - received_1) / LOSS_DATAGRAMS
    assert abs(lost_percent - LOSS_PERCENT) <= LOSS_TOLERANCE_PERCENT, lost_percent

    network.heal()
    before = agents.udp_count(1)
    agents.send_udp(0, 1, LOSS_DATAGRAMS)
    assert agents.settled_udp_count(1, before + LOSS_DATAGRAMS) == before + LOSS_DATAGRAMS


def test_close_leaves_nothing_and_may_be_called_twice() -> None:
    require_namespaces()
    network = NetnsNetwork.create(2)
    try:
        network.partition([{0}, {1}])
        network.slow(1, SLOW_RATE_KBIT)
        namespaces, links = namespaces_and_links()
        assert network.hub_namespace in namespaces and network.run_name in links
    finally:
        network.close()
    network.close()
    namespaces, links = namespaces_and_links()
    assert network.run_name not in namespaces
    assert network.run_name not in links


def test_cleanup_stale_removes_runs_of_dead_creators_only() -> None:
    require_namespaces()
    creator = subprocess.run(
        [
            sys.executable,
            "-c",
            "from raftkv.verify.network import NetnsNetwork\n"
            "n = NetnsNetwork.create(2)\n"
            "print(n.run_name)",  # and exit without close()
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=True,
    )
    dead_run = creator.stdout.strip()
    try:
        with NetnsNetwork.create(1) as live:
            namespaces, links = namespaces_and_links()
            assert f"{dead_run}-h1" in namespaces and dead_run in links
            removed = cleanup_stale()
            assert {dead_run, f"{dead_run}-hub", f"{dead_run}-h0", f"{dead_run}-h1"} <= set(removed)
            namespaces, links = namespaces_and_links()
            assert dead_run not in namespaces and dead_run not in links
            assert live.namespace(0) in namespaces and live.run_name in links
            assert not any(live.run_name in name for name in removed)
    finally:
        cleanup_stale()


def test_two_networks_at_once_are_separate() -> None:
    require_namespaces()
    created: list[NetnsNetwork] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            created.append(NetnsNetwork.create(2))
        except BaseException as exc:  # reported below, after the networks are closed
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(2)]
    with ExitStack() as stack:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for network in created:
            stack.callback(network.close)
        assert not errors, errors
        first, second = created
        assert first.run_name != second.run_name
        assert not first.subnet.overlaps(second.subnet)

        agents = [Agents(network, {}, []) for network in created]
        for running in agents:
            stack.callback(running.stop)
            for host in (0, 1):
                running.start(host)
        first.partition([{0}, {1}])
        assert not agents[0].reachable(0, 1)
        assert agents[1].reachable(0, 1) and agents[1].reachable(1, 0)
        first.close()
        assert agents[1].reachable(0, 1) and agents[1].reachable(ROOT, 0)
