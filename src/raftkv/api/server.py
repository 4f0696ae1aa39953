"""The client-facing gRPC server: etcd's six v3 services over one ``NodeAPI``.

``start_grpc_server`` builds the front end ``ApiOptions.grpc_frontend`` names: raftkv's own
HTTP/2 server (``api.h2``, the default) or grpcio's asyncio server, both with etcd's
receive limit (--max-request-bytes + 512 KiB) and the same handler wrappers (metrics,
undecodable requests). It adds the KV, Watch, Lease, Cluster, Maintenance and Auth
services (plus whatever ``extra_servicers`` adds, e.g. Election and Lock), binds every
address and starts it. The caller stops it (``await server.stop(grace)``).

An address listed in ``tls_files`` serves TLS (etcd's ``--cert-file`` family, client
certificates required as etcd requires them); the others serve plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio

from raftkv import limits
from raftkv.api.auth import AuthService
from raftkv.api.cluster import ClusterService
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2_grpc
from raftkv.api.grpc_metrics import GrpcMetricsInterceptor, measure_handler
from raftkv.api.h2.server import GrpcH2Server
from raftkv.api.kv import KVService
from raftkv.api.lease import LeaseService
from raftkv.api.maintenance import MaintenanceService
from raftkv.api.options import ApiOptions
from raftkv.api.request_decoding import UndecodableRequestInterceptor, guard_handler
from raftkv.api.watch import WatchService
from raftkv.server import tls
from raftkv.server.interface import NodeAPI
from raftkv.server.tls import TlsFiles, read_pem

__all__ = [
    "ApiOptions",
    "BoundServer",
    "grpc_server_credentials",
    "start_grpc_server",
    "start_grpc_server_bound",
]

# etcd's server keepalive: ping an idle connection every 2 h, drop it if the ping is not
# answered within 20 s, and treat client pings more frequent than every 5 s as abuse.
KEEPALIVE_TIME_MS = 2 * 60 * 60 * 1000
KEEPALIVE_TIMEOUT_MS = 20 * 1000
KEEPALIVE_MIN_CLIENT_PING_INTERVAL_MS = 5 * 1000


@dataclass(frozen=True)
class BoundServer:
    server: GrpcServer
    ports: list[int]  # the port each listen address got (port 0 picks a free one)


def server_options(options: ApiOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", options.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.API_GRPC_MAX_SEND_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            KEEPALIVE_MIN_CLIENT_PING_INTERVAL_MS,
        ),
        # A busy port must fail the bind, not be shared with another process.
        ("grpc.so_reuseport", 0),
    ]


def grpc_server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """TLS with the member's certificate; a client certificate signed by the trusted CA is
    required when ``files.verifies_clients`` (etcd's --client-cert-auth or
    --trusted-ca-file), and refused at the handshake otherwise."""
    return grpc.ssl_server_credentials(
        [(read_pem(files.key_file), read_pem(files.cert_file))],
        root_certificates=read_pem(files.trusted_ca_file) if files.verifies_clients else None,
        require_client_auth=files.verifies_clients,
    )


def add_services(server: Any, node: NodeAPI, options: ApiOptions) -> None:
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(node, options), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchService(node, options), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(node), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(node), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(node), server)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(node), server)


class GrpcServer(Protocol):
    """What the callers need of either front end."""

    async def stop(self, grace: float | None) -> Any: ...


async def start_grpc_server_bound(
    node: NodeAPI,
    listen_addresses: list[str],
    options: ApiOptions,
    extra_servicers: Callable[[Any], None] | None = None,
    tls_files: Mapping[str, TlsFiles] | None = None,
) -> BoundServer:
    """Like ``start_grpc_server``, and says which port each address got."""
    assert listen_addresses, "the gRPC server needs at least one listen address"
    secure = tls_files or {}
    assert set(secure) <= set(listen_addresses), "TLS for an address not listened on"
    if options.grpc_frontend == "h2":
        return await _start_h2(node, listen_addresses, options, extra_servicers, secure)
    server = grpc.aio.server(
        options=server_options(options),
        maximum_concurrent_rpcs=limits.API_MAX_CONCURRENT_RPCS,
        # Undecodable requests get grpc-go's INTERNAL refusal, not grpcio's UNKNOWN.
        interceptors=[GrpcMetricsInterceptor(), UndecodableRequestInterceptor()],
    )
    add_services(server, node, options)
    if extra_servicers is not None:
        extra_servicers(server)
    ports = [
        server.add_secure_port(address, grpc_server_credentials(secure[address]))
        if address in secure
        else server.add_insecure_port(address)
        for address in listen_addresses
    ]
    await server.start()
    return BoundServer(server, ports)


async def _start_h2(
    node: NodeAPI,
    listen_addresses: list[str],
    options: ApiOptions,
    extra_servicers: Callable[[Any], None] | None,
    secure: Mapping[str, TlsFiles],
) -> BoundServer:
    server = GrpcH2Server(
        max_receive_message_bytes=options.max_receive_message_bytes,
        # The same wrappers, in the same order, as the grpcio server's interceptors.
        wrappers=[measure_handler, lambda _path, handler: guard_handler(handler)],
    )
    add_services(server, node, options)
    if extra_servicers is not None:
        extra_servicers(server)
    ports = []
    try:
        for address in listen_addresses:
            host, port = address.rsplit(":", 1)
            context = tls.server_context(secure[address]) if address in secure else None
            ports.append(await server.start(host, int(port), context))
    except BaseException:
        await server.stop(0)
        raise
    return BoundServer(server, ports)


async def start_grpc_server(
    node: NodeAPI,
    listen_addresses: list[str],
    options: ApiOptions,
    extra_servicers: Callable[[Any], None] | None = None,
    tls_files: Mapping[str, TlsFiles] | None = None,
) -> GrpcServer:
    """Serve etcd's v3 API for ``node`` on every "host:port" of ``listen_addresses``
    (TLS on those in ``tls_files``)."""
    bound = await start_grpc_server_bound(
        node, listen_addresses, options, extra_servicers, tls_files
    )
    return bound.server
