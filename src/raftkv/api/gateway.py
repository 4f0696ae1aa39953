"""The JSON gateway: etcd's grpc-gateway HTTP/JSON API in front of the member's gRPC.

Like etcd's, it forwards each request to the member's own gRPC server over a loopback
channel, so every call has exactly the gRPC semantics (validation, errors, auth), and
only translates: JSON body -> request message, response message -> JSON
(``gateway_json``), over a small strict HTTP/1.1 server (``gateway_http``). Routes are
etcd 3.5's (``gateway_routes``), all ``POST``:

* unary calls answer one JSON object;
* streams (``/v3/watch``, ``/v3/lease/keepalive``, ``/v3/election/observe``,
  ``/v3/maintenance/snapshot``) answer with chunked transfer encoding, one
  ``{"result": {...}}`` line per message, each in its own chunk. A bidi stream's
  request messages are the body's JSON objects. The call is canceled when the HTTP
  client disconnects.

The ``Authorization`` header goes to gRPC as the ``token`` metadata. ``GET /version``,
``/health`` (etcd 3.5's checks: alarms, a leader, a linearizable read), ``/livez``,
``/readyz`` and ``/metrics`` (``raftkv.server.metrics``) are answered here.

TLS: a listen address given an ``ssl.SSLContext`` serves HTTPS only (a plaintext request
gets Go's "400 Bad Request: Client sent an HTTP request to an HTTPS server" and is closed);
with client certificates required, only clients the trusted CA signed get in. When the
member's gRPC port is TLS, the loopback channel is too (``gateway_channel_credentials``):
it trusts the member's --trusted-ca-file (the system's CAs without one) and, when the
member requires client certificates, presents the member's own certificate, which must
therefore allow client authentication (``raftkv certs`` makes it so).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import grpc
from google.protobuf.message import Message

from raftkv import limits
from raftkv.api import authz, gateway_json
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.gateway_http import (
    TEXT_HEADERS,
    Connection,
    HttpListeners,
    ListenerBounds,
    Request,
)
from raftkv.api.gateway_routes import ROUTES, CallKind, Route
from raftkv.server import metrics
from raftkv.server.interface import ETCD_API_VERSION
from raftkv.server.tls import TlsFiles, read_pem

# The etcd versions /version reports: the API raftkv speaks (raftkv.server.interface
# NodeStatus.version says the same through Status).
# One version for the server and the cluster: raftkv has no mixed-version clusters.
ETCD_CLUSTER_VERSION = ETCD_API_VERSION

# The end of a response stream (grpc-stubs does not declare it).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]
_JSON = [("Content-Type", "application/json")]
_TEXT = TEXT_HEADERS
_Metadata = tuple[tuple[str, str], ...]
PLAINTEXT_ON_TLS_REPLY = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


def body_limit_bytes(max_request_bytes: int) -> int:
    """The largest request body: a request of ``max_request_bytes`` in base64 JSON."""
    assert max_request_bytes > 0
    return (max_request_bytes * 4 + 2) // 3 + limits.GATEWAY_BODY_OVERHEAD_BYTES


class Gateway:
    """A running gateway: its listening ports, and ``close``."""

    def __init__(self, channel: grpc.aio.Channel, max_body_bytes: int) -> None:
        self._channel = channel
        self._max_body_bytes = max_body_bytes
        self._listeners = HttpListeners(self._handle, self._bounds)
        self._unary = {
            path: channel.unary_unary(
                route.grpc_method,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )
            for path, route in ROUTES.items()
            if route.kind is CallKind.UNARY
        }

    def _bounds(self) -> ListenerBounds:
        return ListenerBounds(
            what="JSON gateway",
            max_connections=limits.GATEWAY_MAX_CONNECTIONS,
            max_header_bytes=limits.GATEWAY_MAX_HEADER_BYTES,
            max_body_bytes=self._max_body_bytes,
            read_timeout_seconds=limits.GATEWAY_READ_TIMEOUT_SECONDS,
            idle_timeout_seconds=limits.GATEWAY_IDLE_TIMEOUT_SECONDS,
            plaintext_on_tls_reply=PLAINTEXT_ON_TLS_REPLY,
        )

    @property
    def ports(self) -> list[int]:
        """The bound port of each listening socket, in listen_addresses order."""
        return self._listeners.ports

    async def listen(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        await self._listeners.listen(host, port, context)

    async def close(self) -> None:
        """Stop listening, end every connection (canceling their calls), close gRPC."""
        await self._listeners.close()
        await self._channel.close(grace=None)

    # --- Connections -------------------------------------------------------------------

    async def _handle(self, connection: Connection, request: Request) -> bool:
        """Answer one request; whether the connection stays open for another."""
        route = ROUTES.get(request.path)
        if route is not None:
            if request.method != "POST":
                return await _method_not_allowed(connection, request, "POST")
            return await self._call(connection, request, route)
        local = _LOCAL_HANDLERS.get(request.path)
        if local is not None:
            if request.method != "GET":
                return await _method_not_allowed(connection, request, "GET")
            await local(self, connection, request)
            return request.keep_alive
        # etcd: grpc-gateway's "Not Found" under /v3/, Go's mux elsewhere.
        text = b"Not Found\n" if request.path.startswith("/v3/") else b"404 page not found\n"
        await connection.write_response(HTTPStatus.NOT_FOUND, _TEXT, text, request.keep_alive)
        return request.keep_alive

    # --- gRPC calls --------------------------------------------------------------------

    async def _call(self, connection: Connection, request: Request, route: Route) -> bool:
        many = route.kind is CallKind.BIDI_STREAM
        try:
            messages = gateway_json.parse_body(request.body, route.request_type, many)
            metadata = _metadata(request)
        except gateway_json.BodyError as error:
            await _write_error(connection, grpc.StatusCode.INVALID_ARGUMENT, str(error), request)
            return request.keep_alive
        if route.kind is CallKind.UNARY:
            return await self._call_unary(connection, request, messages[0], metadata)
        return await self._call_stream(connection, request, route, messages, metadata)

    async def _call_unary(
        self, connection: Connection, request: Request, message: Message, metadata: _Metadata
    ) -> bool:
        call = self._unary[request.path](message, metadata=metadata)
        try:
            async with _canceled_if_peer_closes(connection, call):
                response = await call
        except grpc.aio.AioRpcError as error:
            await _write_error(connection, error.code(), error.details() or "", request)
            return request.keep_alive
        except asyncio.CancelledError:
            if connection.peer_closed and call.cancelled():
                return False  # the client left: nobody to answer
            raise
        document = gateway_json.encode(gateway_json.message_document(response))
        await connection.write_response(HTTPStatus.OK, _JSON, document, request.keep_alive)
        return request.keep_alive

    async def _call_stream(
        self,
        connection: Connection,
        request: Request,
        route: Route,
        messages: list[Message],
        metadata: _Metadata,
    ) -> bool:
        call: Any
        if route.kind is CallKind.SERVER_STREAM:
            call = self._channel.unary_stream(
                route.grpc_method,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )(messages[0], metadata=metadata)
        else:
            call = self._channel.stream_stream(
                route.grpc_method,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )(request_iterator=None, metadata=metadata)
        try:
            async with _canceled_if_peer_closes(connection, call):
                if route.kind is CallKind.BIDI_STREAM:
                    await _send_requests(call, messages, route.half_close)
                return await _relay_stream(connection, request, call)
        except asyncio.CancelledError:
            if connection.peer_closed and call.cancelled():
                return False
            raise
        finally:
            call.cancel()  # no-op once finished; ends a watch the client left

    # --- Local endpoints ---------------------------------------------------------------

    async def _version(self, connection: Connection, request: Request) -> None:
        body = gateway_json.encode(
            {"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION}
        )
        await connection.write_response(HTTPStatus.OK, _JSON, body, request.keep_alive)

    async def _health(self, connection: Connection, request: Request) -> None:
        query = parse_qs(request.query)
        excluded = {alarm for alarm in query.get("exclude", []) if alarm}
        serializable = query.get("serializable", [""])[-1] == "true"
        reason = await self._health_problem(excluded, serializable)
        healthy = reason is None
        body = gateway_json.encode({"health": str(healthy).lower(), "reason": reason or ""})
        if healthy:
            await connection.write_response(HTTPStatus.OK, _JSON, body, request.keep_alive)
        else:  # etcd answers with http.Error: plain text, a newline after the JSON
            await connection.write_response(
                HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, body + b"\n", request.keep_alive
            )

    async def _metrics(self, connection: Connection, request: Request) -> None:
        headers = [("Content-Type", metrics.CONTENT_TYPE)]
        body = metrics.REGISTRY.render()  # this process's member (raftkv.server.metrics)
        await connection.write_response(HTTPStatus.OK, headers, body, request.keep_alive)

    async def _livez(self, connection: Connection, request: Request) -> None:
        # Alive: the member answers a local (serializable) read.
        reason = await self._read_problem(serializable=True)
        await _probe_answer(connection, request, "serializable_read", reason)

    async def _readyz(self, connection: Connection, request: Request) -> None:
        # Ready: the member can serve linearizable requests (the /health checks).
        reason = await self._health_problem(set(), serializable=False)
        await _probe_answer(connection, request, "linearizable_read", reason)

    async def _health_problem(self, excluded_alarms: set[str], serializable: bool) -> str | None:
        """etcd 3.5's checkV3Health: the reason the member is unhealthy, or None."""
        timeout = limits.GATEWAY_HEALTH_TIMEOUT_SECONDS
        try:
            alarms = await self._unary["/v3/maintenance/alarm"](
                rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=timeout
            )
            assert isinstance(alarms, rpc_pb2.AlarmResponse)
            for member in alarms.alarms:
                name = rpc_pb2.AlarmType.Name(member.alarm)
                if name not in excluded_alarms:
                    return f"ALARM {name if name in ('NOSPACE', 'CORRUPT') else 'UNKNOWN'}"
            if not serializable:
                status = await self._unary["/v3/maintenance/status"](
                    rpc_pb2.StatusRequest(), timeout=timeout
                )
                assert isinstance(status, rpc_pb2.StatusResponse)
                if status.leader == 0:
                    return "RAFT NO LEADER"
        except grpc.aio.AioRpcError as error:
            return f"{_reason_text(error)}"
        return await self._read_problem(serializable)

    async def _read_problem(self, serializable: bool) -> str | None:
        read = rpc_pb2.RangeRequest(
            key=b"health", keys_only=True, limit=1, serializable=serializable
        )
        try:
            await self._unary["/v3/kv/range"](read, timeout=limits.GATEWAY_HEALTH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            # Like etcd, a read refused by auth still shows that the member works.
            refused = error.code() is grpc.StatusCode.PERMISSION_DENIED
            if refused or "user name is empty" in (error.details() or ""):
                return None
            return f"RANGE ERROR:{_reason_text(error)}"
        return None


def gateway_channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """The loopback channel's TLS to the member's own gRPC port (see the module doc)."""
    trusted = read_pem(files.trusted_ca_file) if files.trusted_ca_file else None
    if not files.verifies_clients:
        return grpc.ssl_channel_credentials(root_certificates=trusted)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted,
        private_key=read_pem(files.key_file),
        certificate_chain=read_pem(files.cert_file),
    )


