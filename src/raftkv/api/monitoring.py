"""etcd's ``--listen-metrics-urls`` listener: ``/metrics`` and the health endpoints.

A small HTTP/1.1 server (``gateway_http``) apart from the JSON gateway, so Prometheus and
probes reach a member without the client API. All ``GET``:

* ``/metrics``: ``raftkv.server.metrics.REGISTRY`` in Prometheus' text format;
* ``/livez``: ``ok`` while the process serves (the event loop answers);
* ``/readyz``: ``ok`` when the member serves linearizable requests: it knows a leader, is
  not stopping, has no NOSPACE or CORRUPT alarm and a linearizable read (ReadIndex)
  finishes in time; else 503 ``[-]<check> failed: <reason>``;
* ``/health``: the same checks as ``/readyz`` in etcd's JSON (``{"health":"true",...}``).

The checks ask the member directly (``NodeAPI``), not through gRPC as the gateway's do.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from raftkv import limits
from raftkv.api.gateway_http import Connection, HttpError, Request
from raftkv.server import metrics, tls
from raftkv.server.interface import NodeAPI
from raftkv.storage.alarm import AlarmType
from raftkv.storage.errors import RequestError

_TEXT = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
_JSON = [("Content-Type", "application/json")]
_METRICS = [("Content-Type", metrics.CONTENT_TYPE)]
# Alarms that make a member unready (etcd's /health looks at these two).
_BLOCKING_ALARMS = (AlarmType.NOSPACE, AlarmType.CORRUPT)


async def readiness_problem(node: NodeAPI, timeout_s: float) -> tuple[str, str] | None:
    """(check, reason) of the first readiness check that fails, or None when ready."""
    for alarm in node.alarms.get():
        if alarm.alarm in _BLOCKING_ALARMS:
            return "alarms", f"ALARM {alarm.alarm.name}"
    if node.leader_id == 0:
        return "leader", "RAFT NO LEADER"
    try:
        await asyncio.wait_for(node.read_barrier(), timeout_s)
    except TimeoutError:
        return "linearizable_read", "context deadline exceeded"
    except RequestError as error:
        return "linearizable_read", str(error)
    return None


class MonitoringServer:
    """The running listeners; ``ports`` and ``close``."""

    def __init__(self, node: NodeAPI) -> None:
        self._node = node
        self._servers: list[asyncio.Server | tls.TlsServer] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self._routes: dict[str, Callable[[Connection, Request], Awaitable[None]]] = {
            "/metrics": self._metrics,
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/health": self._health,
        }

    @property
    def ports(self) -> list[int]:
        return [sock.getsockname()[1] for server in self._servers for sock in server.sockets]

    async def listen(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        server: asyncio.Server | tls.TlsServer
        if context is None:
            server = await asyncio.start_server(
                self._accept,
                host,
                port,
                limit=limits.METRICS_HTTP_MAX_HEADER_BYTES,
                reuse_address=True,
            )
        else:
            server = await tls.start_tls_server(
                self._accept,
                host,
                port,
                context,
                what="metrics listener",
                read_limit_bytes=limits.METRICS_HTTP_MAX_HEADER_BYTES,
            )
        self._servers.append(server)

    async def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._connections) >= limits.METRICS_HTTP_MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        connection = Connection(
            reader,
            writer,
            max_header_bytes=limits.METRICS_HTTP_MAX_HEADER_BYTES,
            max_body_bytes=0,
            read_timeout_seconds=limits.METRICS_HTTP_READ_TIMEOUT_S,
            idle_timeout_seconds=limits.METRICS_HTTP_IDLE_TIMEOUT_S,
        )
        try:
            await self._serve(connection)
        except asyncio.CancelledError:
            if not self._closing:  # only close() cancels; end quietly then
                raise
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            self._connections.discard(task)
            await connection.close()

    async def _serve(self, connection: Connection) -> None:
        while True:
            try:
                request = await connection.read_request()
            except HttpError as error:
                body = f"{error.status.phrase}: {error.detail}\n".encode()
                await connection.write_response(error.status, _TEXT, body, keep_alive=False)
                return
            if request is None:
                return
            handler = self._routes.get(request.path)
            if handler is None:
                await connection.write_response(
                    HTTPStatus.NOT_FOUND, _TEXT, b"404 page not found\n", request.keep_alive
                )
            elif request.method != "GET":
                headers = [*_TEXT, ("Allow", "GET")]
                await connection.write_response(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    headers,
                    b"Method Not Allowed\n",
                    request.keep_alive,
                )
            else:
                await handler(connection, request)
            if not request.keep_alive:
                return

    async def _metrics(self, connection: Connection, request: Request) -> None:
        body = metrics.REGISTRY.render()
        await connection.write_response(HTTPStatus.OK, _METRICS, body, request.keep_alive)

    async def _livez(self, connection: Connection, request: Request) -> None:
        await connection.write_response(HTTPStatus.OK, _TEXT, b"ok", request.keep_alive)

    async def _readyz(self, connection: Connection, request: Request) -> None:
        problem = await readiness_problem(self._node, limits.METRICS_HEALTH_TIMEOUT_S)
        if problem is None:
            await connection.write_response(HTTPStatus.OK, _TEXT, b"ok", request.keep_alive)
            return
        check, reason = problem
        body = f"[-]{check} failed: {reason}\n".encode()
        await connection.write_response(
            HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, body, request.keep_alive
        )

    async def _health(self, connection: Connection, request: Request) -> None:
        problem = await readiness_problem(self._node, limits.METRICS_HEALTH_TIMEOUT_S)
        reason = "" if problem is None else problem[1]
        document = {"health": str(problem is None).lower(), "reason": reason}
        body = json.dumps(document, separators=(",", ":")).encode()
        if problem is None:
            await connection.write_response(HTTPStatus.OK, _JSON, body, request.keep_alive)
        else:  # etcd answers with http.Error: plain text, a newline after the JSON
            await connection.write_response(
                HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, body + b"\n", request.keep_alive
            )


async def start_monitoring(
    node: NodeAPI,
    listen_addresses: list[tuple[str, int]],
    contexts: Mapping[tuple[str, int], ssl.SSLContext] | None = None,
) -> MonitoringServer:
    """Serve the monitoring endpoints on each (host, port); those in ``contexts`` serve
    HTTPS with their context."""
    assert listen_addresses, "nothing to listen on"
    server = MonitoringServer(node)
    try:
        for host, port in listen_addresses:
            await server.listen(host, port, (contexts or {}).get((host, port)))
    except BaseException:
        await server.close()
        raise
    return server


__all__ = ["MonitoringServer", "readiness_problem", "start_monitoring"]
