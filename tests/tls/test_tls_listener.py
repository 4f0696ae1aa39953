"""The TLS listener (``raftkv.server.tls``) and the peer transport over it, in one process
on 127.0.0.1: who gets in, what a refused client sees, and what the log says."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from raftkv import limits
from raftkv.certs import DevCertFiles, generate_dev_certs
from raftkv.raft.messages import Message, MessageType
from raftkv.server.tls import (
    TlsFiles,
    TlsServer,
    client_context,
    server_context,
    start_tls_server,
)
from raftkv.server.transport import Transport

HOST = "127.0.0.1"
TEST_DEADLINE_S = 20.0
PLAINTEXT_REPLY = b"plaintext refused\n"
TLS_LOGGER = "raftkv.server.tls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertFiles:
    return generate_dev_certs(tmp_path_factory.mktemp("ca"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertFiles:
    return generate_dev_certs(tmp_path_factory.mktemp("other-ca"), ["127.0.0.1", "localhost"])


def peer_files(certs: DevCertFiles, trusted: DevCertFiles | None = None) -> TlsFiles:
    ca = (trusted or certs).ca_cert
    return TlsFiles(str(certs.peer_cert), str(certs.peer_key), str(ca), client_cert_auth=True)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), TEST_DEADLINE_S)

    asyncio.run(bounded())


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(b"echo " + data)
    await writer.drain()
    writer.close()


async def echo_server(files: TlsFiles) -> TlsServer:
    return await start_tls_server(
        echo_once,
        HOST,
        0,
        server_context(files),
        what="test listener",
        plaintext_reply=PLAINTEXT_REPLY,
        read_limit_bytes=64 * 1024,
    )


def port_of(server: TlsServer) -> int:
    return int(server.sockets[0].getsockname()[1])


async def exchange(port: int, context: ssl.SSLContext) -> bytes:
    """What the echo server answers one line over TLS (b"" if it closed instead)."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=context, server_hostname=HOST)
    try:
        writer.write(b"hello\n")
        await writer.drain()
        return await reader.read(100)
    finally:
        writer.close()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == TLS_LOGGER]


def test_a_client_with_a_certificate_of_the_ca_gets_in(certs: DevCertFiles) -> None:
    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            assert await exchange(port_of(server), client_context(peer_files(certs))) == (
                b"echo hello\n"
            )
        finally:
            server.close()
            await server.wait_closed()

    run(body)


def test_a_certificate_of_another_ca_is_refused_and_logged(
    certs: DevCertFiles, other_certs: DevCertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, TLS_LOGGER)

    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            # It trusts our CA, so only its own certificate can be the problem.
            stranger = client_context(peer_files(other_certs, trusted=certs))
            try:
                answer = await exchange(port_of(server), stranger)
            except (ssl.SSLError, ConnectionError):
                answer = b""
            assert answer == b""
        finally:
            server.close()
            await server.wait_closed()

    run(body)
    (line,) = refusals(caplog)
    assert "test listener: refused a connection from 127.0.0.1:" in line
    assert "TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in line


def test_a_client_without_a_certificate_is_refused(
    certs: DevCertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, TLS_LOGGER)

    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            anonymous = ssl.create_default_context(cafile=str(certs.ca_cert))
            try:
                answer = await exchange(port_of(server), anonymous)
            except (ssl.SSLError, ConnectionError):
                answer = b""
            assert answer == b""
        finally:
            server.close()
            await server.wait_closed()

    run(body)
    (line,) = refusals(caplog)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in line


def test_without_client_cert_auth_anyone_with_tls_gets_in(certs: DevCertFiles) -> None:
    async def body() -> None:
        files = TlsFiles(str(certs.server_cert), str(certs.server_key))
        server = await echo_server(files)
        try:
            anonymous = ssl.create_default_context(cafile=str(certs.ca_cert))
            assert await exchange(port_of(server), anonymous) == b"echo hello\n"
        finally:
            server.close()
            await server.wait_closed()

    run(body)


def test_a_plaintext_client_is_answered_in_plaintext_at_once(
    certs: DevCertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, TLS_LOGGER)

    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(HOST, port_of(server))
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert await reader.read() == PLAINTEXT_REPLY  # then end of file
            writer.close()
            assert time.monotonic() - started < 1.0
        finally:
            server.close()
            await server.wait_closed()

    run(body)
    (line,) = refusals(caplog)
    assert "plaintext on a TLS port (b'GET /'...)" in line


