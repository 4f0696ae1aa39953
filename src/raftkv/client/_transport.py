"""Channels and stubs for one endpoint, and the small rules shared by calls and watches."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2_grpc
from raftkv.api.etcdpb.v3electionpb import v3election_pb2_grpc
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2_grpc
from raftkv.limits import (
    CLIENT_BACKOFF_INITIAL_S,
    CLIENT_BACKOFF_MAX_S,
    CLIENT_KEEPALIVE_INTERVAL_MS,
    CLIENT_KEEPALIVE_TIMEOUT_MS,
    CLIENT_MAX_RECEIVE_MESSAGE_BYTES,
    CLIENT_MAX_SEND_MESSAGE_BYTES,
    TLS_PEM_FILE_MAX_BYTES,
)

# Asks the member to refuse at once when it has no leader (etcd's WithRequireLeader).
REQUIRE_LEADER_METADATA = (("hasleader", "true"),)

_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", CLIENT_MAX_SEND_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_INTERVAL_MS),
    ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
)


def backoff_s(attempt: int) -> float:
    """Pause before retry number `attempt` (1-based)."""
    assert attempt >= 1
    return float(min(CLIENT_BACKOFF_MAX_S, CLIENT_BACKOFF_INITIAL_S * 2 ** (attempt - 1)))


def task_is_cancelling() -> bool:
    """True if the running task itself is being cancelled. gRPC also raises CancelledError
    into a call whose channel was closed; that one is a failure of the call, not of the
    caller."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(frozen=True)
class ClientTLS:
    """TLS for a client's channels (etcdctl's --cacert, --cert and --key).

    The members' certificates are checked against `ca_file` (the system's CAs when it is
    None) and the endpoint's host; `cert_file` and `key_file`, given together, are the
    client certificate for members that require one (--client-cert-auth)."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The credentials of a secure channel; ValueError naming a file it cannot read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca_file),
            private_key=_read_pem(self.key_file),
            certificate_chain=_read_pem(self.cert_file),
        )


def _read_pem(path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            data = file.read(TLS_PEM_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read it: {error.strerror}") from None
    if len(data) > TLS_PEM_FILE_MAX_BYTES:
        raise ValueError(f"{path}: larger than {TLS_PEM_FILE_MAX_BYTES} bytes")
    return data


def uses_tls(endpoint: str) -> bool:
    return endpoint.startswith("https://")


def normalize_endpoint(endpoint: str) -> str:
    """ "http://127.0.0.1:2379" or "127.0.0.1:2379" -> "127.0.0.1:2379"."""
    for scheme in ("http://", "https://"):
        endpoint = endpoint.removeprefix(scheme)
    return endpoint.rstrip("/")


@dataclass(frozen=True, eq=False)
class Connection:
    """One channel to one endpoint, with a stub per service."""

    index: int  # position of the endpoint in the client's list
    endpoint: str
    channel: grpc.aio.Channel
    kv: rpc_pb2_grpc.KVAsyncStub
    watch: rpc_pb2_grpc.WatchAsyncStub
    lease: rpc_pb2_grpc.LeaseAsyncStub
    cluster: rpc_pb2_grpc.ClusterAsyncStub
    maintenance: rpc_pb2_grpc.MaintenanceAsyncStub
    lock: v3lock_pb2_grpc.LockAsyncStub
    election: v3election_pb2_grpc.ElectionAsyncStub


def open_connection(
    index: int, endpoint: str, credentials: grpc.ChannelCredentials | None = None
) -> Connection:
    """A channel to `endpoint`: TLS with `credentials`, else plaintext."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
    else:
        channel = grpc.aio.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
    return Connection(
        index=index,
        endpoint=endpoint,
        channel=channel,
        kv=rpc_pb2_grpc.KVStub(channel),
        watch=rpc_pb2_grpc.WatchStub(channel),
        lease=rpc_pb2_grpc.LeaseStub(channel),
        cluster=rpc_pb2_grpc.ClusterStub(channel),
        maintenance=rpc_pb2_grpc.MaintenanceStub(channel),
        lock=v3lock_pb2_grpc.LockStub(channel),
        election=v3election_pb2_grpc.ElectionStub(channel),
    )


async def wait_until_ready(channel: grpc.aio.Channel) -> bool:
    """True once the channel is connected; False as soon as a connect attempt fails."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN,
        ):
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True
