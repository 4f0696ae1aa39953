"""The replicated auth store: users, roles, their permissions, and whether auth is on.

It lives in the backend, in etcd's three tables (``DB_AUTH``: the enabled flag and the
auth revision; ``DB_AUTH_USERS`` and ``DB_AUTH_ROLES``: ``authpb.User`` and
``authpb.Role`` by name), so it is written in the same batch as the consistent index and
travels in snapshots. Memory holds a copy for the per-request checks; a batch that
aborts reloads it.

Every change bumps the auth revision (etcd's commitRevision), except enabling auth and
changes that change nothing (granting a role the user has). A write carries the revision
at which its credentials were checked, and ``check_*`` refuse it with
``AuthOldRevisionError`` once the store has moved past it.

The checks follow etcd's authStore: with auth disabled everything is permitted; a
request without credentials is refused with ``UserEmptyError``; a user holding the root
role may do anything; other users need permissions covering the keys (``permissions``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import bcrypt

from raftkv import limits
from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.server.auth import errors
from raftkv.server.auth.context import AuthInfo
from raftkv.server.auth.permissions import Permission, PermissionType, RangePermissions
from raftkv.server.auth.tokens import SimpleTokens
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
from raftkv.storage.backend import DB_AUTH, DB_AUTH_ROLES, DB_AUTH_USERS, Backend, WriteBatch

ROOT_USER = "root"
ROOT_ROLE = "root"
# etcd's keys in its "auth" bucket.
META_ENABLED = b"authEnabled"
META_REVISION = b"authRevision"
_REVISION = struct.Struct(">Q")
# A store that never changed is at revision 1, as etcd's.
INITIAL_REVISION = 1


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    password_hash: bytes
    roles: tuple[str, ...] = ()  # sorted
    no_password: bool = False

    def encode(self) -> bytes:
        return auth_pb2.User(
            name=self.name.encode(),
            password=self.password_hash,
            roles=list(self.roles),
            options=auth_pb2.UserAddOptions(no_password=self.no_password),
        ).SerializeToString()

    @staticmethod
    def decode(data: bytes) -> UserRecord:
        user = auth_pb2.User.FromString(data)
        return UserRecord(
            user.name.decode(), user.password, tuple(user.roles), user.options.no_password
        )


@dataclass(frozen=True, slots=True)
class RoleRecord:
    name: str
    permissions: tuple[Permission, ...] = ()  # sorted by key

    def encode(self) -> bytes:
        return auth_pb2.Role(
            name=self.name.encode(),
            keyPermission=[
                auth_pb2.Permission(
                    permType=p.perm_type.name,
                    key=p.key,
                    range_end=p.range_end,
                )
                for p in self.permissions
            ],
        ).SerializeToString()

    @staticmethod
    def decode(data: bytes) -> RoleRecord:
        role = auth_pb2.Role.FromString(data)
        permissions = tuple(
            Permission(PermissionType(p.permType), p.key, p.range_end) for p in role.keyPermission
        )
        return RoleRecord(role.name.decode(), permissions)


@dataclass(frozen=True, slots=True)
class AuthChangeResponse:
    auth_revision: int  # the store's revision after the change


@dataclass(frozen=True, slots=True)
class AuthenticateResponse:
    username: str
    index: int  # the Authenticate entry's index: the token's suffix


AuthResponse = AuthChangeResponse | AuthenticateResponse


def hash_password(password: str, cost: int) -> bytes:
    """bcrypt at ``cost`` (slow on purpose: run it off the event loop)."""
    raw = password.encode()
    if len(raw) > limits.AUTH_MAX_PASSWORD_BYTES:
        raise errors.PasswordTooLongError()
    return bytes(bcrypt.hashpw(raw, bcrypt.gensalt(cost)))


def password_matches(password: str, password_hash: bytes) -> bool:
    """Whether ``password`` is the one hashed (slow on purpose: off the event loop)."""
    raw = password.encode()
    if len(raw) > limits.AUTH_MAX_PASSWORD_BYTES or not password_hash:
        return False
    try:
        return bool(bcrypt.checkpw(raw, password_hash))
    except ValueError:  # not a bcrypt hash: it matches nothing
        return False


class AuthStore:
    """The auth tables of one backend, cached in memory, and this member's tokens."""

    def __init__(
        self,
        backend: Backend,
        tokens: SimpleTokens,
        bcrypt_cost: int = limits.AUTH_BCRYPT_COST_DEFAULT,
    ) -> None:
        assert limits.AUTH_BCRYPT_COST_MIN <= bcrypt_cost <= limits.AUTH_BCRYPT_COST_MAX
        self.backend = backend
        self.tokens = tokens
        self.bcrypt_cost = bcrypt_cost
        self.enabled = False
        self.revision = INITIAL_REVISION
        self._users: dict[str, UserRecord] = {}
        self._roles: dict[str, RoleRecord] = {}
        self._permissions: dict[str, RangePermissions] = {}
        self.load()

    def load(self) -> None:
        """(Re)read the tables: at startup, after a snapshot, after an aborted batch."""
        with self.backend.read() as txn:
            enabled = txn.get(META_ENABLED, db=self.backend.db(DB_AUTH))
            revision = txn.get(META_REVISION, db=self.backend.db(DB_AUTH))
            with txn.cursor(db=self.backend.db(DB_AUTH_USERS)) as cursor:
                users = [UserRecord.decode(bytes(value)) for _, value in cursor]
            with txn.cursor(db=self.backend.db(DB_AUTH_ROLES)) as cursor:
                roles = [RoleRecord.decode(bytes(value)) for _, value in cursor]
        self.enabled = enabled == b"\x01"
        self.revision = _REVISION.unpack(revision)[0] if revision else INITIAL_REVISION
        self._users = {user.name: user for user in users}
        self._roles = {role.name: role for role in roles}
        self._permissions.clear()
        if not self.enabled:
            self.tokens.clear()

    # -- Reading ------------------------------------------------------------------------

    def user(self, name: str) -> UserRecord | None:
        return self._users.get(name)

    def role(self, name: str) -> RoleRecord | None:
        return self._roles.get(name)

    def user_names(self) -> list[str]:
        return sorted(self._users, key=str.encode)

    def role_names(self) -> list[str]:
        return sorted(self._roles, key=str.encode)

    def has_role(self, username: str, role: str) -> bool:
        user = self._users.get(username)
        return user is not None and role in user.roles

    def password_hash_of(self, name: str) -> tuple[bytes, int]:
        """The hash to check a password against and the revision it is read at (etcd's
        CheckPassword, without the slow compare)."""
        if not self.enabled:
            raise errors.AuthNotEnabledError()
        user = self._users.get(name)
        if user is None or user.no_password:
            raise errors.AuthFailedError()
        return user.password_hash, self.revision

    # -- Permission checks (etcd's isOpPermitted and IsAdminPermitted) -----------------

    def check_admin(self, info: AuthInfo) -> None:
        if not self.enabled:
            return
        if not info.username:
            raise errors.UserEmptyError()
        user = self._users.get(info.username)
        if user is None:
            raise errors.UserNotFoundError()
        if ROOT_ROLE not in user.roles:
            raise errors.PermissionDeniedError()

    def is_admin(self, info: AuthInfo) -> bool:
        user = self._users.get(info.username)
        return user is not None and ROOT_ROLE in user.roles

    def check_user(self, info: AuthInfo) -> None:
        """Only that the request has credentials (etcd's requireAuthInfo)."""
        if self.enabled and info.revision == 0:
            raise errors.UserEmptyError()

    def check_range(self, info: AuthInfo, key: bytes, range_end: bytes = b"") -> None:
        self._check(info, key, range_end, write=False)

    def check_put(self, info: AuthInfo, key: bytes) -> None:
        self._check(info, key, b"", write=True)

    def check_delete(self, info: AuthInfo, key: bytes, range_end: bytes) -> None:
        self._check(info, key, range_end, write=True)

    def _check(self, info: AuthInfo, key: bytes, range_end: bytes, write: bool) -> None:
        if not self.enabled:
            return
        if info.revision == 0:
            raise errors.UserEmptyError()
        if info.revision < self.revision:
            raise errors.AuthOldRevisionError()
        user = self._users.get(info.username)
        if user is None:
            raise errors.PermissionDeniedError()
        if ROOT_ROLE in user.roles:
            return
        permissions = self._range_permissions(user)
        allowed = (
            permissions.can_write(key, range_end) if write else permissions.can_read(key, range_end)
        )
        if not allowed:
            raise errors.PermissionDeniedError()

    def _range_permissions(self, user: UserRecord) -> RangePermissions:
        cached = self._permissions.get(user.name)
        if cached is None:
            granted = [
                permission
                for role_name in user.roles
                if (role := self._roles.get(role_name)) is not None
                for permission in role.permissions
            ]
            cached = self._permissions[user.name] = RangePermissions(granted)
        return cached

    # -- Applying -----------------------------------------------------------------------

    def apply(self, batch: WriteBatch, request: AuthManagementRequest) -> AuthChangeResponse:
        """Apply a management request; its refusal (a ``RequestError``) writes nothing."""
        match request:
            case AuthEnableRequest():
                self._enable(batch)
            case AuthDisableRequest():
                self._disable(batch)
            case UserAddRequest():
                self._user_add(batch, request)
            case UserDeleteRequest():
                self._user_delete(batch, request)
            case UserChangePasswordRequest():
                self._user_change_password(batch, request)
            case UserGrantRoleRequest():
                self._user_grant_role(batch, request)
            case UserRevokeRoleRequest():
                self._user_revoke_role(batch, request)
            case RoleAddRequest():
                self._role_add(batch, request)
            case RoleDeleteRequest():
                self._role_delete(batch, request)
            case RoleGrantPermissionRequest():
                self._role_grant_permission(batch, request)
            case RoleRevokePermissionRequest():
                self._role_revoke_permission(batch, request)
        return AuthChangeResponse(self.revision)

    def apply_authenticate(
        self, batch: WriteBatch, request: AuthenticateRequest, index: int
    ) -> AuthenticateResponse:
        """Register the token on this member (the password was checked before)."""
        if not self.enabled:
            raise errors.AuthNotEnabledError()
        user = self._users.get(request.name)
        if user is None or user.no_password:
            raise errors.AuthFailedError()
        batch.on_commit(lambda: self.tokens.register(request.token_digest, request.name, index))
        return AuthenticateResponse(request.name, index)

    def _enable(self, batch: WriteBatch) -> None:
        if self.enabled:
            return
        root = self._users.get(ROOT_USER)
        if root is None:
            raise errors.RootUserNotExistError()
        if ROOT_ROLE not in root.roles:
            raise errors.RootRoleNotExistError()
        self._will_write(batch)
        batch.put(DB_AUTH, META_ENABLED, b"\x01")
        self.enabled = True

    def _disable(self, batch: WriteBatch) -> None:
        if not self.enabled:
            return
        self._will_write(batch)
        batch.put(DB_AUTH, META_ENABLED, b"\x00")
        self.enabled = False
        self._commit_revision(batch)
        batch.on_commit(self.tokens.clear)

    def _user_add(self, batch: WriteBatch, request: UserAddRequest) -> None:
        if not request.name:
            raise errors.UserEmptyError()
        if request.name in self._users:
            raise errors.UserAlreadyExistError()
        hashed = b"" if request.no_password else request.password_hash
        self._put_user(batch, UserRecord(request.name, hashed, (), request.no_password))
        self._commit_revision(batch)

    def _user_delete(self, batch: WriteBatch, request: UserDeleteRequest) -> None:
        if self.enabled and request.name == ROOT_USER:
            raise errors.InvalidAuthMgmtError()
        if request.name not in self._users:
            raise errors.UserNotFoundError()
        self._will_write(batch)
        batch.delete(DB_AUTH_USERS, request.name.encode())
        del self._users[request.name]
        self._permissions.pop(request.name, None)
        self._commit_revision(batch)
        batch.on_commit(lambda: self.tokens.invalidate_user(request.name))

    def _user_change_password(self, batch: WriteBatch, request: UserChangePasswordRequest) -> None:
        user = self._users.get(request.name)
        if user is None:
            raise errors.UserNotFoundError()
        hashed = b"" if user.no_password else request.password_hash
        self._put_user(batch, replace(user, password_hash=hashed))
        self._commit_revision(batch)
        batch.on_commit(lambda: self.tokens.invalidate_user(request.name))

    def _user_grant_role(self, batch: WriteBatch, request: UserGrantRoleRequest) -> None:
        user = self._users.get(request.user)
        if user is None:
            raise errors.UserNotFoundError()
        if request.role != ROOT_ROLE and request.role not in self._roles:
            raise errors.RoleNotFoundError()
        if request.role in user.roles:
            return  # etcd ignores a repeated grant (and keeps the revision)
        roles = tuple(sorted((*user.roles, request.role), key=str.encode))
        self._put_user(batch, replace(user, roles=roles))
        self._commit_revision(batch)

    def _user_revoke_role(self, batch: WriteBatch, request: UserRevokeRoleRequest) -> None:
        if self.enabled and request.name == ROOT_USER and request.role == ROOT_ROLE:
            raise errors.InvalidAuthMgmtError()
        user = self._users.get(request.name)
        if user is None:
            raise errors.UserNotFoundError()
        if request.role not in user.roles:
            raise errors.RoleNotGrantedError()
        roles = tuple(role for role in user.roles if role != request.role)
        self._put_user(batch, replace(user, roles=roles))
        self._commit_revision(batch)

    def _role_add(self, batch: WriteBatch, request: RoleAddRequest) -> None:
        if not request.name:
            raise errors.RoleEmptyError()
        if request.name in self._roles:
            raise errors.RoleAlreadyExistError()
        self._put_role(batch, RoleRecord(request.name))
        self._commit_revision(batch)

    def _role_delete(self, batch: WriteBatch, request: RoleDeleteRequest) -> None:
        if self.enabled and request.role == ROOT_ROLE:
            raise errors.InvalidAuthMgmtError()
        if request.role not in self._roles:
            raise errors.RoleNotFoundError()
        self._will_write(batch)
        batch.delete(DB_AUTH_ROLES, request.role.encode())
        del self._roles[request.role]
        for user in list(self._users.values()):
            if request.role in user.roles:
                roles = tuple(role for role in user.roles if role != request.role)
                self._put_user(batch, replace(user, roles=roles))
        self._permissions.clear()
        self._commit_revision(batch)

    def _role_grant_permission(
        self, batch: WriteBatch, request: RoleGrantPermissionRequest
    ) -> None:
        role = self._roles.get(request.name)
        if role is None:
            raise errors.RoleNotFoundError()
        granted = Permission(request.perm_type, request.key, request.range_end)
        kept = [
            p for p in role.permissions if (p.key, p.range_end) != (request.key, request.range_end)
        ]
        permissions = tuple(sorted((*kept, granted), key=lambda p: (p.key, p.range_end)))
        self._put_role(batch, replace(role, permissions=permissions))
        self._commit_revision(batch)

    def _role_revoke_permission(
        self, batch: WriteBatch, request: RoleRevokePermissionRequest
    ) -> None:
        role = self._roles.get(request.role)
        if role is None:
            raise errors.RoleNotFoundError()
        kept = tuple(
            p for p in role.permissions if (p.key, p.range_end) != (request.key, request.range_end)
        )
        if len(kept) == len(role.permissions):
            raise errors.PermissionNotGrantedError()
        self._put_role(batch, replace(role, permissions=kept))
        self._commit_revision(batch)

    # -- Writing helpers ----------------------------------------------------------------

    def _will_write(self, batch: WriteBatch) -> None:
        # Memory changes with the batch; if the batch aborts, memory must follow the
        # backend back (the callback runs after the abort, so load() reads the old state).
        batch.on_abort(self.load)

    def _put_user(self, batch: WriteBatch, user: UserRecord) -> None:
        self._will_write(batch)
        batch.put(DB_AUTH_USERS, user.name.encode(), user.encode())
        self._users[user.name] = user
        self._permissions.pop(user.name, None)

    def _put_role(self, batch: WriteBatch, role: RoleRecord) -> None:
        self._will_write(batch)
        batch.put(DB_AUTH_ROLES, role.name.encode(), role.encode())
        self._roles[role.name] = role
        self._permissions.clear()

    def _commit_revision(self, batch: WriteBatch) -> None:
        self._will_write(batch)
        self.revision += 1
        batch.put(DB_AUTH, META_REVISION, _REVISION.pack(self.revision))