def test_a_silent_handshake_times_out(
    certs: DevCertFiles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(limits, "TLS_HANDSHAKE_TIMEOUT_MS", 200)
    caplog.set_level(logging.WARNING, TLS_LOGGER)

    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            reader, writer = await asyncio.open_connection(HOST, port_of(server))
            writer.write(b"\x16")  # the first byte of a ClientHello, and then nothing
            await writer.drain()
            started = time.monotonic()
            assert await reader.read() == b""
            assert time.monotonic() - started < 2.0
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(body)
    (line,) = refusals(caplog)
    assert "no TLS handshake within 200 ms" in line


def test_handshakes_in_progress_are_bounded(
    certs: DevCertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "TLS_MAX_PENDING_HANDSHAKES", 1)

    async def body() -> None:
        server = await echo_server(peer_files(certs))
        try:
            _, stalled = await asyncio.open_connection(HOST, port_of(server))
            await asyncio.sleep(0.1)  # accepted, waiting for its first byte
            reader, writer = await asyncio.open_connection(HOST, port_of(server))
            async with asyncio.timeout(1.0):
                assert await reader.read() == b""  # closed at once
            writer.close()
            stalled.close()
        finally:
            server.close()
            await server.wait_closed()

    run(body)


# --- The peer transport over TLS ------------------------------------------------------------


class TlsMember:
    def __init__(self, member_id: int, directory: Path, files: TlsFiles) -> None:
        self.messages: list[Message] = []
        self.transport = Transport(
            member_id=member_id,
            cluster_id=0x77,
            listen_host=HOST,
            listen_port=0,
            on_message=self.messages.append,
            on_snapshot=self.on_snapshot,
            on_request=self.on_request,
            snapshot_dir=str(directory / f"snap-{member_id}"),
            on_unreachable=lambda member_id: None,
            rng=random.Random(member_id),
            listen_tls=server_context(files),
            dial_tls=client_context(files),
        )

    async def on_snapshot(self, msg: Message, path: str) -> None:
        raise AssertionError("no snapshot in these tests")

    @staticmethod
    async def on_request(frm: int, payload: bytes) -> bytes:
        return b"%d:" % frm + payload

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.transport.port}"


def heartbeat(frm: int, to: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=3, commit=1)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_peers_of_one_ca_talk_over_tls(certs: DevCertFiles, tmp_path: Path) -> None:
    async def body() -> None:
        first = TlsMember(1, tmp_path, peer_files(certs))
        second = TlsMember(2, tmp_path, peer_files(certs))
        await first.transport.start()
        await second.transport.start()
        try:
            first.transport.add_peer(2, [second.url])
            second.transport.add_peer(1, [first.url])
            first.transport.send([heartbeat(1, 2)])
            second.transport.send([heartbeat(2, 1)])
            await eventually(lambda: bool(first.messages and second.messages))
            assert second.messages == [heartbeat(1, 2)]
            assert await second.transport.request(1, b"ping", 2.0) == b"2:ping"
        finally:
            await first.transport.stop()
            await second.transport.stop()

    run(body)


def test_a_peer_of_another_ca_is_refused_on_both_sides(
    certs: DevCertFiles,
    other_certs: DevCertFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    async def body() -> None:
        member = TlsMember(1, tmp_path, peer_files(certs))
        # The intruder trusts our CA, but its certificate comes from another one.
        intruder = TlsMember(2, tmp_path, peer_files(other_certs, trusted=certs))
        await member.transport.start()
        await intruder.transport.start()
        try:
            member.transport.add_peer(2, [intruder.url])
            intruder.transport.add_peer(1, [member.url])
            intruder.transport.send([heartbeat(2, 1)])
            member.transport.send([heartbeat(1, 2)])
            await asyncio.sleep(1.0)
            assert member.messages == [] and intruder.messages == []
        finally:
            await member.transport.stop()
            await intruder.transport.stop()

    run(body)
    lines = [record.getMessage() for record in caplog.records]
    member_port_refusal = [line for line in lines if "peer listener: refused a connection" in line]
    assert any("CERTIFICATE_VERIFY_FAILED" in line for line in member_port_refusal)
    # Our member does not accept the intruder's listener either, and says so.
    assert any(
        "stream to member 2: cannot connect" in line and "CERTIFICATE_VERIFY_FAILED" in line
        for line in lines
    )
    # The intruder learns that its certificate was refused.
    assert any("stream to member 1" in line and "TLS certificate" in line for line in lines)
    # ... and the intruder's listener says who left during the handshake, and why perhaps.
    assert any(
        "member 2 peer listener: refused" in line and "does it trust" in line for line in lines
    )


def test_a_plaintext_peer_on_a_tls_port_is_refused(
    certs: DevCertFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    async def body() -> None:
        member = TlsMember(1, tmp_path, peer_files(certs))
        plain = Transport(
            member_id=2,
            cluster_id=0x77,
            listen_host=HOST,
            listen_port=0,
            on_message=lambda message: None,
            on_snapshot=TlsMember.on_snapshot,  # type: ignore[arg-type]
            on_request=TlsMember.on_request,
            snapshot_dir=str(tmp_path / "snap-plain"),
            on_unreachable=lambda member_id: None,
        )
        await member.transport.start()
        await plain.start()
        try:
            plain.add_peer(1, [member.url.replace("https://", "http://")])
            plain.send([heartbeat(2, 1)])
            await asyncio.sleep(0.5)
            assert member.messages == []
        finally:
            await member.transport.stop()
            await plain.stop()

    run(body)
    lines = [record.getMessage() for record in caplog.records]
    assert any("plaintext on a TLS port (b'RKV1" in line for line in lines)
