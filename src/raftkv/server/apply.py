"""The apply layer: committed Raft entries -> the replicated state machine.

``Applier.apply(entries)`` applies every entry above the backend's consistent index in
ONE backend batch (``Backend.write``) and then records the last entry's (index, term) as
the consistent index in the same batch, so the state and the index commit together and a
replay after a crash skips exactly what is already in the backend (docs/storage.md,
"Apply").

* Empty NORMAL entries (a new leader's) carry no request; they only advance the
  consistent index. CONF_CHANGE entries update the member table (``members``) in the same
  batch; the caller applies them to its RawNode. Their context is JSON
  ``{"request_id": int, "member": {...}}`` (``conf_change_context``).
* A request refused by the store (etcd's errors: ``RequestError``) becomes its result;
  the stores guarantee a refused request wrote nothing, so the batch goes on.
* Anything else (``DiskError``, a bug) propagates and the batch aborts: the node must stop,
  because the lessor's and alarms' in-memory state is not rolled back.
* A client's request comes as an ``AuthorizedRequest`` carrying its credentials. While
  auth is enabled its permissions are checked here, against the replicated auth store,
  as etcd's authApplierV3 does: every key a put, delete or txn op (and each compare)
  touches, the keys of a lease being revoked, and root for auth management. A request
  checked at an older auth revision than the store's is refused ("revision of auth store
  is old"). Requests the member proposes itself come bare and are not checked.

Deterministic: the results depend only on the entries and the replicated state. The
only per-member input, ``now_tick``, reaches the lessor's primary-only expiry state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from raftkv import limits
from raftkv.raft.messages import ConfChange, ConfChangeType, Entry, EntryType
from raftkv.server.auth.context import AuthInfo
from raftkv.server.auth.store import AuthChangeResponse, AuthenticateResponse, AuthStore
from raftkv.server.auth.tokens import SimpleTokens
from raftkv.server.requests import (
    AUTH_MANAGEMENT_REQUESTS,
    AlarmAction,
    AlarmRequest,
    AuthenticateRequest,
    AuthorizedRequest,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    MemberAttributesRequest,
    MemberUpdateRequest,
    PlainRequest,
    Request,
    decode,
)
from raftkv.storage.alarm import (
    LEASE_GRANT_COST_BYTES,
    AlarmMember,
    AlarmStore,
    QuotaGuard,
    RequestKind,
    put_cost_bytes,
    txn_cost_bytes,
)
from raftkv.storage.backend import Backend, WriteBatch
from raftkv.storage.errors import RequestError, TooManyChangesError
from raftkv.storage.lease import Lessor
from raftkv.storage.members import MemberRecord, MemberStore
from raftkv.storage.mvcc import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KVStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    RequestOp,
    TxnRequest,
    TxnResponse,
)


@dataclass(frozen=True, slots=True)
class LeaseGrantResponse:
    id: int
    ttl_seconds: int  # as granted: raised to the lessor's minimum TTL
    revision: int  # the store's revision (etcd's header revision)


@dataclass(frozen=True, slots=True)
class LeaseRevokeResponse:
    revision: int  # the revision that deleted the lease's keys (unchanged if it had none)
    deleted_keys: int


@dataclass(frozen=True, slots=True)
class LeaseCheckpointResponse:
    # Per checkpoint, whether its lease still existed (a revoked one is ignored).
    applied: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class AlarmResponse:
    # The alarm raised or cleared; empty if nothing changed (NONE, or not raised).
    alarms: tuple[AlarmMember, ...]


@dataclass(frozen=True, slots=True)
class MemberResponse:
    member_id: int
    applied: bool  # False: the member was unknown (e.g. removed meanwhile)


Response = (
    PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactionResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | LeaseCheckpointResponse
    | AlarmResponse
    | MemberResponse
    | AuthChangeResponse
    | AuthenticateResponse
)
Result = Response | RequestError
"""What applying a request gave: its response, or the etcd error that refused it."""


class Applier:
    """Applies committed entries of one member to its backend, KV store, lessor and alarms.

    ``kv`` must have been built with ``leases=lessor`` and a ``lease_checker`` that asks
    the lessor, so puts attach keys and revokes find them.
    """

    def __init__(
        self,
        backend: Backend,
        kv: KVStore,
        lessor: Lessor,
        alarms: AlarmStore,
        member_id: int,
        quota: QuotaGuard | None = None,
        members: MemberStore | None = None,
        auth: AuthStore | None = None,
    ) -> None:
        self.backend = backend
        self.kv = kv
        self.lessor = lessor
        self.alarms = alarms
        self.member_id = member_id
        self.members = members or MemberStore(backend)
        self.auth = auth or AuthStore(backend, SimpleTokens(limits.AUTH_TOKEN_TTL_DEFAULT_S))
        assert self.auth.backend is backend, "the auth store must live in this backend"
        # check_write reads only the replicated alarms, never the quota size.
        self.quota = quota or QuotaGuard(
            backend, min(kv.quota_bytes, backend.map_size_bytes), alarms
        )
        assert self.quota.alarms is alarms, "the guard must read this member's alarms"

    def apply(self, entries: list[Entry], now_tick: int = 0) -> list[tuple[int, Result]]:
        """Apply the entries above the consistent index, in one batch; (request id,
        result) of each request applied, in log order. ``now_tick`` starts the expiry
        of granted leases on the primary."""
        applied = self.backend.consistent_index().index
        fresh = [entry for entry in entries if entry.index > applied]
        if not fresh:
            return []
        for before, after in zip(fresh, fresh[1:], strict=False):
            assert after.index == before.index + 1, f"gap: {before.index} -> {after.index}"
        assert fresh[0].index == applied + 1 or applied == 0, (
            f"entry {fresh[0].index} after consistent index {applied}"
        )
        results: list[tuple[int, Result]] = []
        with self.backend.write() as batch:
            for entry in fresh:
                if entry.type is EntryType.CONF_CHANGE:
                    results.append(self._apply_conf_change(batch, entry))
                    continue
                if not entry.data:
                    continue
                request_id, request = decode(entry.data)
                result = self._apply_one(batch, request, now_tick, entry.index)
                results.append((request_id, result))
            last = fresh[-1]
            batch.set_consistent_index(last.index, last.term)
        return results

    def _apply_one(self, batch: WriteBatch, request: Request, now_tick: int, index: int) -> Result:
        try:
            if isinstance(request, AuthorizedRequest):
                info = AuthInfo(request.username, request.auth_revision)
                self._check_permitted(info, request.request)
                return self._dispatch(batch, request.request, now_tick, index)
            return self._dispatch(batch, request, now_tick, index)
        except RequestError as error:
            assert batch.failure is None, f"a refused request wrote: {error!r}"
            return error

    def _check_permitted(self, info: AuthInfo, request: PlainRequest) -> None:
        """etcd's authApplierV3: refuse before anything is written."""
        if not self.auth.enabled:
            return
        match request:
            case PutRequest() | DeleteRangeRequest() | TxnRequest():
                check_op_permitted(self.auth, self.lessor, info, request)
            case LeaseRevokeRequest():
                check_lease_puts(self.auth, self.lessor, info, request.id)
            case _ if isinstance(request, AUTH_MANAGEMENT_REQUESTS):
                self.auth.check_admin(info)

    def _dispatch(
        self, batch: WriteBatch, request: PlainRequest, now_tick: int, index: int = 0
    ) -> Response:
        check = self.quota.check_write
        match request:
            case PutRequest():
                check(RequestKind.PUT, put_cost_bytes(request.key, request.value))
                return self.kv.put(batch, request)
            case DeleteRangeRequest():
                check(RequestKind.DELETE_RANGE, 0)
                return self.kv.delete_range(batch, request)
            case TxnRequest():
                check(RequestKind.TXN, _txn_cost_bytes(request))
                return self.kv.txn(batch, request)
            case CompactionRequest():
                check(RequestKind.COMPACTION, 0)
                return self.kv.compact(batch, request.revision)
            case LeaseGrantRequest():
                check(RequestKind.LEASE_GRANT, LEASE_GRANT_COST_BYTES)
                lease = self.lessor.grant(batch, request.id, request.ttl_seconds, now_tick)
                return LeaseGrantResponse(lease.id, lease.ttl_seconds, self.kv.current_revision)
            case LeaseRevokeRequest():
                check(RequestKind.LEASE_REVOKE, 0)
                return self._revoke(batch, request.id)
            case LeaseCheckpointRequest():
                check(RequestKind.LEASE_CHECKPOINT, 0)
                applied = tuple(
                    self.lessor.apply_checkpoint(batch, lease_id, max(remaining, 0))
                    for lease_id, remaining in request.checkpoints
                )
                return LeaseCheckpointResponse(applied)
            case AlarmRequest():
                return self._alarm(batch, request)
            case MemberAttributesRequest():
                return self._member_attributes(batch, request)
            case MemberUpdateRequest():
                return self._member_update(batch, request)
            case AuthenticateRequest():
                return self.auth.apply_authenticate(batch, request, index)
            case _ if isinstance(request, AUTH_MANAGEMENT_REQUESTS):
                return self.auth.apply(batch, request)
        raise AssertionError(f"unhandled request {request!r}")

    def _apply_conf_change(self, batch: WriteBatch, entry: Entry) -> tuple[int, Result]:
        change = ConfChange.decode(entry.data)
        request_id, proposed = parse_conf_change_context(change)
        current = self.members.get(change.node_id)
        if change.type is ConfChangeType.REMOVE_NODE:
            if current is not None:
                self.members.remove(batch, change.node_id)
            return request_id, MemberResponse(change.node_id, current is not None)
        is_learner = change.type is ConfChangeType.ADD_LEARNER
        # A change proposed without details (a bare RawNode user) gets an unnamed record.
        base = current or proposed or MemberRecord(change.node_id, "", (), ())
        record = MemberRecord(
            change.node_id, base.name, base.peer_urls, base.client_urls, is_learner
        )
        self.members.put(batch, record)
        return request_id, MemberResponse(change.node_id, True)

    def _member_attributes(
        self, batch: WriteBatch, request: MemberAttributesRequest
    ) -> MemberResponse:
        current = self.members.get(request.member_id)
        if current is None:
            return MemberResponse(request.member_id, False)
        record = MemberRecord(
            current.id, request.name, current.peer_urls, request.client_urls, current.is_learner
        )
        self.members.put(batch, record)
        return MemberResponse(request.member_id, True)

    def _member_update(self, batch: WriteBatch, request: MemberUpdateRequest) -> MemberResponse:
        current = self.members.get(request.member_id)
        if current is None:
            return MemberResponse(request.member_id, False)
        record = MemberRecord(
            current.id, current.name, request.peer_urls, current.client_urls, current.is_learner
        )
        self.members.put(batch, record)
        return MemberResponse(request.member_id, True)

    def _revoke(self, batch: WriteBatch, lease_id: int) -> LeaseRevokeResponse:
        # Every refusal comes before the first write: LeaseNotFoundError (a duplicate
        # revoke) from the lessor, TooManyChangesError here rather than from delete_keys
        # after the lease was already deleted.
        lease = self.lessor.lookup(lease_id)
        if lease is not None and len(lease.keys) >= limits.MVCC_MAX_CHANGES_PER_REVISION:
            raise TooManyChangesError()
        keys = self.lessor.revoke(batch, lease_id)
        deleted = self.kv.delete_keys(batch, keys) if keys else 0
        return LeaseRevokeResponse(self.kv.current_revision, deleted)

    def _alarm(self, batch: WriteBatch, request: AlarmRequest) -> AlarmResponse:
        if request.action is AlarmAction.ACTIVATE:
            self.quota.check_write(RequestKind.ALARM_ACTIVATE, 0)
            member = self.alarms.activate(batch, request.member_id, request.alarm)
        else:
            self.quota.check_write(RequestKind.ALARM_DEACTIVATE, 0)
            member = self.alarms.deactivate(batch, request.member_id, request.alarm)
        return AlarmResponse(() if member is None else (member,))


