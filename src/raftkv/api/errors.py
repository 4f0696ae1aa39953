"""Where refusals become gRPC statuses: the one error path of every RPC.

Every servicer method is wrapped by ``unary`` or ``stream``. They

* refuse every call but Status and a serializable Range on a learner, with etcd's
  ``"etcdserver: rpc not supported for learner"`` (etcd's ``isRPCSupportedForLearner``);
* refuse the call with etcd's ``UNAVAILABLE "etcdserver: no leader"`` when the client
  sent the metadata ``hasleader=true`` and this member knows no leader (etcd's
  interceptor, ``server/etcdserver/api/v3rpc/interceptor.go``);
* check the caller's credentials against the method's auth policy
  (``raftkv.api.authz``), and after a read that the auth store did not change meanwhile;
* turn a ``RequestError`` (``raftkv.storage.errors``, ``raftkv.server.errors``) into
  ``context.abort(grpc.StatusCode[error.grpc_code], str(error))``, i.e. etcd's code and
  message;
* log anything else with its traceback and answer ``UNKNOWN`` with the exception's
  message only, never its traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import grpc.aio

from raftkv.api import authz
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.server.errors import LearnerNotSupportedError, NoLeaderError
from raftkv.server.interface import NodeAPI
from raftkv.storage.errors import RequestError

_log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

# etcd's rpctypes.MetadataRequireLeaderKey / MetadataHasLeader.
METADATA_REQUIRE_LEADER_KEY = "hasleader"
METADATA_HAS_LEADER = "true"


class UnknownEnumValueError(RequestError):
    """A request carries an enum value the schema does not define. etcd 3.5 accepts
    some of these silently (a compare result of 9 is "true"); raftkv refuses them."""

    grpc_code = "INVALID_ARGUMENT"
    message = "raftkv: unknown enum value"

    def __init__(self, field: str, value: int) -> None:
        super().__init__(f"raftkv: unknown {field} value {value}")


class NotSupportedError(RequestError):
    """An RPC raftkv does not implement (yet); see docs/compatibility.md."""

    grpc_code = "UNIMPLEMENTED"
    message = "raftkv: not supported"


class ServesNode(Protocol):
    """A servicer: it serves one member."""

    @property
    def node(self) -> NodeAPI: ...


def requires_leader(context: Context) -> bool:
    """Whether the client asked to be refused while the cluster has no leader."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_REQUIRE_LEADER_KEY and value == METADATA_HAS_LEADER:
            return True
    return False


def check_leader(node: NodeAPI, context: Context) -> None:
    """NoLeaderError if the client sent ``hasleader=true`` and there is no leader."""
    if requires_leader(context) and node.leader_id == 0:
        raise NoLeaderError()


def check_learner(node: NodeAPI, request: object) -> None:
    """A learner serves only Status and serializable Ranges (etcd 3.5)."""
    if not node.is_learner:
        return
    if isinstance(request, rpc_pb2.StatusRequest):
        return
    if isinstance(request, rpc_pb2.RangeRequest) and request.serializable:
        return
    raise LearnerNotSupportedError()


async def abort_for(context: Context, error: Exception) -> NoReturn:
    """End the call with the status ``error`` maps to."""
    if isinstance(error, RequestError):
        await context.abort(grpc.StatusCode[error.grpc_code], str(error))
    _log.error("unexpected error in an RPC handler", exc_info=error)
    await context.abort(grpc.StatusCode.UNKNOWN, str(error) or type(error).__name__)


_S = TypeVar("_S", bound=ServesNode)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def unary(
    method: Callable[[_S, _Req, Context], Awaitable[_Resp]],
) -> Callable[[_S, _Req, Context], Awaitable[_Resp]]:
    """Wrap a unary (or client-streaming) handler in the common error path."""
    policy = authz.policy_of(method.__name__)

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: Context) -> _Resp:
        try:
            check_learner(self.node, request)
            check_leader(self.node, context)
            call = await authz.begin(self.node, context, policy, request)
            response = await method(self, request, context)
            authz.finish(self.node, call, context, policy, request)
            return response
        except grpc.aio.AbortError:
            raise  # context.abort already set the status
        except Exception as error:
            await abort_for(context, error)

    return handler


def stream(
    method: Callable[[_S, _Req, Context], AsyncIterator[_Resp]],
) -> Callable[[_S, _Req, Context], AsyncIterator[_Resp]]:
    """Wrap a server- or bidi-streaming handler (an async generator)."""
    policy = authz.policy_of(method.__name__)

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: Context) -> AsyncIterator[_Resp]:
        try:
            check_learner(self.node, request)
            check_leader(self.node, context)
            await authz.begin(self.node, context, policy, request)
            async for response in method(self, request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_for(context, error)

    return handler
