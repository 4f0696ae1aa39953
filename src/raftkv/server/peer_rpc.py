"""Calls a member makes to the leader over the peer transport (etcd's leasehttp).

Lease keepalives and TimeToLive are answered by the leader only (it alone tracks expiry),
so a follower forwards them. The payloads are small JSON documents; a refusal travels as
the error's class name and message and is raised again on the caller's side.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from raftkv.server import errors as server_errors
from raftkv.storage import errors as storage_errors
from raftkv.storage.errors import RequestError
from raftkv.storage.lease.lessor import LeaseExpiredError, NotPrimaryError

_KINDS = ("keepalive", "ttl")
_ERRORS: dict[str, type[RequestError]] = {
    cls.__name__: cls
    for module in (server_errors, storage_errors)
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, RequestError)
}
_ERRORS[LeaseExpiredError.__name__] = LeaseExpiredError
_ERRORS[NotPrimaryError.__name__] = NotPrimaryError


class PeerCallError(ValueError):
    """A malformed call or reply."""


@dataclass(frozen=True, slots=True)
class PeerCall:
    kind: str
    lease_id: int
    keys: bool = False


@dataclass(frozen=True, slots=True)
class PeerReply:
    ttl_seconds: int = 0
    granted_ttl_seconds: int = 0
    keys: tuple[bytes, ...] = ()
    error: RequestError | None = None

    def encode(self) -> bytes:
        body: dict[str, object] = {
            "ttl": self.ttl_seconds,
            "granted": self.granted_ttl_seconds,
            "keys": [base64.b64encode(key).decode() for key in self.keys],
        }
        if self.error is not None:
            body["error"] = [type(self.error).__name__, str(self.error)]
        return json.dumps(body).encode()


def encode_call(call: PeerCall) -> bytes:
    assert call.kind in _KINDS, call.kind
    return json.dumps({"kind": call.kind, "lease": call.lease_id, "keys": call.keys}).encode()


def decode_call(payload: bytes) -> PeerCall:
    try:
        body = json.loads(payload)
        kind, lease_id, keys = body["kind"], body["lease"], body["keys"]
    except (ValueError, KeyError, TypeError) as error:
        raise PeerCallError(f"malformed peer call: {error}") from error
    if kind not in _KINDS or not isinstance(lease_id, int) or not isinstance(keys, bool):
        raise PeerCallError(f"malformed peer call: {body!r}")
    return PeerCall(kind, lease_id, keys)


def decode_reply(payload: bytes) -> PeerReply:
    try:
        body = json.loads(payload)
        keys = tuple(base64.b64decode(key) for key in body["keys"])
        reply = PeerReply(int(body["ttl"]), int(body["granted"]), keys)
        if "error" in body:
            name, message = body["error"]
            error_class = _ERRORS.get(str(name), RequestError)
            return PeerReply(error=error_class(str(message)))
    except (ValueError, KeyError, TypeError) as error:
        raise PeerCallError(f"malformed peer reply: {error}") from error
    return reply
