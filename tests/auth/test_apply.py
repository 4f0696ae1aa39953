"""Permissions at apply time (etcd's authApplierV3): writes carry their credentials and
are refused whole, before anything is written; stale credentials are refused; the
member's own requests are not checked. Also the codec of the auth requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.server.auth import errors
from raftkv.server.auth.permissions import PermissionType
from raftkv.server.auth.store import AuthChangeResponse, AuthenticateResponse
from raftkv.server.requests import (
    AuthDisableRequest,
    AuthEnableRequest,
    AuthenticateRequest,
    AuthorizedRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PlainRequest,
    Request,
    RequestDecodeError,
    RoleAddRequest,
    RoleDeleteRequest,
    RoleGrantPermissionRequest,
    RoleRevokePermissionRequest,
    UserAddRequest,
    UserChangePasswordRequest,
    UserDeleteRequest,
    UserGrantRoleRequest,
    UserRevokeRoleRequest,
    decode,
    encode,
)
from raftkv.storage.mvcc import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest
from raftkv.storage.mvcc.txn import Compare, CompareResult, CompareTarget
from tests.server.test_apply import Machine

HASH = b"$2b$04$hash"


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(tmp_path / "backend")
    yield m
    m.backend.close()


def as_user(machine: Machine, username: str, request: PlainRequest) -> AuthorizedRequest:
    return AuthorizedRequest(username, machine.applier.auth.revision, request)


def enable_with_alice(machine: Machine) -> None:
    """root, and alice with readwrite on [/p, /q) and read on /a; auth enabled."""
    results = machine.run(
        UserAddRequest("root", HASH),
        UserGrantRoleRequest("root", "root"),
        UserAddRequest("alice", HASH),
        RoleAddRequest("r1"),
        RoleGrantPermissionRequest("r1", PermissionType.READWRITE, b"/p", b"/q"),
        RoleGrantPermissionRequest("r1", PermissionType.READ, b"/a", b""),
        UserGrantRoleRequest("alice", "r1"),
        AuthEnableRequest(),
    )
    assert all(isinstance(result, AuthChangeResponse) for result in results), results


def test_a_txn_with_one_forbidden_op_is_refused_whole(machine: Machine) -> None:
    enable_with_alice(machine)
    txn = TxnRequest(
        compare=(),
        success=(PutRequest(b"/p/1", b"ok"), PutRequest(b"/secret", b"no")),
        failure=(),
    )
    (result,) = machine.run(as_user(machine, "alice", txn))
    assert isinstance(result, errors.PermissionDeniedError)
    assert machine.get(b"/p/1") is None and machine.get(b"/secret") is None
    allowed = TxnRequest(compare=(), success=(PutRequest(b"/p/1", b"ok"),), failure=())
    (result,) = machine.run(as_user(machine, "alice", allowed))
    assert not isinstance(result, Exception) and machine.get(b"/p/1") == b"ok"


ALICE_REFUSED: list[PlainRequest] = [
    PutRequest(b"/a", b"read-only key"),
    DeleteRangeRequest(b"/p", b"/z"),  # reaches past her range
    DeleteRangeRequest(b"/a"),
    PutRequest(b"/x", b"v"),
    TxnRequest(
        compare=(Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"/secret", value=b"x"),),
        success=(),
        failure=(PutRequest(b"/p/2", b"v"),),
    ),
    TxnRequest(compare=(), success=(), failure=(RangeRequest(b"/secret"),)),
    TxnRequest(
        compare=(),
        success=(TxnRequest(compare=(), success=(PutRequest(b"/x", b"v"),), failure=()),),
        failure=(),
    ),
]


@pytest.mark.parametrize("op", ALICE_REFUSED, ids=lambda op: type(op).__name__)
def test_writes_beyond_her_permissions_are_refused(machine: Machine, op: PlainRequest) -> None:
    enable_with_alice(machine)
    (result,) = machine.run(as_user(machine, "alice", op))
    assert isinstance(result, errors.PermissionDeniedError), result


def test_a_write_without_credentials_is_refused(machine: Machine) -> None:
    enable_with_alice(machine)
    (result,) = machine.run(AuthorizedRequest("", 0, PutRequest(b"/p/1", b"v")))
    assert isinstance(result, errors.UserEmptyError)
    assert machine.get(b"/p/1") is None


def test_credentials_checked_before_an_auth_change_are_stale(machine: Machine) -> None:
    enable_with_alice(machine)
    checked = as_user(machine, "alice", PutRequest(b"/p/1", b"v"))
    machine.run(as_user(machine, "root", RoleAddRequest("r2")))
    (result,) = machine.run(checked)
    assert isinstance(result, errors.AuthOldRevisionError)
    assert machine.get(b"/p/1") is None


def test_revoking_a_lease_needs_write_permission_on_its_keys(machine: Machine) -> None:
    enable_with_alice(machine)
    machine.run(
        as_user(machine, "root", LeaseGrantRequest(7, 60)),
        as_user(machine, "root", PutRequest(b"/a", b"held", lease=7)),
    )
    (refused,) = machine.run(as_user(machine, "alice", LeaseRevokeRequest(7)))
    assert isinstance(refused, errors.PermissionDeniedError)
    # Nor may she attach her own key to that lease (its revoker would delete /a too).
    (attach,) = machine.run(as_user(machine, "alice", PutRequest(b"/p/1", b"v", lease=7)))
    assert isinstance(attach, errors.PermissionDeniedError)
    (revoked,) = machine.run(as_user(machine, "root", LeaseRevokeRequest(7)))
    assert not isinstance(revoked, Exception) and machine.get(b"/a") is None


def test_only_root_manages_auth_and_the_members_own_requests_are_not_checked(
    machine: Machine,
) -> None:
    enable_with_alice(machine)
    (refused,) = machine.run(as_user(machine, "alice", UserAddRequest("mallory", HASH)))
    assert isinstance(refused, errors.PermissionDeniedError)
    (anonymous,) = machine.run(AuthorizedRequest("", 0, AuthDisableRequest()))
    assert isinstance(anonymous, errors.UserEmptyError)
    assert machine.applier.auth.enabled
    # A bare request is one the member made itself (lease expiry, checkpoints...).
    (internal,) = machine.run(LeaseRevokeRequest(12345))
    assert not isinstance(internal, errors.PermissionDeniedError)


def test_authenticate_answers_the_entry_index(machine: Machine) -> None:
    enable_with_alice(machine)
    index = machine.next_index
    (result,) = machine.run(AuthorizedRequest("", 0, AuthenticateRequest("alice", b"d" * 32)))
    assert result == AuthenticateResponse("alice", index)


ROUND_TRIP: list[Request] = [
    AuthEnableRequest(),
    AuthDisableRequest(),
    AuthenticateRequest("alice", b"\x01" * 32),
    UserAddRequest("ünïcode", HASH),
    UserAddRequest("nopw", b"", no_password=True),
    UserDeleteRequest("alice"),
    UserChangePasswordRequest("alice", HASH),
    UserGrantRoleRequest("alice", "r1"),
    UserRevokeRoleRequest("alice", "r1"),
    RoleAddRequest("r1"),
    RoleDeleteRequest("r1"),
    RoleGrantPermissionRequest("r1", PermissionType.READWRITE, b"\x00k", b"\x00"),
    RoleRevokePermissionRequest("r1", b"k", b""),
    AuthorizedRequest("alice", 42, PutRequest(b"k", b"v")),
    AuthorizedRequest("", 0, RoleAddRequest("r")),
]


@pytest.mark.parametrize("request_", ROUND_TRIP, ids=lambda r: type(r).__name__)
def test_auth_requests_round_trip(request_: Request) -> None:
    assert decode(encode(9, request_)) == (9, request_)


def test_nested_credentials_do_not_decode() -> None:
    inner = encode(1, AuthorizedRequest("a", 1, RoleAddRequest("r")))
    # Splice a second AUTHORIZED header in front of the inner one.
    outer = inner[:2] + bytes([12, 1]) + b"b" + bytes([1]) + inner[2:]
    with pytest.raises(RequestDecodeError):
        decode(outer)
