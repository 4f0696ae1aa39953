"""The RPC-by-RPC auth checks of ``test_api`` again, against a real 3-member cluster of
``raftkv serve`` processes, each check on a different member: every RPC family is
refused without a token and to a user lacking the permission, a txn with one forbidden
op is refused whole, and a watch on a forbidden range is canceled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.api.conftest import Stubs
from tests.auth import test_api
from tests.auth.test_api import Metadata
from tests.procs import RaftkvCluster

BCRYPT_COST = 4  # the fastest bcrypt allows


class ProcessApi(Stubs):
    """The etcd v3 stubs over a channel to one member of a process cluster."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)

    @property
    def _channel(self) -> grpc.Channel:
        return self.channel


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ProcessApi]]:
    root: Path = tmp_path_factory.mktemp("auth-rpcs")
    with RaftkvCluster.start(root, size=3, bcrypt_cost=BCRYPT_COST) as cluster:
        cluster.wait_for_leader()
        apis = [ProcessApi(endpoint) for endpoint in cluster.endpoints()]
        try:
            yield apis
        finally:
            for api in apis:
                api.channel.close()


@pytest.fixture(scope="module")
def secured(members: list[ProcessApi]) -> tuple[Metadata, Metadata]:
    return test_api.secure(members[0])


def test_every_rpc_is_refused_without_a_token(
    members: list[ProcessApi], secured: tuple[Metadata, Metadata]
) -> None:
    test_api.check_refused_without_a_token(members[1], secured)


def test_every_rpc_is_refused_to_a_user_lacking_the_permission(
    members: list[ProcessApi], secured: tuple[Metadata, Metadata]
) -> None:
    test_api.check_refused_to_a_user_lacking_the_permission(members[2], secured)


def test_a_txn_with_one_forbidden_op_is_refused_whole(
    members: list[ProcessApi], secured: tuple[Metadata, Metadata]
) -> None:
    test_api.check_what_a_role_grants(members[0], secured)


def test_a_watch_on_a_forbidden_range_is_canceled(
    members: list[ProcessApi], secured: tuple[Metadata, Metadata]
) -> None:
    test_api.check_watch_on_a_forbidden_range(members[1], secured)
