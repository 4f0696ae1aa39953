"""etcd's Auth service: not implemented yet (docs/compatibility.md).

AuthStatus answers "disabled", which is the truth and what clients ask before deciding
to authenticate; every other Auth RPC, Authenticate included, is UNIMPLEMENTED.
"""

from __future__ import annotations

from raftkv.api import convert
from raftkv.api.errors import Context, NotSupportedError, unary
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.interface import NodeAPI

AUTH_NOT_SUPPORTED = "raftkv: auth is not supported yet"
# A fresh etcd store reports auth revision 1; raftkv's auth state never changes from it.
AUTH_REVISION = 1


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, node: NodeAPI) -> None:
        self._node = node

    @property
    def node(self) -> NodeAPI:
        return self._node

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: Context
    ) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(
            header=convert.header(self._node.header()), enabled=False, authRevision=AUTH_REVISION
        )

    @unary
    async def AuthEnable(
        self, request: rpc_pb2.AuthEnableRequest, context: Context
    ) -> rpc_pb2.AuthEnableResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def AuthDisable(
        self, request: rpc_pb2.AuthDisableRequest, context: Context
    ) -> rpc_pb2.AuthDisableResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: Context
    ) -> rpc_pb2.AuthenticateResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserAdd(
        self, request: rpc_pb2.AuthUserAddRequest, context: Context
    ) -> rpc_pb2.AuthUserAddResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserGet(
        self, request: rpc_pb2.AuthUserGetRequest, context: Context
    ) -> rpc_pb2.AuthUserGetResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserList(
        self, request: rpc_pb2.AuthUserListRequest, context: Context
    ) -> rpc_pb2.AuthUserListResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserDelete(
        self, request: rpc_pb2.AuthUserDeleteRequest, context: Context
    ) -> rpc_pb2.AuthUserDeleteResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: Context
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserGrantRole(
        self, request: rpc_pb2.AuthUserGrantRoleRequest, context: Context
    ) -> rpc_pb2.AuthUserGrantRoleResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: Context
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleAdd(
        self, request: rpc_pb2.AuthRoleAddRequest, context: Context
    ) -> rpc_pb2.AuthRoleAddResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleGet(
        self, request: rpc_pb2.AuthRoleGetRequest, context: Context
    ) -> rpc_pb2.AuthRoleGetResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleList(
        self, request: rpc_pb2.AuthRoleListRequest, context: Context
    ) -> rpc_pb2.AuthRoleListResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleDelete(
        self, request: rpc_pb2.AuthRoleDeleteRequest, context: Context
    ) -> rpc_pb2.AuthRoleDeleteResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: Context
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)

    @unary
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: Context
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        raise NotSupportedError(AUTH_NOT_SUPPORTED)