async def start_gateway(
    listen_addresses: list[str],
    grpc_target: str,
    max_request_bytes: int,
    *,
    tls: Mapping[str, ssl.SSLContext] | None = None,
    grpc_credentials: grpc.ChannelCredentials | None = None,
    grpc_target_name: str | None = None,
) -> Gateway:
    """Serve the gateway on each ``host:port`` (port 0: any free port; see
    ``Gateway.ports``), forwarding to the member's gRPC server at ``grpc_target``.

    The addresses in ``tls`` serve HTTPS with their context. With ``grpc_credentials``
    the channel to ``grpc_target`` is TLS, checking the name ``grpc_target_name`` (when
    set) in the member's certificate instead of the target's host."""
    assert listen_addresses, "nothing to listen on"
    tls = tls or {}
    assert set(tls) <= set(listen_addresses), "TLS for an address not listened on"
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", limits.GATEWAY_MAX_RESPONSE_BYTES),
        ("grpc.max_send_message_length", body_limit_bytes(max_request_bytes)),
    ]
    if grpc_credentials is None:
        channel = grpc.aio.insecure_channel(grpc_target, options=options)
    else:
        if grpc_target_name is not None:
            options.append(("grpc.ssl_target_name_override", grpc_target_name))
        channel = grpc.aio.secure_channel(grpc_target, grpc_credentials, options=options)
    gateway = Gateway(channel, body_limit_bytes(max_request_bytes))
    try:
        for address in listen_addresses:
            host, port = _split_host_port(address)
            await gateway.listen(host, port, tls.get(address))
    except BaseException:
        await gateway.close()
        raise
    return gateway


