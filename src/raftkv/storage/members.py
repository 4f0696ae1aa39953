"""The replicated member table: who is in the cluster, with their names and URLs.

Raft's ConfState says which ids vote or learn; this table adds what etcd's
MemberList shows. It lives in the backend, so it is written in the same batch
as the consistent index (by the Applier's conf-change hook and the member
requests) and travels inside snapshots. The cluster id is kept here too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from raftkv.storage.backend import DB_MEMBERS, DB_META, Backend, WriteBatch

META_CLUSTER_ID = b"cluster_id"
_ID = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class MemberRecord:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False

    def encode(self) -> bytes:
        body = {
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "is_learner": self.is_learner,
        }
        return json.dumps(body, sort_keys=True).encode()

    @staticmethod
    def decode(member_id: int, data: bytes) -> MemberRecord:
        body = json.loads(data)
        return MemberRecord(
            id=member_id,
            name=str(body["name"]),
            peer_urls=tuple(str(url) for url in body["peer_urls"]),
            client_urls=tuple(str(url) for url in body["client_urls"]),
            is_learner=bool(body["is_learner"]),
        )


def _u64_of(*parts: str) -> int:
    digest = hashlib.sha1("\x00".join(parts).encode()).digest()
    value = int.from_bytes(digest[:8], "big")
    return value or 1  # 0 means "no member"


def member_id_for(peer_urls: list[str] | tuple[str, ...], cluster_token: str) -> int:
    """A founding member's id from its peer URLs and the cluster token (as etcd derives
    it), so every founding member computes the same ids, and so the same cluster id."""
    return _u64_of(*sorted(peer_urls), cluster_token)


def added_member_id_for(
    peer_urls: list[str] | tuple[str, ...], cluster_token: str, now_ns: int, nonce: int
) -> int:
    """The id MemberAdd gives: unique per add, as etcd's (which also hashes the time), so a
    member removed and added back under the same URLs is a new member, not the removed one
    (whose removal it would replay from the log). The nonce covers two adds in one clock
    tick. The joining member learns this id from its peers' member list."""
    return _u64_of(*sorted(peer_urls), cluster_token, str(now_ns), f"{nonce:x}")


def cluster_id_for(member_ids: list[int], cluster_token: str) -> int:
    return _u64_of(*(f"{member_id:016x}" for member_id in sorted(member_ids)), cluster_token)


class MemberStore:
    """The member table of one backend, cached in memory."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._members: dict[int, MemberRecord] = {}
        self.cluster_id = 0
        self.load()

    def load(self) -> None:
        """(Re)read the table, after startup or after a snapshot replaced the backend."""
        members: dict[int, MemberRecord] = {}
        with self.backend.read() as txn:
            raw_cluster = txn.get(META_CLUSTER_ID, db=self.backend.db(DB_META))
            with txn.cursor(db=self.backend.db(DB_MEMBERS)) as cursor:
                for key, value in cursor:
                    (member_id,) = _ID.unpack(bytes(key))
                    members[member_id] = MemberRecord.decode(member_id, bytes(value))
        self._members = members
        self.cluster_id = _ID.unpack(raw_cluster)[0] if raw_cluster else 0

    def get(self, member_id: int) -> MemberRecord | None:
        return self._members.get(member_id)

    def all(self) -> list[MemberRecord]:
        return [self._members[member_id] for member_id in sorted(self._members)]

    def by_peer_url(self, url: str) -> MemberRecord | None:
        for member in self._members.values():
            if url in member.peer_urls:
                return member
        return None

    def set_cluster_id(self, batch: WriteBatch, cluster_id: int) -> None:
        batch.put(DB_META, META_CLUSTER_ID, _ID.pack(cluster_id))
        batch.on_commit(lambda: setattr(self, "cluster_id", cluster_id))

    def put(self, batch: WriteBatch, member: MemberRecord) -> None:
        batch.put(DB_MEMBERS, _ID.pack(member.id), member.encode())
        batch.on_commit(lambda: self._members.__setitem__(member.id, member))

    def remove(self, batch: WriteBatch, member_id: int) -> None:
        batch.delete(DB_MEMBERS, _ID.pack(member_id))
        def forget() -> None:
            self._members.pop(member_id, None)

        batch.on_commit(forget)
