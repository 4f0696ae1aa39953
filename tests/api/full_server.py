"""A LocalNode behind the real gRPC server with the Lock and Election services, and the
JSON gateway in front of that, all on one background event loop (see conftest.ApiServer).

Tests drive it as clients would: blocking gRPC stubs, plain HTTP, etcdctl, etcd3gw.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.api.election import add_election_and_lock
from raftkv.api.etcdpb.v3electionpb import v3election_pb2_grpc
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2_grpc
from raftkv.api.gateway import Gateway, start_gateway
from raftkv.api.options import ApiOptions
from raftkv.api.server import start_grpc_server_bound
from tests.api.conftest import ApiServer
from tests.api.local_node import LocalNode

POLL_INTERVAL_S = 0.02
WAIT_TIMEOUT_S = 10.0


class FullServer(ApiServer):
    gateway: Gateway
    gateway_url: str
    gateway_port: int

    async def _start(self) -> None:
        self.node = LocalNode(self.directory)
        await self.node.start()
        bound = await start_grpc_server_bound(
            self.node,
            ["127.0.0.1:0"],
            self.options,
            extra_servicers=functools.partial(add_election_and_lock, node=self.node),
        )
        self.server = bound.server
        self.endpoint = f"127.0.0.1:{bound.ports[0]}"
        self.node.client_urls = (f"http://{self.endpoint}",)
        self.gateway = await start_gateway(
            ["127.0.0.1:0"], self.endpoint, self.options.max_request_bytes
        )
        self.gateway_port = self.gateway.ports[0]
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"

    def stop(self) -> None:
        if hasattr(self, "gateway"):
            self.call(self.gateway.close())
        super().stop()

    @property
    def lock(self) -> v3lock_pb2_grpc.LockStub:
        return v3lock_pb2_grpc.LockStub(self._channel)

    @property
    def election(self) -> v3election_pb2_grpc.ElectionStub:
        return v3election_pb2_grpc.ElectionStub(self._channel)

    def watcher_count(self) -> int:
        return self.run(lambda: self.node.watch_hub.watcher_count)


def start_full(tmp_path: Path, options: ApiOptions | None = None) -> FullServer:
    server = FullServer(tmp_path / "node", options or ApiOptions())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def full(tmp_path: Path) -> Iterator[FullServer]:
    server = start_full(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(POLL_INTERVAL_S)
