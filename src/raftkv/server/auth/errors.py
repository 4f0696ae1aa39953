"""The auth store's refusals, with etcd's messages and gRPC codes (rpctypes/error.go).

Like every ``RequestError`` they reach the client as ``grpc_code`` and ``str(error)``.
"""

from __future__ import annotations

from raftkv.storage.errors import RequestError


class RootUserNotExistError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not exist"


class RootRoleNotExistError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not have root role"


class UserAlreadyExistError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: user name already exists"


class UserEmptyError(RequestError):
    """No user: the request carried no token while auth is enabled."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: user name is empty"


class UserNotFoundError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: user name not found"


class RoleAlreadyExistError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: role name already exists"


class RoleNotFoundError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: role name not found"


class RoleEmptyError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: role name is empty"


class AuthFailedError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: authentication failed, invalid user ID or password"


class PermissionDeniedError(RequestError):
    grpc_code = "PERMISSION_DENIED"
    message = "etcdserver: permission denied"


class RoleNotGrantedError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: role is not granted to the user"


class PermissionNotGrantedError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: permission is not granted to the role"


class PermissionNotGivenError(RequestError):
    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: permission not given"


class AuthNotEnabledError(RequestError):
    grpc_code = "FAILED_PRECONDITION"
    message = "etcdserver: authentication is not enabled"


class InvalidAuthTokenError(RequestError):
    """A token this member does not know: forged, expired, or of a deleted user."""

    grpc_code = "UNAUTHENTICATED"
    message = "etcdserver: invalid auth token"


class InvalidAuthMgmtError(RequestError):
    """Deleting root, its role, or revoking root's root role while auth is enabled."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid auth management"


class AuthOldRevisionError(RequestError):
    """The auth store changed after the request's permissions were checked."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: revision of auth store is old"


class PasswordTooLongError(RequestError):
    """bcrypt reads at most 72 bytes; raftkv refuses longer passwords rather than
    silently ignore their tail."""

    grpc_code = "INVALID_ARGUMENT"
    message = "etcdserver: password is longer than bcrypt's 72 bytes"


# The Go status text etcd puts in a refused watch's cancel_reason, by gRPC code.
GO_CODE_NAMES = {
    "INVALID_ARGUMENT": "InvalidArgument",
    "PERMISSION_DENIED": "PermissionDenied",
    "UNAUTHENTICATED": "Unauthenticated",
    "FAILED_PRECONDITION": "FailedPrecondition",
}


def go_status_text(error: RequestError) -> str:
    """``rpc error: code = PermissionDenied desc = etcdserver: permission denied``: how
    etcd words a refusal inside a message (a watch's cancel_reason)."""
    code = GO_CODE_NAMES.get(error.grpc_code, "Unknown")
    return f"rpc error: code = {code} desc = {error}"