def _split_host_port(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"listen address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    return host, number


_LocalHandler = Any
_LOCAL_HANDLERS: dict[str, _LocalHandler] = {
    "/version": Gateway._version,
    "/health": Gateway._health,
    "/livez": Gateway._livez,
    "/readyz": Gateway._readyz,
    "/metrics": Gateway._metrics,
}


# --- Helpers ---------------------------------------------------------------------------


def _metadata(request: Request) -> _Metadata:
    """The token, if any, and the gateway's mark: the member's certificate on this
    loopback channel must not stand for the HTTP client (``authz``)."""
    mark = (authz.GATEWAY_METADATA_KEY, "application/json")
    token = request.header("authorization")
    if token is None:
        return (mark,)
    if not token.isascii() or not token.isprintable():
        raise gateway_json.BodyError("the Authorization header is not printable ASCII")
    return (mark, ("token", token))


def _reason_text(error: grpc.aio.AioRpcError) -> str:
    if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "context deadline exceeded"  # Go's wording, which etcd reports
    return error.details() or error.code().name


async def _write_error(
    connection: Connection, code: grpc.StatusCode, message: str, request: Request
) -> None:
    body = gateway_json.error_body(code, message)
    await connection.write_response(gateway_json.http_status(code), _JSON, body, request.keep_alive)


async def _method_not_allowed(connection: Connection, request: Request, allowed: str) -> bool:
    headers = [*_TEXT, ("Allow", allowed)]
    await connection.write_response(
        HTTPStatus.METHOD_NOT_ALLOWED, headers, b"Method Not Allowed\n", request.keep_alive
    )
    return request.keep_alive


async def _probe_answer(
    connection: Connection, request: Request, check: str, reason: str | None
) -> None:
    if reason is None:
        await connection.write_response(HTTPStatus.OK, _TEXT, b"ok", request.keep_alive)
        return
    body = f"[-]{check} failed: {reason}\n".encode()
    await connection.write_response(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, body, request.keep_alive)


@contextlib.asynccontextmanager
async def _canceled_if_peer_closes(connection: Connection, call: Any) -> Any:
    """Cancel ``call`` if the HTTP client disconnects while the block runs (as
    grpc-gateway cancels the call's context)."""

    async def watch_peer() -> None:
        await connection.wait_peer_closed()
        call.cancel()

    monitor = asyncio.get_running_loop().create_task(watch_peer())
    try:
        yield
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor


async def _send_requests(call: Any, messages: list[Message], half_close: bool) -> None:
    """Write a bidi call's request messages; a call that already ended shows its
    status on the first read instead."""
    try:
        for message in messages:
            await call.write(message)
        if half_close:
            await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        pass


async def _relay_stream(connection: Connection, request: Request, call: Any) -> bool:
    """Relay a response stream as chunked JSON lines. Fails like a unary call if it
    fails before its first message, else ends with a stream error chunk."""
    try:
        message = await call.read()
    except grpc.aio.AioRpcError as error:
        await _write_error(connection, error.code(), error.details() or "", request)
        return request.keep_alive
    await connection.start_chunked(HTTPStatus.OK, _JSON, request.keep_alive)
    while message is not _EOF:
        await connection.write_chunk(gateway_json.result_chunk(message))
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as error:
            chunk = gateway_json.stream_error_chunk(error.code(), error.details() or "")
            await connection.write_chunk(chunk)
            break
    await connection.end_chunked()
    return request.keep_alive and not connection.peer_closed
