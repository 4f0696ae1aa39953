"""TLS for a member's listeners and peer dials: contexts from etcd's flags, and a listener
that tells TLS from plaintext and says why it refuses a connection.

``TlsFiles`` is one set of etcd TLS flags (``--cert-file``, ``--key-file``,
``--trusted-ca-file``, ``--client-cert-auth``, or their ``--peer-`` forms). As in etcd, a
listener requires a client certificate signed by the trusted CA when
``--client-cert-auth`` is set *or* a trusted CA file is given.

``start_tls_server`` is ``asyncio.start_server`` for TLS, with what it lacks: it peeks at
the first bytes of each connection, so a plaintext client (a TLS record starts with 0x16)
gets a plaintext refusal (the gateway's HTTP 400) and is closed at once instead of
waiting for a handshake that never comes; and every failed handshake (an unknown CA, no
client certificate, a timeout) is logged with its reason and the remote address, which
asyncio's own TLS server keeps quiet about. Handshakes are bounded in time and in number.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raftkv import limits

_log = logging.getLogger(__name__)

# The first byte of a TLS handshake record (a ClientHello).
TLS_HANDSHAKE_RECORD_TYPE = 0x16
_PEEK_BYTES = 5  # one TLS record header
_PLAINTEXT_DRAIN_MAX_BYTES = 64 * 1024
_PLAINTEXT_DRAIN_TIMEOUT_S = 1.0
_ACCEPT_ERROR_PAUSE_S = 0.1

OnConnection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TlsFilesError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """One set of etcd's TLS flags: the member's certificate and key, and whom it trusts."""

    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    client_cert_auth: bool = False

    @property
    def verifies_clients(self) -> bool:
        """Whether a listener demands a client certificate: etcd's rule is that a trusted
        CA file alone is enough to turn it on."""
        return self.client_cert_auth or bool(self.trusted_ca_file)


def read_pem(path: str) -> bytes:
    """The bytes of a PEM file, bounded by TLS_PEM_FILE_MAX_BYTES."""
    try:
        with open(path, "rb") as file:
            data = file.read(limits.TLS_PEM_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise TlsFilesError(f"{path}: cannot read it: {error.strerror}") from None
    if len(data) > limits.TLS_PEM_FILE_MAX_BYTES:
        raise TlsFilesError(f"{path}: larger than {limits.TLS_PEM_FILE_MAX_BYTES} bytes")
    return data


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The context of a TLS listener (peer port, JSON gateway)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert_chain(context, files)
    if files.verifies_clients:
        assert files.trusted_ca_file, "config validation requires a CA to verify clients"
        _load_trusted_ca(context, files.trusted_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The context for dialing a TLS listener: verifies the server's certificate and host
    name against the trusted CA (the system's CAs without one), and presents our own
    certificate to listeners that ask for one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.trusted_ca_file:
        _load_trusted_ca(context, files.trusted_ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_cert_chain(context, files)
    return context


def check_files(files: TlsFiles) -> None:
    """TlsFilesError unless the certificate, key and CA load (and the key fits the cert)."""
    server_context(files)
    client_context(files)


def _load_cert_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    for path in (files.cert_file, files.key_file):
        read_pem(path)  # a missing or unreadable file gets a message that names it
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except ssl.SSLError as error:
        raise TlsFilesError(
            f"{files.cert_file} and {files.key_file} are not a certificate and its key: "
            f"{_reason(error)}"
        ) from None


def _load_trusted_ca(context: ssl.SSLContext, path: str) -> None:
    read_pem(path)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise TlsFilesError(f"{path}: not a PEM CA certificate: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        detail = getattr(error, "verify_message", None)
        return f"{error.reason}: {detail}" if detail else str(error.reason)
    if isinstance(error, TimeoutError):
        return f"no TLS handshake within {limits.TLS_HANDSHAKE_TIMEOUT_MS} ms"
    return str(error) or type(error).__name__


def describe_tls_error(error: BaseException) -> str:
    """A short reason for a failed TLS handshake or a TLS connection refused by its peer."""
    return _reason(error)


class _RefusalLog:
    """Logs each (remote host, reason) at most once per TLS_REFUSAL_LOG_INTERVAL_S, so a
    misconfigured peer that redials all the time does not flood the log."""

    def __init__(self) -> None:
        self._last_logged: dict[tuple[str, str], float] = {}

    def refused(self, what: str, address: tuple[str, int], reason: str) -> None:
        key = (address[0], reason)
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < limits.TLS_REFUSAL_LOG_INTERVAL_S:
            _log.debug("%s: refused %s:%d: %s", what, address[0], address[1], reason)
            return
        if len(self._last_logged) >= limits.TLS_REFUSAL_LOG_MAX_KEYS:
            self._last_logged.clear()
        self._last_logged[key] = now
        _log.warning(
            "%s: refused a connection from %s:%d: %s", what, address[0], address[1], reason
        )


class TlsServer:
    """Listening sockets that hand each connection to ``on_connection`` once its TLS
    handshake succeeded; the same ``sockets``/``close``/``wait_closed`` as asyncio.Server.

    ``on_connection`` runs in the task that accepted the connection and owns it from then
    on: ``close`` stops listening and ends the handshakes still running, not the
    connections already handed over (as asyncio.Server.close does)."""

    def __init__(
        self,
        on_connection: OnConnection | None,
        context: ssl.SSLContext,
        *,
        what: str,
        plaintext_reply: bytes,
        read_limit_bytes: int,
        protocol_factory: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        assert (on_connection is None) != (protocol_factory is None), "streams or a protocol"
        self._on_connection = on_connection
        self._protocol_factory = protocol_factory
        self._context = context
        self._what = what
        self._plaintext_reply = plaintext_reply
        self._read_limit_bytes = read_limit_bytes
        self._listeners: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals = _RefusalLog()
        self._closed = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._listeners)

    def listen(self, host: str, port: int) -> None:
        """Bind every address ``host`` resolves to (as asyncio.start_server does)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound_port = port
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # Every address of one host name shares the port the first one got.
                listener.bind((address[0], bound_port, *address[2:]))
                listener.listen(limits.TLS_LISTEN_BACKLOG)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
            bound_port = listener.getsockname()[1]
            self._listeners.append(listener)

    def start(self) -> None:
        for listener in self._listeners:
            self._accept_tasks.append(asyncio.create_task(self._accept_loop(listener)))

    def close(self) -> None:
        for task in self._accept_tasks:
            task.cancel()
        for task in list(self._handshakes):
            task.cancel()
        for listener in self._listeners:
            listener.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        await asyncio.gather(*self._accept_tasks, *self._handshakes, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(listener)
            except OSError as error:  # out of file descriptors, say: not the listener's end
                _log.warning("%s: accept failed: %s", self._what, error)
                await asyncio.sleep(_ACCEPT_ERROR_PAUSE_S)
                continue
            if len(self._handshakes) >= limits.TLS_MAX_PENDING_HANDSHAKES:
                self._refusals.refused(self._what, address, "too many TLS handshakes at once")
                connection.close()
                continue
            task = asyncio.create_task(self._serve(connection, address))
            self._handshakes.add(task)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(self._handshakes.discard)

    async def _serve(self, connection: socket.socket, address: tuple[str, int]) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection.setblocking(False)
        if self._protocol_factory is not None:
            # The protocol owns the connection once the handshake is done.
            await self._handshake(connection, address, self._protocol_factory())
            return
        assert self._on_connection is not None
        reader = asyncio.StreamReader(limit=self._read_limit_bytes)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = await self._handshake(connection, address, protocol)
        if transport is None:
            return
        self._handshakes.discard(task)  # from here on the callback owns the connection
        writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
        await self._on_connection(reader, writer)

    async def _handshake(
        self, connection: socket.socket, address: tuple[str, int], protocol: asyncio.Protocol
    ) -> asyncio.Transport | None:
        """The TLS transport of an accepted connection, bound to ``protocol``, or None (it
        is closed) if the remote end left, spoke plaintext or failed the handshake."""
        loop = asyncio.get_running_loop()
        try:
            return await self._handshake_within_bound(loop, connection, address, protocol)
        except BaseException:
            connection.close()
            raise

    async def _handshake_within_bound(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: socket.socket,
        address: tuple[str, int],
        protocol: asyncio.Protocol,
    ) -> asyncio.Transport | None:
        try:
            async with asyncio.timeout(limits.TLS_HANDSHAKE_TIMEOUT_MS / 1000):
                first_bytes = await _peek(loop, connection)
                if not first_bytes:
                    connection.close()  # a port probe: nothing to say
                    return None
                if first_bytes[0] != TLS_HANDSHAKE_RECORD_TYPE:
                    self._refusals.refused(
                        self._what, address, f"plaintext on a TLS port ({first_bytes!r}...)"
                    )
                    await self._refuse_plaintext(loop, connection)
                    return None
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    connection,
                    ssl=self._context,
                    ssl_handshake_timeout=limits.TLS_HANDSHAKE_TIMEOUT_MS / 1000,
                )
        except (OSError, TimeoutError) as error:
            reason = _reason(error)
            if isinstance(error, ConnectionError | ssl.SSLEOFError):
                reason = "the client left (does it trust this listener's certificate?)"
            self._refusals.refused(self._what, address, f"TLS handshake failed: {reason}")
            connection.close()
            return None
        return transport

    async def _refuse_plaintext(
        self, loop: asyncio.AbstractEventLoop, connection: socket.socket
    ) -> None:
        """Answer a plaintext client in plaintext, then close without a reset: what it
        sent is read and dropped, so the kernel does not discard the answer."""
        try:
            if self._plaintext_reply:
                await loop.sock_sendall(connection, self._plaintext_reply)
            connection.shutdown(socket.SHUT_WR)
            drained = 0
            async with asyncio.timeout(_PLAINTEXT_DRAIN_TIMEOUT_S):
                while drained < _PLAINTEXT_DRAIN_MAX_BYTES:
                    data = await loop.sock_recv(connection, _PLAINTEXT_DRAIN_MAX_BYTES)
                    if not data:
                        break
                    drained += len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            connection.close()


