"""The replicated auth store: users, roles, permissions, root rules, the auth revision,
persistence in the backend, and the permission checks (etcd's authStore)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.server.auth import errors
from raftkv.server.auth.context import NO_CREDENTIALS, AuthInfo
from raftkv.server.auth.permissions import OPEN_END, PermissionType
from raftkv.server.auth.store import (
    AuthStore,
    hash_password,
    password_matches,
)
from raftkv.server.auth.tokens import SimpleTokens, make_token, new_secret, token_digest
from raftkv.server.requests import (
    AuthDisableRequest,
    AuthEnableRequest,
    AuthenticateRequest,
    AuthManagementRequest,
    RoleAddRequest,
    RoleDeleteRequest,
    RoleGrantPermissionRequest,
    RoleRevokePermissionRequest,
    UserAddRequest,
    UserChangePasswordRequest,
    UserDeleteRequest,
    UserGrantRoleRequest,
    UserRevokeRoleRequest,
)
from raftkv.storage.backend import Backend
from raftkv.storage.errors import RequestError

MAP_SIZE_BYTES = 64 * limits.MIB
READ, WRITE, READWRITE = PermissionType.READ, PermissionType.WRITE, PermissionType.READWRITE
HASH = b"$2b$04$not-checked-by-the-store"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(str(tmp_path / "db"), MAP_SIZE_BYTES, sync=False)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def store(backend: Backend) -> AuthStore:
    return AuthStore(backend, SimpleTokens(60), bcrypt_cost=limits.AUTH_BCRYPT_COST_MIN)


def apply(store: AuthStore, *requests: AuthManagementRequest) -> int:
    """Apply each request in its own batch, like entries; the revision after the last."""
    for request in requests:
        with store.backend.write() as batch:
            store.apply(batch, request)
    return store.revision


def refusal(store: AuthStore, request: AuthManagementRequest) -> RequestError:
    with pytest.raises(RequestError) as caught, store.backend.write() as batch:
        store.apply(batch, request)
    return caught.value


def setup_root_and_alice(store: AuthStore) -> None:
    apply(
        store,
        UserAddRequest("root", HASH),
        RoleAddRequest("root"),
        UserGrantRoleRequest("root", "root"),
        UserAddRequest("alice", HASH),
        RoleAddRequest("r1"),
        RoleGrantPermissionRequest("r1", READ, b"/a", b""),
        RoleGrantPermissionRequest("r1", READWRITE, b"/p", b"/q"),
        RoleGrantPermissionRequest("r1", WRITE, b"/w", b"/z"),
        UserGrantRoleRequest("alice", "r1"),
    )


def test_a_new_store_is_disabled_at_revision_1(store: AuthStore) -> None:
    assert not store.enabled and store.revision == 1
    assert store.user_names() == [] and store.role_names() == []


def test_each_change_bumps_the_revision_as_etcd_does(store: AuthStore) -> None:
    setup_root_and_alice(store)
    assert store.revision == 10  # nine changes after revision 1
    assert apply(store, UserGrantRoleRequest("alice", "r1")) == 10  # a repeat changes nothing
    assert apply(store, AuthEnableRequest()) == 10  # enabling keeps the revision
    assert apply(store, AuthEnableRequest()) == 10
    assert apply(store, AuthDisableRequest()) == 11
    assert apply(store, AuthDisableRequest()) == 11


def test_enable_needs_root_with_the_root_role(store: AuthStore) -> None:
    assert isinstance(refusal(store, AuthEnableRequest()), errors.RootUserNotExistError)
    apply(store, UserAddRequest("root", HASH))
    assert isinstance(refusal(store, AuthEnableRequest()), errors.RootRoleNotExistError)
    # The root role need not exist as a role to be granted (etcd's rule).
    apply(store, UserGrantRoleRequest("root", "root"), AuthEnableRequest())
    assert store.enabled


def test_root_cannot_be_removed_while_auth_is_enabled(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, AuthEnableRequest())
    for request in (
        UserDeleteRequest("root"),
        RoleDeleteRequest("root"),
        UserRevokeRoleRequest("root", "root"),
    ):
        assert isinstance(refusal(store, request), errors.InvalidAuthMgmtError)
    apply(store, AuthDisableRequest(), UserRevokeRoleRequest("root", "root"))
    apply(store, UserDeleteRequest("root"))
    assert store.user("root") is None


def test_management_refusals(store: AuthStore) -> None:
    setup_root_and_alice(store)
    cases: list[tuple[AuthManagementRequest, type[RequestError]]] = [
        (UserAddRequest("", HASH), errors.UserEmptyError),
        (UserAddRequest("alice", HASH), errors.UserAlreadyExistError),
        (UserDeleteRequest("bob"), errors.UserNotFoundError),
        (UserChangePasswordRequest("bob", HASH), errors.UserNotFoundError),
        (UserGrantRoleRequest("bob", "r1"), errors.UserNotFoundError),
        (UserGrantRoleRequest("alice", "nosuch"), errors.RoleNotFoundError),
        (UserRevokeRoleRequest("alice", "nosuch"), errors.RoleNotGrantedError),
        (UserRevokeRoleRequest("bob", "r1"), errors.UserNotFoundError),
        (RoleAddRequest(""), errors.RoleEmptyError),
        (RoleAddRequest("r1"), errors.RoleAlreadyExistError),
        (RoleDeleteRequest("nosuch"), errors.RoleNotFoundError),
        (RoleGrantPermissionRequest("nosuch", READ, b"k", b""), errors.RoleNotFoundError),
        (RoleRevokePermissionRequest("nosuch", b"k", b""), errors.RoleNotFoundError),
        (RoleRevokePermissionRequest("r1", b"/nothing", b""), errors.PermissionNotGrantedError),
    ]
    revision = store.revision
    for request, expected in cases:
        assert type(refusal(store, request)) is expected, request
    assert store.revision == revision  # a refusal changes nothing


def test_permissions_are_kept_sorted_and_regranting_updates_the_type(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, RoleGrantPermissionRequest("r1", WRITE, b"/a", b""))
    role = store.role("r1")
    assert role is not None
    assert [(p.perm_type, p.key, p.range_end) for p in role.permissions] == [
        (WRITE, b"/a", b""),
        (READWRITE, b"/p", b"/q"),
        (WRITE, b"/w", b"/z"),
    ]
    apply(store, RoleRevokePermissionRequest("r1", b"/w", b"/z"))
    role = store.role("r1")
    assert role is not None and len(role.permissions) == 2


def test_deleting_a_role_takes_it_from_its_users(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, RoleDeleteRequest("r1"))
    alice = store.user("alice")
    assert alice is not None and alice.roles == ()
    assert store.role_names() == ["root"]


def test_the_store_survives_a_reload_from_the_backend(backend: Backend, store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, AuthEnableRequest(), UserAddRequest("nopw", b"", no_password=True))
    again = AuthStore(backend, SimpleTokens(60))
    assert again.enabled and again.revision == store.revision
    assert again.user_names() == ["alice", "nopw", "root"]
    assert again.user("alice") == store.user("alice")
    assert again.role("r1") == store.role("r1")
    nopw = again.user("nopw")
    assert nopw is not None and nopw.no_password and nopw.password_hash == b""


def test_an_aborted_batch_leaves_memory_as_the_backend(store: AuthStore) -> None:
    setup_root_and_alice(store)
    revision = store.revision
    with pytest.raises(RuntimeError), store.backend.write() as batch:
        store.apply(batch, UserAddRequest("bob", HASH))
        raise RuntimeError("the disk failed")
    assert store.user("bob") is None and store.revision == revision


def alice_at(store: AuthStore) -> AuthInfo:
    return AuthInfo("alice", store.revision)


def test_checks_follow_etcd_order(store: AuthStore) -> None:
    setup_root_and_alice(store)
    # Disabled: everything is permitted, even without credentials.
    store.check_put(NO_CREDENTIALS, b"/secret")
    store.check_admin(NO_CREDENTIALS)
    apply(store, AuthEnableRequest())
    with pytest.raises(errors.UserEmptyError):
        store.check_range(NO_CREDENTIALS, b"/a")
    with pytest.raises(errors.UserEmptyError):
        store.check_admin(NO_CREDENTIALS)
    with pytest.raises(errors.UserEmptyError):
        store.check_user(NO_CREDENTIALS)
    stale = alice_at(store)
    apply(store, RoleAddRequest("other"))
    with pytest.raises(errors.AuthOldRevisionError):
        store.check_range(stale, b"/a")
    with pytest.raises(errors.PermissionDeniedError):
        store.check_range(AuthInfo("ghost", store.revision), b"/a")
    with pytest.raises(errors.UserNotFoundError):
        store.check_admin(AuthInfo("ghost", store.revision))
    with pytest.raises(errors.PermissionDeniedError):
        store.check_admin(alice_at(store))
    store.check_admin(AuthInfo("root", store.revision))


def test_alice_may_do_what_her_role_grants(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, AuthEnableRequest())
    alice = alice_at(store)
    store.check_range(alice, b"/a")
    store.check_range(alice, b"/p/1", b"/p/9")
    store.check_put(alice, b"/p/1")
    store.check_delete(alice, b"/w", b"/y")
    checks: list[Callable[[], None]] = [
        lambda: store.check_put(alice, b"/a"),
        lambda: store.check_range(alice, b"/w"),
        lambda: store.check_range(alice, b"/p", OPEN_END),
        lambda: store.check_delete(alice, b"/a", b"/q"),
        lambda: store.check_range(alice, b"/secret"),
    ]
    for check in checks:
        with pytest.raises(errors.PermissionDeniedError):
            check()
    # Root may do anything, on any range.
    root = AuthInfo("root", store.revision)
    store.check_range(root, b"\x00", OPEN_END)
    store.check_delete(root, b"/secret", b"")


def test_revoking_a_role_or_a_permission_takes_effect_at_once(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, AuthEnableRequest())
    store.check_put(alice_at(store), b"/p/1")
    apply(store, RoleRevokePermissionRequest("r1", b"/p", b"/q"))
    with pytest.raises(errors.PermissionDeniedError):
        store.check_put(alice_at(store), b"/p/1")
    store.check_range(alice_at(store), b"/a")
    apply(store, UserRevokeRoleRequest("alice", "r1"))
    with pytest.raises(errors.PermissionDeniedError):
        store.check_range(alice_at(store), b"/a")


def test_authenticate_registers_the_token_on_commit_and_changes_drop_it(
    store: AuthStore,
) -> None:
    setup_root_and_alice(store)
    with store.backend.write() as batch, pytest.raises(errors.AuthNotEnabledError):
        store.apply_authenticate(batch, AuthenticateRequest("alice", b"x" * 32), 5)
    apply(store, AuthEnableRequest())
    secret = new_secret()
    with store.backend.write() as batch:
        store.apply_authenticate(batch, AuthenticateRequest("alice", token_digest(secret)), 5)
        assert store.tokens.user_of(make_token(secret, 5)) is None  # not before the commit
    assert store.tokens.user_of(make_token(secret, 5)) == "alice"
    with store.backend.write() as batch, pytest.raises(errors.AuthFailedError):
        store.apply_authenticate(batch, AuthenticateRequest("ghost", b"x" * 32), 6)
    apply(store, UserChangePasswordRequest("alice", HASH))
    assert store.tokens.user_of(make_token(secret, 5)) is None


def test_disabling_auth_drops_every_token(store: AuthStore) -> None:
    setup_root_and_alice(store)
    apply(store, AuthEnableRequest())
    secret = new_secret()
    with store.backend.write() as batch:
        store.apply_authenticate(batch, AuthenticateRequest("root", token_digest(secret)), 9)
    apply(store, AuthDisableRequest())
    assert store.tokens.user_of(make_token(secret, 9)) is None


def test_password_hashes_are_salted_bcrypt() -> None:
    first = hash_password("s3cret", limits.AUTH_BCRYPT_COST_MIN)
    second = hash_password("s3cret", limits.AUTH_BCRYPT_COST_MIN)
    assert first != second and first.startswith(b"$2")  # salted
    assert b"s3cret" not in first
    assert password_matches("s3cret", first) and not password_matches("other", first)
    assert not password_matches("s3cret", b"") and not password_matches("s3cret", b"junk")
    with pytest.raises(errors.PasswordTooLongError):
        hash_password("x" * (limits.AUTH_MAX_PASSWORD_BYTES + 1), limits.AUTH_BCRYPT_COST_MIN)
