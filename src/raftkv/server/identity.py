"""Who this member is: its id, kept in its data directory, and how a joining member learns it.

A founding member (``--initial-cluster-state new``) derives its id from its peer URLs and the
cluster token (``members.member_id_for``), as every other founding member does for it, so all
of them compute the same member and cluster ids. A member added at runtime gets an id that
is unique per add (``members.added_member_id_for``, as etcd's MemberAdd), which it cannot
compute: started with ``--initial-cluster-state existing`` and no data, it asks the members
named in ``--initial-cluster`` for their member list (peer_rpc's ``member_list`` over
``transport.request_at``) and takes the member whose peer URLs are the ones it advertises,
as etcd does (GetClusterFromRemotePeers).

Either way the identity is written to ``member/identity.json`` (atomically) before the WAL
is created; a restart reads it from there and never asks the peers again. A data directory
written before identity files existed has none: its id is the derived one, which was then
the only kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raftkv import limits
from raftkv.server.peer_rpc import PeerCall, PeerCallError, PeerReply, decode_reply, encode_call
from raftkv.server.transport import (
    PeerRefusedError,
    PeerRequestFailedError,
    PeerUnavailableError,
    request_at,
)
from raftkv.storage.members import MemberRecord, cluster_id_for, member_id_for

log = logging.getLogger("raftkv.identity")

IDENTITY_FILE = "identity.json"


class IdentityError(RuntimeError):
    """This member cannot establish its id; it must not start."""


class NoPeerReachableError(IdentityError):
    """No member named in --initial-cluster answered with a member list."""


class NotAMemberError(IdentityError):
    """The cluster lists no member with this member's peer URLs (it was never added)."""


@dataclass(frozen=True, slots=True)
class MemberIdentity:
    member_id: int
    cluster_id: int
    # The other members as a joining member learned them (id, peer URLs): whom it talks to
    # until the leader's snapshot brings the member table, also after a restart.
    peers: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def encode(self) -> bytes:
        body = {
            "member_id": f"{self.member_id:x}",
            "cluster_id": f"{self.cluster_id:x}",
            "peers": [{"id": f"{peer:x}", "peer_urls": list(urls)} for peer, urls in self.peers],
        }
        return json.dumps(body, indent=1).encode() + b"\n"

    @staticmethod
    def decode(data: bytes) -> MemberIdentity:
        body = json.loads(data)
        peers = tuple(
            (int(peer["id"], 16), tuple(str(url) for url in peer["peer_urls"]))
            for peer in body["peers"]
        )
        return MemberIdentity(int(body["member_id"], 16), int(body["cluster_id"], 16), peers)


def founding_identity(
    peer_urls: Sequence[str], initial_cluster: Mapping[str, Sequence[str]], cluster_token: str
) -> MemberIdentity:
    """A founding member's identity: everything derived from --initial-cluster and the token."""
    member_ids = [member_id_for(tuple(urls), cluster_token) for urls in initial_cluster.values()]
    member_id = member_id_for(tuple(peer_urls), cluster_token)
    assert member_id in member_ids, "config validation: the member is in --initial-cluster"
    return MemberIdentity(member_id, cluster_id_for(member_ids, cluster_token))


# --- The identity file ------------------------------------------------------------------


def read_identity(member_dir: str) -> MemberIdentity | None:
    """The identity kept in ``member_dir``; None if it has none (an older data directory)."""
    path = os.path.join(member_dir, IDENTITY_FILE)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    try:
        identity = MemberIdentity.decode(data)
    except (ValueError, KeyError, TypeError) as error:
        raise IdentityError(f"{path} is damaged ({error!r}): this member's id is unknown") from None
    assert identity.member_id != 0, path
    return identity


