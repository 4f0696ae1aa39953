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
from raftkv.api.gateway_http import (
    TEXT_HEADERS,
    Connection,
    HttpListeners,
    ListenerBounds,
    Request,
)
from raftkv.server import metrics
from raftkv.server.interface import NodeAPI
from raftkv.storage.alarm import AlarmType
from raftkv.storage.errors import RequestError

_TEXT = TEXT_HEADERS
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


def _bounds() -> ListenerBounds:
    return ListenerBounds(
        what="metrics listener",
        max_connections=limits.METRICS_HTTP_MAX_CONNECTIONS,
        max_header_bytes=limits.METRICS_HTTP_MAX_HEADER_BYTES,
        max_body_bytes=0,
        read_timeout_seconds=limits.METRICS_HTTP_READ_TIMEOUT_S,
        idle_timeout_seconds=limits.METRICS_HTTP_IDLE_TIMEOUT_S,
    )


class MonitoringServer:
    """The running listeners; ``ports`` and ``close``."""

    def __init__(self, node: NodeAPI) -> None:
        self._node = node
        self._listeners = HttpListeners(self._handle, _bounds)
        self._routes: dict[str, Callable[[Connection, Request], Awaitable[None]]] = {
            "/metrics": self._metrics,
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/health": self._health,
        }

    @property
    def ports(self) -> list[int]:
        return self._listeners.ports

    async def listen(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        await self._listeners.listen(host, port, context)

    async def close(self) -> None:
        await self._listeners.close()

    async def _handle(self, connection: Connection, request: Request) -> bool:
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
        return request.keep_alive

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
