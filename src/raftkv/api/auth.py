"""etcd's Auth service (``v3rpc/auth.go`` over ``etcdserver/v3_server.go``).

Changes are proposed and applied by every member (``raftkv.server.auth.store``); who may
make them is checked by ``raftkv.api.authz`` (here, root once auth is on) and again when
applied. Passwords never leave this member: UserAdd and UserChangePassword propose the
bcrypt hash (computed here, in a thread: bcrypt is slow on purpose), Authenticate checks
the password here and proposes only a digest of the new token, which every member then
accepts (``raftkv.server.auth.tokens``). Reads (UserGet, RoleGet, the lists, AuthStatus)
are linearizable: the member catches up with the leader, then reads its copy.
"""

from __future__ import annotations

import asyncio
import logging

from raftkv import limits
from raftkv.api import convert
from raftkv.api.convert import enum_value
from raftkv.api.errors import Context, unary
from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.auth import errors
from raftkv.server.auth.permissions import PermissionType
from raftkv.server.auth.store import AuthenticateResponse, hash_password, password_matches
from raftkv.server.auth.tokens import make_token, new_secret, token_digest
from raftkv.server.interface import NodeAPI
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

log = logging.getLogger("raftkv.auth")


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, node: NodeAPI) -> None:
        self._node = node
        self._bcrypt_slots = asyncio.Semaphore(limits.AUTH_MAX_CONCURRENT_BCRYPT)

    @property
    def node(self) -> NodeAPI:
        return self._node

    # -- Enabling and authenticating ----------------------------------------------------

    @unary
    async def AuthEnable(
        self, request: rpc_pb2.AuthEnableRequest, context: Context
    ) -> rpc_pb2.AuthEnableResponse:
        await self._change(AuthEnableRequest())
        return rpc_pb2.AuthEnableResponse(header=self._header())

    @unary
    async def AuthDisable(
        self, request: rpc_pb2.AuthDisableRequest, context: Context
    ) -> rpc_pb2.AuthDisableResponse:
        await self._change(AuthDisableRequest())
        return rpc_pb2.AuthDisableResponse(header=self._header())

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: Context
    ) -> rpc_pb2.AuthStatusResponse:
        await self._node.read_barrier()
        store = self._node.auth
        return rpc_pb2.AuthStatusResponse(
            header=self._header(), enabled=store.enabled, authRevision=store.revision
        )

    @unary
    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: Context
    ) -> rpc_pb2.AuthenticateResponse:
        node = self._node
        await node.read_barrier()
        for _ in range(limits.AUTH_AUTHENTICATE_MAX_ATTEMPTS):
            password_hash, checked_revision = node.auth.password_hash_of(request.name)
            if not await self._matches(request.password, password_hash):
                log.warning("authentication failed for user %r", request.name)
                raise errors.AuthFailedError()
            secret = new_secret()
            response = await node.propose(AuthenticateRequest(request.name, token_digest(secret)))
            assert isinstance(response, AuthenticateResponse), f"authenticate gave {response!r}"
            # The password was checked against the store at checked_revision: if the user
            # changed meanwhile (a new password), the token must not stand (etcd retries).
            if node.auth.revision == checked_revision:
                token = make_token(secret, response.index)
                return rpc_pb2.AuthenticateResponse(header=self._header(), token=token)
        raise errors.AuthOldRevisionError()

    # -- Users --------------------------------------------------------------------------

    @unary
    async def UserAdd(
        self, request: rpc_pb2.AuthUserAddRequest, context: Context
    ) -> rpc_pb2.AuthUserAddResponse:
        if not request.name:
            raise errors.UserEmptyError()  # before spending a bcrypt hash on it
        no_password = request.options.no_password
        password_hash = b"" if no_password else await self._hash(request.password)
        await self._change(UserAddRequest(request.name, password_hash, no_password))
        return rpc_pb2.AuthUserAddResponse(header=self._header())

    @unary
    async def UserGet(
        self, request: rpc_pb2.AuthUserGetRequest, context: Context
    ) -> rpc_pb2.AuthUserGetResponse:
        await self._node.read_barrier()
        user = self._node.auth.user(request.name)
        if user is None:
            raise errors.UserNotFoundError()
        return rpc_pb2.AuthUserGetResponse(header=self._header(), roles=list(user.roles))

    @unary
    async def UserList(
        self, request: rpc_pb2.AuthUserListRequest, context: Context
    ) -> rpc_pb2.AuthUserListResponse:
        await self._node.read_barrier()
        users = self._node.auth.user_names()
        return rpc_pb2.AuthUserListResponse(header=self._header(), users=users)

    @unary
    async def UserDelete(
        self, request: rpc_pb2.AuthUserDeleteRequest, context: Context
    ) -> rpc_pb2.AuthUserDeleteResponse:
        await self._change(UserDeleteRequest(request.name))
        return rpc_pb2.AuthUserDeleteResponse(header=self._header())

    @unary
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: Context
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        if self._node.auth.user(request.name) is None:
            raise errors.UserNotFoundError()  # before spending a bcrypt hash on it
        password_hash = await self._hash(request.password)
        await self._change(UserChangePasswordRequest(request.name, password_hash))
        return rpc_pb2.AuthUserChangePasswordResponse(header=self._header())

    @unary
    async def UserGrantRole(
        self, request: rpc_pb2.AuthUserGrantRoleRequest, context: Context
    ) -> rpc_pb2.AuthUserGrantRoleResponse:
        await self._change(UserGrantRoleRequest(request.user, request.role))
        return rpc_pb2.AuthUserGrantRoleResponse(header=self._header())

    @unary
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: Context
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        await self._change(UserRevokeRoleRequest(request.name, request.role))
        return rpc_pb2.AuthUserRevokeRoleResponse(header=self._header())

    # -- Roles --------------------------------------------------------------------------

    @unary
    async def RoleAdd(
        self, request: rpc_pb2.AuthRoleAddRequest, context: Context
    ) -> rpc_pb2.AuthRoleAddResponse:
        await self._change(RoleAddRequest(request.name))
        return rpc_pb2.AuthRoleAddResponse(header=self._header())

    @unary
    async def RoleGet(
        self, request: rpc_pb2.AuthRoleGetRequest, context: Context
    ) -> rpc_pb2.AuthRoleGetResponse:
        await self._node.read_barrier()
        role = self._node.auth.role(request.role)
        if role is None:
            raise errors.RoleNotFoundError()
        permissions = [
            auth_pb2.Permission(permType=p.perm_type.name, key=p.key, range_end=p.range_end)
            for p in role.permissions
        ]
        return rpc_pb2.AuthRoleGetResponse(header=self._header(), perm=permissions)

    @unary
    async def RoleList(
        self, request: rpc_pb2.AuthRoleListRequest, context: Context
    ) -> rpc_pb2.AuthRoleListResponse:
        await self._node.read_barrier()
        roles = self._node.auth.role_names()
        return rpc_pb2.AuthRoleListResponse(header=self._header(), roles=roles)

    @unary
    async def RoleDelete(
        self, request: rpc_pb2.AuthRoleDeleteRequest, context: Context
    ) -> rpc_pb2.AuthRoleDeleteResponse:
        await self._change(RoleDeleteRequest(request.role))
        return rpc_pb2.AuthRoleDeleteResponse(header=self._header())

    @unary
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: Context
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        if not request.HasField("perm"):
            raise errors.PermissionNotGivenError()
        perm = request.perm
        perm_type = enum_value(PermissionType, perm.permType, "permission type")
        await self._change(
            RoleGrantPermissionRequest(request.name, perm_type, perm.key, perm.range_end)
        )
        return rpc_pb2.AuthRoleGrantPermissionResponse(header=self._header())

    @unary
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: Context
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        await self._change(
            RoleRevokePermissionRequest(request.role, request.key, request.range_end)
        )
        return rpc_pb2.AuthRoleRevokePermissionResponse(header=self._header())

    # -- Helpers ------------------------------------------------------------------------

    async def _change(self, request: AuthManagementRequest) -> None:
        await self._node.propose(request)

    async def _hash(self, password: str) -> bytes:
        async with self._bcrypt_slots:
            return await asyncio.to_thread(hash_password, password, self._node.auth.bcrypt_cost)

    async def _matches(self, password: str, password_hash: bytes) -> bool:
        async with self._bcrypt_slots:
            return await asyncio.to_thread(password_matches, password, password_hash)

    def _header(self) -> rpc_pb2.ResponseHeader:
        return convert.header(self._node.header())