def write_identity(member_dir: str, identity: MemberIdentity) -> None:
    """Keep ``identity`` in ``member_dir``, durably: whole or not at all after a crash."""
    assert identity.member_id != 0
    path = os.path.join(member_dir, IDENTITY_FILE)
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(identity.encode())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(member_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- Discovery --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NoList:
    """Why a member named in --initial-cluster gave no member list; ``final`` when asking
    again cannot help (it refused our TLS certificate, or it is no raftkv member)."""

    reason: str
    final: bool = False


async def discover_identity(
    name: str,
    peer_urls: Sequence[str],
    initial_cluster: Mapping[str, Sequence[str]],
    dial_tls: ssl.SSLContext | None,
) -> MemberIdentity:
    """The identity the cluster gave this member (``name`` advertising ``peer_urls``) when
    it was added, from the member list of a member named in ``initial_cluster``.

    Every round asks all of them at once; those that cannot be reached yet are asked again
    until MEMBER_DISCOVERY_TIMEOUT_S (NoPeerReachableError), unless every one refused us
    for good. A list without this member is final only after
    MEMBER_DISCOVERY_UNLISTED_GRACE_S (the member answering may not have applied the add
    yet): NotAMemberError."""
    own = frozenset(peer_urls)
    targets = sorted({url for urls in initial_cluster.values() for url in urls} - own)
    if not targets:
        raise NoPeerReachableError(
            f"--initial-cluster names no member but this one ({','.join(sorted(own))}): a "
            "member joining an existing cluster (--initial-cluster-state existing) learns its "
            "ID from the member list of the others"
        )
    started_s = time.monotonic()
    deadline_s = started_s + limits.MEMBER_DISCOVERY_TIMEOUT_S
    first_list_s: float | None = None
    logged: set[str] = set()
    while True:
        answers = await _ask_all(targets, dial_tls, deadline_s)
        lists = {url: reply for url, reply in answers.items() if isinstance(reply, PeerReply)}
        for url, reply in lists.items():
            found = _record_with_urls(reply.members, own)
            if found is not None:
                log.info(
                    "member %x of cluster %x: ID taken from the member list of %s",
                    found.id,
                    reply.cluster_id,
                    url,
                )
                return _identity_of(found, reply)
        _log_first_failures(answers, logged)
        now_s = time.monotonic()
        if lists and first_list_s is None:
            first_list_s = now_s
        unlisted = first_list_s is not None and (
            now_s - first_list_s >= limits.MEMBER_DISCOVERY_UNLISTED_GRACE_S
        )
        refused = all(isinstance(answer, _NoList) and answer.final for answer in answers.values())
        if unlisted or refused or now_s >= deadline_s:
            raise _failure(name, own, answers, now_s - started_s)
        await asyncio.sleep(limits.MEMBER_DISCOVERY_RETRY_INTERVAL_S)


async def _ask_all(
    targets: list[str], dial_tls: ssl.SSLContext | None, deadline_s: float
) -> dict[str, PeerReply | _NoList]:
    """Each target's member list, or why there is none."""
    timeout_s = max(
        0.1, min(limits.MEMBER_DISCOVERY_REQUEST_TIMEOUT_S, deadline_s - time.monotonic())
    )
    replies = await asyncio.gather(*(_ask(url, dial_tls, timeout_s) for url in targets))
    return dict(zip(targets, replies, strict=True))


async def _ask(url: str, dial_tls: ssl.SSLContext | None, timeout_s: float) -> PeerReply | _NoList:
    try:
        payload = await request_at(
            url, encode_call(PeerCall("member_list")), timeout_s=timeout_s, dial_tls=dial_tls
        )
        reply = decode_reply(payload)
    except (PeerRefusedError, PeerRequestFailedError) as error:
        return _NoList(str(error), final=True)  # e.g. a member too old to know member_list
    except PeerUnavailableError as error:
        return _NoList(str(error))
    except PeerCallError as error:
        return _NoList(f"{url}: {error}", final=True)
    if reply.error is not None:
        return _NoList(f"{url} refused: {reply.error}", final=True)
    if reply.cluster_id == 0 or not reply.members:
        return _NoList(f"{url} is joining the cluster itself and knows no member list yet")
    return reply


def _log_first_failures(answers: dict[str, PeerReply | _NoList], logged: set[str]) -> None:
    for url, answer in answers.items():
        if isinstance(answer, _NoList) and url not in logged:
            logged.add(url)
            log.warning("no member list: %s", answer.reason)


def _record_with_urls(members: Sequence[MemberRecord], own: frozenset[str]) -> MemberRecord | None:
    matches = [member for member in members if frozenset(member.peer_urls) == own]
    assert len(matches) <= 1, f"peer URLs are unique among members: {matches}"
    return matches[0] if matches else None


def _identity_of(found: MemberRecord, reply: PeerReply) -> MemberIdentity:
    peers = tuple((m.id, m.peer_urls) for m in reply.members if m.id != found.id)
    return MemberIdentity(found.id, reply.cluster_id, peers)


def _failure(
    name: str, own: frozenset[str], answers: dict[str, PeerReply | _NoList], waited_s: float
) -> IdentityError:
    urls = ",".join(sorted(own))
    lists = [(url, reply) for url, reply in answers.items() if isinstance(reply, PeerReply)]
    if not lists:
        reasons = "; ".join(a.reason for a in answers.values() if isinstance(a, _NoList))
        return NoPeerReachableError(
            f"no member named in --initial-cluster answered with its member list within "
            f"{waited_s:.1f} s ({reasons}); a member joining an existing cluster "
            f"(--initial-cluster-state existing) learns its ID from them"
        )
    url, reply = lists[0]
    listed = ", ".join(
        f"{m.id:x} {m.name or '(unstarted)'} {','.join(m.peer_urls)}" for m in reply.members
    )
    overlapping = [m for m in reply.members if own & set(m.peer_urls)]
    hint = (
        f"member {overlapping[0].id:x} has the peer URLs {','.join(overlapping[0].peer_urls)}, "
        f"which must equal --initial-advertise-peer-urls"
        if overlapping
        else f"add it first: etcdctl member add {name} --peer-urls={urls}"
    )
    return NotAMemberError(
        f"cluster {reply.cluster_id:x} has no member with the peer URLs {urls} (member list "
        f"of {url}: {listed}); {hint}"
    )