def check_op_permitted(auth: AuthStore, lessor: Lessor, info: AuthInfo, op: RequestOp) -> None:
    """Every key ``op`` reads or writes (a txn's compares and nested ops too) must be
    permitted to ``info``'s user; raises the refusal. The API checks read-only txns with
    it, the apply step everything else."""
    match op:
        case RangeRequest():
            auth.check_range(info, op.key, op.range_end)
        case PutRequest():
            auth.check_put(info, op.key)
            if op.prev_kv:  # the answer holds the old value: a read
                auth.check_range(info, op.key)
            if op.lease:
                check_lease_puts(auth, lessor, info, op.lease)
        case DeleteRangeRequest():
            auth.check_delete(info, op.key, op.range_end)
            if op.prev_kv:
                auth.check_range(info, op.key, op.range_end)
        case TxnRequest():
            for compare in op.compare:
                auth.check_range(info, compare.key, compare.range_end)
            for nested in (*op.success, *op.failure):
                check_op_permitted(auth, lessor, info, nested)


def check_lease_puts(auth: AuthStore, lessor: Lessor, info: AuthInfo, lease_id: int) -> None:
    """Revoking a lease deletes its keys, and attaching a key to a lease lets whoever
    revokes it delete the key: both need write permission on every key it holds."""
    lease = lessor.lookup(lease_id)
    for key in sorted(lease.keys) if lease is not None else ():
        auth.check_put(info, key)


