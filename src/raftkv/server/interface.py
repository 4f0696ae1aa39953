"""What the API layer may ask of a running member (``raftkv.server.node.Node``).

The API (``raftkv.api``) translates etcd's protobufs to these calls and back; it never
touches Raft, the WAL or the event loop directly. Writes go through ``propose`` and come
back when applied on this member; linearizable reads call ``read_barrier`` first and then
read the local store. Every refusal is a ``RequestError`` (``raftkv.storage.errors``,
``raftkv.server.errors``) whose ``grpc_code`` and message are etcd's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from raftkv.server.apply import Response
from raftkv.server.auth.store import AuthStore
from raftkv.server.requests import Request
from raftkv.storage.alarm import AlarmStore
from raftkv.storage.lease import Lessor
from raftkv.storage.lease.lessor import TimeToLive
from raftkv.storage.mvcc import KVStore
from raftkv.storage.mvcc.watchable import WatchHub

# The etcd API version a member reports (Status, the gateway's /version).
ETCD_API_VERSION = "3.5.0"


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str  # empty until the member has started and published it (etcd shows "")
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]  # empty until published
    is_learner: bool = False


@dataclass(frozen=True, slots=True)
class Header:
    cluster_id: int
    member_id: int
    revision: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    version: str  # the etcd API version we speak, e.g. "3.5.0"
    db_size_bytes: int
    db_size_in_use_bytes: int
    db_size_quota_bytes: int
    leader_id: int  # 0 if none known
    raft_index: int  # last log index
    raft_term: int
    raft_applied_index: int
    is_learner: bool
    errors: tuple[str, ...]  # e.g. ("memberID:... alarm:NOSPACE",)


class NodeAPI(Protocol):
    """A member as the API sees it. All ``async`` calls run on the member's event loop."""

    cluster_id: int
    member_id: int
    # Local state, read-only for the API. After ``read_barrier`` it is linearizable.
    kv: KVStore
    lessor: Lessor
    alarms: AlarmStore
    watch_hub: WatchHub
    # The replicated auth store and this member's tokens (``auth.tokens``); the API
    # checks permissions against it, ``propose`` carries the request's credentials
    # (``raftkv.server.auth.context``) to the apply step, which checks writes.
    auth: AuthStore
    # --client-cert-auth: a call without a token is the user its certificate's CN names.
    client_cert_auth: bool

    def header(self, revision: int | None = None) -> Header:
        """A response header; ``revision`` None means the store's current revision."""
        ...

    @property
    def raft_term(self) -> int: ...

    @property
    def leader_id(self) -> int:
        """The leader this member knows (0: none); cheap, for per-request checks."""
        ...

    @property
    def is_learner(self) -> bool:
        """Whether this member is a learner (it then serves only serializable reads and
        Status, as etcd's learners do)."""
        ...

    async def propose(self, request: Request) -> Response:
        """Replicate ``request`` and return its result once applied on this member.

        Raises the request's own ``RequestError`` (e.g. ``CompactedError``), or
        ``NoLeaderError``/``RequestTimeoutError``/``StoppedError``/``TooManyRequestsError``/
        ``NoSpaceError`` (quota is checked before proposing). A ``LeaseGrantRequest`` with
        id 0 gets a fresh id picked by the member."""
        ...

    async def read_barrier(self) -> None:
        """Wait until this member has applied everything committed before the call
        (Raft ReadIndex). Raises ``NoLeaderError``/``RequestTimeoutError``/``StoppedError``."""
        ...

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew on the leader (forwarded if needed); the TTL in seconds the lease now has.
        Raises ``LeaseNotFoundError`` for an unknown or expired lease."""
        ...

    async def lease_time_to_live(self, lease_id: int, keys: bool) -> TimeToLive:
        """The lease's remaining TTL as the leader sees it. Raises ``LeaseNotFoundError``."""
        ...

    def members(self) -> list[Member]: ...

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member: ...

    async def member_remove(self, member_id: int) -> None: ...

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None: ...

    async def member_promote(self, member_id: int) -> None: ...

    def status(self) -> NodeStatus: ...

    async def move_leader(self, target_id: int) -> None:
        """Only on the leader (else ``NotLeaderError``); returns once ``target_id`` leads."""
        ...

    async def defragment(self) -> None: ...

    def snapshot_chunks(self) -> AsyncIterator[tuple[bytes, int]]:
        """A consistent copy of the backend as (chunk, remaining_bytes_after_it) pairs."""
        ...