async def _peek(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    """The first bytes the remote end sent, left unread for the TLS layer; b"" at EOF."""
    while True:
        try:
            return connection.recv(_PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, connection)


async def _readable(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = connection.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def start_tls_server(
    on_connection: OnConnection | None,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    what: str,
    plaintext_reply: bytes = b"",
    read_limit_bytes: int,
    protocol_factory: Callable[[], asyncio.Protocol] | None = None,
) -> TlsServer:
    """Listen on ``host:port`` (port 0: a free port; see ``sockets``) and serve TLS.

    Each connection goes to ``on_connection`` as streams, or to a protocol from
    ``protocol_factory``. ``what`` names the listener in log lines; ``plaintext_reply`` is
    sent to a client that speaks plaintext before its connection is closed."""
    server = TlsServer(
        on_connection,
        context,
        what=what,
        plaintext_reply=plaintext_reply,
        read_limit_bytes=read_limit_bytes,
        protocol_factory=protocol_factory,
    )
    try:
        server.listen(host, port)
    except BaseException:
        server.close()
        raise
    server.start()
    return server


def certificate_host_names(cert_file: str) -> list[str]:
    """The DNS names and IP addresses a certificate's subjectAltName lists."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(read_pem(cert_file))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as error:
        raise TlsFilesError(f"{cert_file}: not a PEM certificate: {error}") from None
    return [
        *names.get_values_for_type(x509.DNSName),
        *(str(address) for address in names.get_values_for_type(x509.IPAddress)),
    ]


def name_for_self_dial(cert_file: str, host: str) -> str | None:
    """The name to check in the member's own certificate when it dials itself at ``host``:
    None when the certificate names ``host``, else one name it does list (a member that
    listens on 0.0.0.0 still talks to itself over TLS)."""
    names = certificate_host_names(cert_file)
    if not names or host.strip("[]") in names:
        return None
    return names[0]