def _txn_cost_bytes(request: TxnRequest) -> int:
    """etcd's costTxn, counting the puts of nested txns too (stricter than etcd)."""
    return txn_cost_bytes(_branch_costs(request.success), _branch_costs(request.failure))


def _branch_costs(ops: tuple[RequestOp, ...]) -> list[int]:
    costs: list[int] = []
    for op in ops:
        if isinstance(op, PutRequest):
            costs.append(put_cost_bytes(op.key, op.value))
        elif isinstance(op, TxnRequest):
            costs.append(_txn_cost_bytes(op))
    return costs


def conf_change_context(request_id: int, member: MemberRecord | None) -> bytes:
    """The context of a proposed conf change: who asked, and the member's details."""
    body: dict[str, object] = {"request_id": request_id}
    if member is not None:
        body["member"] = {
            "name": member.name,
            "peer_urls": list(member.peer_urls),
            "client_urls": list(member.client_urls),
        }
    return json.dumps(body, sort_keys=True).encode()


def parse_conf_change_context(change: ConfChange) -> tuple[int, MemberRecord | None]:
    if not change.context:
        return 0, None  # bootstrap-style changes carry no context
    body = json.loads(change.context)
    request_id = int(body["request_id"])
    member = body.get("member")
    if member is None:
        return request_id, None
    record = MemberRecord(
        change.node_id,
        str(member["name"]),
        tuple(str(url) for url in member["peer_urls"]),
        tuple(str(url) for url in member["client_urls"]),
    )
    return request_id, record
