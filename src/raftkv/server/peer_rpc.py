"""Calls a member makes to the leader over the peer transport (etcd's leasehttp).

Lease keepalives and TimeToLive are answered by the leader only (it alone tracks expiry),
so a follower forwards them; so are membership changes, which only a leader may propose
(it checks them against its configuration and the learner's progress). One call is answered
by any member, from its own member table: ``member_list``, which a member joining an existing
cluster makes before it knows its own id (etcd's GET /members on the peer port). The payloads
are small JSON documents; a refusal travels as the error's class name and message and is
raised again on the caller's side.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from raftkv.server import errors as server_errors
from raftkv.storage import errors as storage_errors
from raftkv.storage.errors import RequestError
from raftkv.storage.lease.lessor import LeaseExpiredError, NotPrimaryError
from raftkv.storage.members import MemberRecord

_KINDS = ("keepalive", "ttl", "member_add", "member_remove", "member_promote", "member_list")
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
    lease_id: int = 0
    keys: bool = False
    member_id: int = 0
    peer_urls: tuple[str, ...] = ()
    is_learner: bool = False


@dataclass(frozen=True, slots=True)
class PeerReply:
    ttl_seconds: int = 0
    granted_ttl_seconds: int = 0
    keys: tuple[bytes, ...] = ()
    error: RequestError | None = None
    member_id: int = 0
    cluster_id: int = 0  # member_list: the answering member's cluster (0: it does not know)
    members: tuple[MemberRecord, ...] = ()  # member_list: its member table

    def encode(self) -> bytes:
        body: dict[str, object] = {
            "member": self.member_id,
            "ttl": self.ttl_seconds,
            "granted": self.granted_ttl_seconds,
            "keys": [base64.b64encode(key).decode() for key in self.keys],
            "cluster": self.cluster_id,
            "members": [_member_body(member) for member in self.members],
        }
        if self.error is not None:
            body["error"] = [type(self.error).__name__, str(self.error)]
        return json.dumps(body).encode()


def encode_call(call: PeerCall) -> bytes:
    assert call.kind in _KINDS, call.kind
    body = {
        "kind": call.kind,
        "lease": call.lease_id,
        "keys": call.keys,
        "member": call.member_id,
        "peer_urls": list(call.peer_urls),
        "learner": call.is_learner,
    }
    return json.dumps(body).encode()


def decode_call(payload: bytes) -> PeerCall:
    try:
        body = json.loads(payload)
        kind, lease_id, keys = body["kind"], body["lease"], body["keys"]
        member_id, peer_urls, is_learner = body["member"], body["peer_urls"], body["learner"]
    except (ValueError, KeyError, TypeError) as error:
        raise PeerCallError(f"malformed peer call: {error}") from error
    well_formed = (
        kind in _KINDS
        and isinstance(lease_id, int)
        and isinstance(keys, bool)
        and isinstance(member_id, int)
        and isinstance(is_learner, bool)
        and isinstance(peer_urls, list)
        and all(isinstance(url, str) for url in peer_urls)
    )
    if not well_formed:
        raise PeerCallError(f"malformed peer call: {body!r}")
    return PeerCall(kind, lease_id, keys, member_id, tuple(peer_urls), is_learner)


def _member_body(member: MemberRecord) -> dict[str, object]:
    return {
        "id": member.id,
        "name": member.name,
        "peer_urls": list(member.peer_urls),
        "client_urls": list(member.client_urls),
        "learner": member.is_learner,
    }


def _member_of(body: dict[str, object]) -> MemberRecord:
    peer_urls, client_urls = body["peer_urls"], body["client_urls"]
    if not isinstance(peer_urls, list) or not isinstance(client_urls, list):
        raise TypeError(f"member URLs must be lists: {body!r}")
    return MemberRecord(
        id=int(str(body["id"])),
        name=str(body["name"]),
        peer_urls=tuple(str(url) for url in peer_urls),
        client_urls=tuple(str(url) for url in client_urls),
        is_learner=bool(body["learner"]),
    )


def decode_reply(payload: bytes) -> PeerReply:
    try:
        body = json.loads(payload)
        keys = tuple(base64.b64decode(key) for key in body["keys"])
        reply = PeerReply(
            int(body["ttl"]),
            int(body["granted"]),
            keys,
            member_id=int(body["member"]),
            # Absent from the replies of members that predate member_list.
            cluster_id=int(body.get("cluster", 0)),
            members=tuple(_member_of(member) for member in body.get("members", ())),
        )
        if "error" in body:
            name, message = body["error"]
            error_class = _ERRORS.get(str(name), RequestError)
            return PeerReply(error=error_class(str(message)))
    except (ValueError, KeyError, TypeError) as error:
        raise PeerCallError(f"malformed peer reply: {error}") from error
    return reply
