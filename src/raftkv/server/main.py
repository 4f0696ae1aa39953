"""`raftkv serve`: run one member until SIGTERM/SIGINT, then shut down cleanly.

Startup order: the member (storage, Raft, peer transport), then the gRPC services on
the client URLs, then the JSON gateway on --listen-client-http-urls. Shutdown runs in
reverse, so no client request reaches a stopped member.

TLS: the client URLs that use https serve TLS with --cert-file/--key-file (the gRPC
port and the JSON gateway alike); the peer transport takes --peer-cert-file & co.
(``raftkv.server.node``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from typing import TYPE_CHECKING, Protocol

from raftkv import limits
from raftkv.server import metrics, tls
from raftkv.server.config import ServerConfig, is_tls_url, url_address
from raftkv.server.logs import configure_logging
from raftkv.server.node import Node
from raftkv.server.tls import TlsFiles

if TYPE_CHECKING:
    from raftkv.api.gateway import Gateway
    from raftkv.api.monitoring import MonitoringServer
    from raftkv.api.server import GrpcServer

log = logging.getLogger("raftkv.serve")

_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

EXIT_OK = 0
EXIT_FATAL = 1


def serve(config: ServerConfig) -> int:
    level = _LOG_LEVELS.get(config.log_level, logging.INFO)
    configure_logging(level, config.log_format, config.log_outputs)
    if config.metrics == "extensive":
        metrics.enable_grpc_handling_histogram()
    gc.set_threshold(*limits.SERVER_GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(config))
    return uvloop.run(_serve(config))


def _addresses(urls: tuple[str, ...] | list[str]) -> list[str]:
    return [url.split("://", 1)[-1].rstrip("/") for url in urls]


def _grpc_tls(config: ServerConfig) -> dict[str, TlsFiles]:
    files = config.client_tls
    tls_urls = [url for url in config.listen_client_urls if is_tls_url(url)]
    if files is None or not tls_urls:
        return {}
    return {url_address(url): files for url in tls_urls}


async def _start_gateway(config: ServerConfig) -> Gateway:
    """The JSON gateway on --listen-client-http-urls, forwarding to the first client URL."""
    from raftkv.api.gateway import gateway_channel_credentials, start_gateway

    files = config.client_tls
    contexts = {}
    if files is not None:
        context = tls.server_context(files)
        for url in config.listen_client_http_urls:
            if is_tls_url(url):
                contexts[url_address(url)] = context
    grpc_url = config.listen_client_urls[0]
    credentials = target_name = None
    if files is not None and is_tls_url(grpc_url):
        credentials = gateway_channel_credentials(files)
        host = url_address(grpc_url).rsplit(":", 1)[0]
        target_name = tls.name_for_self_dial(files.cert_file, host)
    return await start_gateway(
        _addresses(config.listen_client_http_urls),
        grpc_target=url_address(grpc_url),
        max_request_bytes=config.max_request_bytes,
        tls=contexts,
        grpc_credentials=credentials,
        grpc_target_name=target_name,
    )


async def _start_monitoring(config: ServerConfig, node: Node) -> MonitoringServer:
    """/metrics and the health endpoints on --listen-metrics-urls (https: the client TLS)."""
    from raftkv.api.monitoring import start_monitoring

    addresses: list[tuple[str, int]] = []
    contexts = {}
    for url in config.listen_metrics_urls:
        host, port = url_address(url).rsplit(":", 1)
        address = (host.strip("[]"), int(port))
        addresses.append(address)
        if is_tls_url(url):
            assert config.client_tls is not None, "config validation"
            contexts[address] = tls.server_context(config.client_tls)
    return await start_monitoring(node, addresses, contexts)


class _Listener(Protocol):
    async def close(self) -> None: ...


class _GrpcListener:
    def __init__(self, server: GrpcServer) -> None:
        self._server = server

    async def close(self) -> None:
        await self._server.stop(grace=1.0)


async def _start_listeners(config: ServerConfig, node: Node, listeners: list[_Listener]) -> None:
    """gRPC, then the JSON gateway and /metrics; each is added to ``listeners`` once up."""
    from raftkv.api.election import add_election_and_lock
    from raftkv.api.server import ApiOptions, start_grpc_server

    options = ApiOptions(
        max_request_bytes=config.max_request_bytes,
        max_txn_ops=config.max_txn_ops,
        grpc_frontend=config.grpc_frontend,
    )
    extra = functools.partial(add_election_and_lock, node=node)
    grpc_server = await start_grpc_server(
        node,
        _addresses(config.listen_client_urls),
        options,
        extra_servicers=extra,
        tls_files=_grpc_tls(config),
    )
    listeners.append(_GrpcListener(grpc_server))
    gateway = None
    if config.listen_client_http_urls and config.enable_grpc_gateway:
        gateway = await _start_gateway(config)
        listeners.append(gateway)
    if config.listen_metrics_urls:
        listeners.append(await _start_monitoring(config, node))
        log.info("serving /metrics on %s", ", ".join(config.listen_metrics_urls))
    log.info(
        "serving gRPC on %s%s",
        ", ".join(config.listen_client_urls),
        f", JSON gateway on {', '.join(config.listen_client_http_urls)}" if gateway else "",
    )


async def _stop_listeners(listeners: list[_Listener]) -> None:
    """In the reverse order of their start, so the gRPC server goes last."""
    for listener in reversed(listeners):
        await listener.close()


async def _serve(config: ServerConfig) -> int:
    node = Node(config)
    try:
        await node.start()
    except Exception as error:
        log.critical("cannot start: %s", error)
        return EXIT_FATAL
    listeners: list[_Listener] = []
    try:
        await _start_listeners(config, node, listeners)
    except Exception as error:  # a port in use, say: stop what started, then the node
        log.critical("cannot start: %s", error)
        await _stop_listeners(listeners)
        await node.stop()
        await node.wait_stopped()
        return EXIT_FATAL
    # What startup made (the modules, the key index of a restart) is mostly there for
    # good: the cycle collector need not walk it again. Whatever of it becomes garbage is
    # still freed by reference counting (the index holds no cycles).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.ensure_future(node.wait_stopped())
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    log.info("shutting down")
    await _stop_listeners(listeners)
    await node.stop()
    fatal = await node.wait_stopped()
    stopped.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopped
    return EXIT_FATAL if fatal is not None else EXIT_OK
