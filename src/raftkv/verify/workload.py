"""The client workloads of a verify run, and the history they record.

Four kinds of clients run at once against every endpoint of the cluster (etcd's v3 API, so
the same clients drive raftkv and etcd):

- register: get / put / compare-and-set on a few hot keys (``v/r/<n>``);
- transfer: read every account (``v/acct/<n>``) in one range, then move an amount between
  two of them in one txn guarded by the values just read: the total never changes;
- lease: keys bound to leases, kept alive, read, then revoked (a revoked key must be gone);
- watch: long watches over ``v/`` with prev_kv, restarted now and then from where they
  stopped, checked later against the server's own change history.

Every request is recorded as invoked and then ok, failed (provably not applied) or unknown
(timeout, lost connection: it may or may not have applied), with monotonic timestamps. The
checker's model inputs are those of raftkv.check.models.KVTxnModel.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from raftkv import limits
from raftkv.check.history import Operation
from raftkv.check.watch import ObservedEvent, ObservedResponse, WatchObservation
from raftkv.client import Client, Compare, Op
from raftkv.client.errors import (
    ClientError,
    ConnectError,
    RetryVerdict,
    retry_verdict,
)
from raftkv.client.models import Event, EventType, RangeResult, WatchResponse
from raftkv.client.watch import Watch
from raftkv.verify.records import OpRecord, OpStatus

T = TypeVar("T")

PREFIX = "v/"
REGISTER_PREFIX = "v/r/"
ACCOUNT_PREFIX = "v/acct/"
LEASE_PREFIX = "v/lease/"


@dataclass(frozen=True)
class WorkloadConfig:
    register_clients: int = 6
    register_keys: int = 6
    # Readers pinned to one member each (no fail-over), as a local config reader would be:
    # a member cut off from the others keeps answering them, so a stale read shows at once.
    register_readers: int = 3
    transfer_clients: int = 3
    accounts: int = 4
    initial_balance: int = 100
    lease_clients: int = 2
    lease_ttl_s: int = 8
    watchers: int = 2
    watch_restart_every_s: float = 15.0
    op_timeout_s: float = 2.0
    # A pause after each op, so a long run's history stays within the checker's reach.
    think_s: float = 0.0

    @property
    def total_balance(self) -> int:
        return self.accounts * self.initial_balance


@dataclass
class RecordedOp:
    op_id: int
    client_id: int
    workload: str
    call_ns: int
    text_in: str
    model_input: object | None  # None: not for the linearizability checker
    return_ns: int | None = None
    status: OpStatus = "unknown"
    model_output: object = None
    text_out: str = "pending"


@dataclass
class Recorder:
    """Every op of a run, in invocation order; times are monotonic nanoseconds."""

    origin_ns: int = field(default_factory=time.monotonic_ns)
    ops: list[RecordedOp] = field(default_factory=list)
    # Ops the checker must consider that no client sent (a lease key may expire any time).
    virtual: list[RecordedOp] = field(default_factory=list)

    def invoke(self, client_id: int, workload: str, text: str, model_input: object) -> RecordedOp:
        op = self._new(client_id, workload, text, model_input)
        self.ops.append(op)
        return op

    def add_virtual(self, client_id: int, workload: str, text: str, model_input: object) -> None:
        self.virtual.append(self._new(client_id, workload, text, model_input))

    def _new(self, client_id: int, workload: str, text: str, model_input: object) -> RecordedOp:
        op_id = len(self.ops) + len(self.virtual)
        return RecordedOp(op_id, client_id, workload, time.monotonic_ns(), text, model_input)

    @staticmethod
    def ok(op: RecordedOp, output: object, text: str) -> None:
        op.return_ns, op.status, op.model_output, op.text_out = (
            time.monotonic_ns(),
            "ok",
            output,
            text,
        )

    @staticmethod
    def failed(op: RecordedOp, text: str) -> None:
        op.return_ns, op.status, op.text_out = time.monotonic_ns(), "fail", text

    @staticmethod
    def unknown(op: RecordedOp, text: str) -> None:
        op.return_ns, op.status, op.text_out = None, "unknown", text

    def checker_history(self) -> list[Operation]:
        """The ops the linearizability checker reads: failed ops never applied, so they go."""
        history = []
        for op in [*self.ops, *self.virtual]:
            if op.model_input is None or op.status == "fail":
                continue
            known = op.status == "ok"
            history.append(
                Operation(
                    op.op_id,
                    op.client_id,
                    op.call_ns,
                    op.return_ns if known else None,
                    op.model_input,
                    op.model_output if known else None,
                )
            )
        return sorted(history, key=lambda o: (o.call_ns, o.op_id))

    def records(self) -> list[OpRecord]:
        return [self.record(op) for op in self.ops]

    def record(self, op: RecordedOp) -> OpRecord:
        def seconds(ns: int) -> float:
            return (ns - self.origin_ns) / 1e9

        return OpRecord(
            op.op_id,
            op.client_id,
            op.workload,
            seconds(op.call_ns),
            None if op.return_ns is None or op.status == "unknown" else seconds(op.return_ns),
            op.status,
            op.text_in,
            op.text_out,
        )


def _status_of(error: BaseException, writes: bool) -> OpStatus:
    """A read that failed is simply not in the history; a write is "fail" only when the
    error proves it never applied (the client never retries a write that might have)."""
    if not writes or isinstance(error, ConnectError):
        return "fail"
    if isinstance(error, ClientError) and error.code is not None:
        verdict = retry_verdict(error.code, error.message)
        return "unknown" if verdict is RetryVerdict.AMBIGUOUS else "fail"
    return "unknown"  # our own deadline, or a channel torn down under the call


async def _attempt(
    recorder: Recorder,
    op: RecordedOp,
    request: Awaitable[T],
    timeout_s: float,
    writes: bool,
) -> T | None:
    """Run one request; on error record it as failed or unknown and return None."""
    try:
        return await asyncio.wait_for(request, timeout_s)
    except (ClientError, TimeoutError) as error:
        text = f"{type(error).__name__}: {error}"[:200]
        if _status_of(error, writes) == "fail":
            recorder.failed(op, text)
        else:
            recorder.unknown(op, text)
        return None


def _value(result: RangeResult) -> str | None:
    return result.kvs[0].value.decode() if result.kvs else None


class _Session:
    """One workload client's connection to the cluster, renewed when the members change
    (a member replaced by the nemesis is a new endpoint; the removed one is gone)."""

    def __init__(self, workloads: Workloads, rng: random.Random, pinned: int | None) -> None:
        self._workloads = workloads
        self._rng = rng
        self._pinned = pinned  # stay on one member (no fail-over), else spread and fail over
        self._client: Client | None = None
        self._generation = -1

    async def client(self) -> Client:
        workloads = self._workloads
        if self._client is not None and self._generation == workloads.generation:
            return self._client
        await self.close()
        endpoints = list(workloads.endpoints)
        if self._pinned is not None:
            endpoints = [endpoints[self._pinned % len(endpoints)]]
        else:
            self._rng.shuffle(endpoints)  # spread clients over the members
        self._client = Client(endpoints, timeout_s=workloads.config.op_timeout_s)
        self._generation = workloads.generation
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class Workloads:
    """Runs every client until ``stop`` is set; the recorder keeps what they did."""

    def __init__(
        self,
        endpoints: Sequence[str],
        config: WorkloadConfig,
        rng: random.Random,
        recorder: Recorder,
    ) -> None:
        self.endpoints = list(endpoints)
        self.generation = 0  # bumped when the endpoints change
        self.config = config
        self.rng = rng
        self.recorder = recorder
        self.stop = asyncio.Event()
        self.watches: list[WatchObservation] = []
        self._next_watch_id = 0
        self._next_client_id = 0
        self.transfer_reads = 0
        self.conservation_violations: list[str] = []

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """The cluster's members changed: every client reconnects to these."""
        self.endpoints = list(endpoints)
        self.generation += 1

    def _new_client(self, pinned: int | None = None) -> tuple[int, _Session, random.Random]:
        self._next_client_id += 1
        rng = random.Random(self.rng.getrandbits(64))
        return self._next_client_id - 1, _Session(self, rng, pinned), rng

    async def setup(self) -> None:
        """The accounts' opening balances, written as one known txn of the history."""
        client_id, session, _ = self._new_client()
        accounts = self.account_keys()
        writes = tuple((key, str(self.config.initial_balance)) for key in accounts)
        try:
            client = await session.client()
            op = self.recorder.invoke(client_id, "transfer", "open accounts", ("txn", (), writes))
            await client.txn(success=[Op.put(key, value) for key, value in writes])
            self.recorder.ok(op, {}, "ok")
        finally:
            await session.close()

    def account_keys(self) -> list[str]:
        return [f"{ACCOUNT_PREFIX}{n}" for n in range(self.config.accounts)]

    async def run(self) -> None:
        config = self.config
        loops: list[Callable[[], Awaitable[None]]] = []
        loops += [self._register_loop] * config.register_clients
        loops += [self._pinned_reader(i) for i in range(config.register_readers)]
        loops += [self._transfer_loop] * config.transfer_clients
        loops += [self._lease_loop] * config.lease_clients
        loops += [self._watch_loop] * config.watchers
        await asyncio.gather(*(loop() for loop in loops))

    async def _pause(self, rng: random.Random) -> None:
        if self.config.think_s > 0:
            await asyncio.sleep(rng.uniform(0, 2 * self.config.think_s))

    # --- register ------------------------------------------------------------------------

    async def _register_loop(self) -> None:
        client_id, session, rng = self._new_client()
        last_seen: dict[str, str | None] = {}
        counter = 0
        try:
            while not self.stop.is_set():
                client = await session.client()
                key = f"{REGISTER_PREFIX}{rng.randrange(self.config.register_keys)}"
                choice = rng.random()
                if choice < 0.4:
                    last_seen[key] = await self._get(client, client_id, key, "register")
                else:
                    counter += 1
                    value = f"{client_id}.{counter}"
                    if choice < 0.7:
                        await self._put(client, client_id, key, value, "register")
                    else:
                        await self._cas(client, client_id, key, last_seen.get(key), value)
                await self._pause(rng)
        finally:
            await session.close()

    def _pinned_reader(self, number: int) -> Callable[[], Awaitable[None]]:
        async def read_loop() -> None:
            client_id, session, rng = self._new_client(pinned=number)
            try:
                while not self.stop.is_set():
                    client = await session.client()
                    key = f"{REGISTER_PREFIX}{rng.randrange(self.config.register_keys)}"
                    if await self._get(client, client_id, key, "register") is None:
                        await asyncio.sleep(0.05)  # absent, or the member cannot answer
                    await self._pause(rng)
            finally:
                await session.close()

        return read_loop

    async def _get(self, client: Client, client_id: int, key: str, workload: str) -> str | None:
        op = self.recorder.invoke(client_id, workload, f"get {key}", ("get", key))
        result = await _attempt(self.recorder, op, client.get(key), self._timeout(), False)
        if result is None:
            return None
        value = _value(result)
        self.recorder.ok(op, value, repr(value))
        return value

    async def _put(
        self, client: Client, client_id: int, key: str, value: str, workload: str, lease: int = 0
    ) -> bool:
        op = self.recorder.invoke(client_id, workload, f"put {key} {value}", ("put", key, value))
        put = client.put(key, value, lease=lease)
        if await _attempt(self.recorder, op, put, self._timeout(), True) is None:
            return False
        self.recorder.ok(op, None, "ok")
        return True

    async def _cas(
        self, client: Client, client_id: int, key: str, expected: str | None, new: str
    ) -> None:
        text = f"cas {key} {expected} -> {new}"
        op = self.recorder.invoke(client_id, "register", text, ("cas", key, expected, new))
        condition = (
            Compare.version(key) == 0 if expected is None else Compare.value(key) == expected
        )
        txn = client.txn(compare=[condition], success=[Op.put(key, new)])
        result = await _attempt(self.recorder, op, txn, self._timeout(), True)
        if result is not None:
            self.recorder.ok(op, result.succeeded, str(result.succeeded).lower())

    def _timeout(self) -> float:
        # The client's own attempts (each op_timeout_s) and back-off end first; this bound
        # only guards against a call that never returns.
        return self.config.op_timeout_s * (limits.CLIENT_MAX_ATTEMPTS + 1)

    # --- transfer ------------------------------------------------------------------------

    async def _transfer_loop(self) -> None:
        client_id, session, rng = self._new_client()
        accounts = self.account_keys()
        try:
            while not self.stop.is_set():
                client = await session.client()
                balances = await self._read_accounts(client, client_id, accounts)
                if balances is not None:
                    await self._transfer(client, client_id, rng, balances)
                await self._pause(rng)
        finally:
            await session.close()

    async def _read_accounts(
        self, client: Client, client_id: int, accounts: list[str]
    ) -> dict[str, str | None] | None:
        op = self.recorder.invoke(
            client_id, "transfer", "read accounts", ("txn", tuple(accounts), ())
        )
        read = client.get_prefix(ACCOUNT_PREFIX)
        result = await _attempt(self.recorder, op, read, self._timeout(), False)
        if result is None:
            return None
        found = {kv.key.decode(): kv.value.decode() for kv in result.kvs}
        balances: dict[str, str | None] = {key: found.get(key) for key in accounts}
        self.recorder.ok(op, balances, " ".join(f"{v}" for v in balances.values()))
        self._check_conservation(balances, op)
        return balances

    def _check_conservation(self, balances: dict[str, str | None], op: RecordedOp) -> None:
        self.transfer_reads += 1
        total = sum(int(v) for v in balances.values() if v is not None)
        if total != self.config.total_balance or None in balances.values():
            self.conservation_violations.append(
                f"op {op.op_id} read balances {balances} totalling {total}, "
                f"not {self.config.total_balance}"
            )

    async def _transfer(
        self,
        client: Client,
        client_id: int,
        rng: random.Random,
        balances: dict[str, str | None],
    ) -> None:
        source, target = rng.sample(sorted(balances), 2)
        source_value, target_value = balances[source], balances[target]
        if source_value is None or target_value is None or int(source_value) == 0:
            return
        amount = rng.randint(1, min(5, int(source_value)))
        guard = ((source, source_value), (target, target_value))
        writes = (
            (source, str(int(source_value) - amount)),
            (target, str(int(target_value) + amount)),
        )
        text = f"move {amount} {source}->{target} if {source_value},{target_value}"
        op = self.recorder.invoke(client_id, "transfer", text, ("ctxn", guard, writes))
        txn = client.txn(
            compare=[Compare.value(key) == value for key, value in guard],
            success=[Op.put(key, value) for key, value in writes],
        )
        result = await _attempt(self.recorder, op, txn, self._timeout(), True)
        if result is not None:
            self.recorder.ok(op, result.succeeded, str(result.succeeded).lower())

    # --- lease ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        client_id, session, rng = self._new_client()
        round_number = 0
        try:
            while not self.stop.is_set():
                round_number += 1
                await self._lease_round(await session.client(), client_id, round_number)
                await self._pause(rng)
        finally:
            await session.close()

    async def _lease_round(self, client: Client, client_id: int, round_number: int) -> None:
        """Grant, put a key on the lease, keep it alive and read it, revoke, read again."""
        try:
            lease = await asyncio.wait_for(
                client.lease_grant(self.config.lease_ttl_s), self._timeout()
            )
        except (ClientError, TimeoutError):
            await asyncio.sleep(0.1)
            return
        key = f"{LEASE_PREFIX}{client_id}/{round_number}"
        value = f"{client_id}.{round_number}"
        # The lease may expire whenever the keepalives cannot get through; the checker
        # treats that as a delete of unknown outcome from the moment the key is written.
        self.recorder.add_virtual(client_id, "lease", f"expire {key}", ("delete", key))
        if not await self._put(client, client_id, key, value, "lease", lease=lease.id):
            return
        for _ in range(2):
            try:
                await asyncio.wait_for(client.keepalive_once(lease.id), self._timeout())
            except (ClientError, TimeoutError):
                break
            await self._get(client, client_id, key, "lease")
        op = self.recorder.invoke(client_id, "lease", f"revoke {key}", ("delete", key))
        revoke = client.lease_revoke(lease.id)
        if await _attempt(self.recorder, op, revoke, self._timeout(), True) is None:
            return
        self.recorder.ok(op, None, "ok")
        await self._get(client, client_id, key, "lease")

    # --- watch ---------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        _, session, rng = self._new_client()
        start_revision = 1
        resumed_from: int | None = None
        try:
            while not self.stop.is_set():
                observation = self._new_watch(start_revision, resumed_from)
                responses: list[ObservedResponse] = []
                next_revision = await self._watch_for(
                    await session.client(), observation, responses, rng.uniform(0.5, 1.5)
                )
                self.watches.append(_with_responses(observation, responses))
                if next_revision is None:
                    await asyncio.sleep(0.2)  # it never started; start afresh
                    resumed_from = None
                    continue
                start_revision, resumed_from = next_revision, observation.watch_id
        finally:
            await session.close()

    def _new_watch(self, start_revision: int, resumed_from: int | None) -> WatchObservation:
        self._next_watch_id += 1
        return WatchObservation(
            watch_id=self._next_watch_id,
            key=PREFIX.encode(),
            range_end=_prefix_end(PREFIX.encode()),
            start_revision=start_revision,
            prev_kv=True,
            resumed_from=resumed_from,
        )

    async def _watch_for(
        self,
        client: Client,
        observation: WatchObservation,
        responses: list[ObservedResponse],
        jitter: float,
    ) -> int | None:
        """Watch until stop or a restart is due; the revision to resume from, or None if
        the watch could not be started."""
        watch = client.watch(
            PREFIX, prefix=True, start_revision=observation.start_revision, prev_kv=True
        )
        try:
            await asyncio.wait_for(watch.start(), self._timeout())
        except (ClientError, TimeoutError):
            await watch.cancel()
            return None
        # One task reads every response; it is never interrupted mid-read (a read timed
        # out and retried could lose a response), only ended by cancelling the watch.
        reader = asyncio.get_running_loop().create_task(_read_into(watch, responses))
        stopping = asyncio.get_running_loop().create_task(self.stop.wait())
        hold_s = self.config.watch_restart_every_s * jitter
        await asyncio.wait([reader, stopping], timeout=hold_s, return_when="FIRST_COMPLETED")
        stopping.cancel()
        await watch.cancel()
        await reader
        return watch.next_revision


async def _read_into(watch: Watch, responses: list[ObservedResponse]) -> None:
    try:
        async for response in watch:
            responses.append(_observed(response))
    except ClientError:
        pass  # the watch cannot go on; the next one resumes where this one stopped


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _with_responses(
    observation: WatchObservation, responses: list[ObservedResponse]
) -> WatchObservation:
    return WatchObservation(
        watch_id=observation.watch_id,
        key=observation.key,
        range_end=observation.range_end,
        start_revision=observation.start_revision,
        prev_kv=observation.prev_kv,
        responses=tuple(responses),
        resumed_from=observation.resumed_from,
    )


def _observed(response: WatchResponse) -> ObservedResponse:
    return ObservedResponse(
        header_revision=response.header.revision,
        events=tuple(_observed_event(event) for event in response.events),
        progress_notify=not response.events and response.compact_revision == 0,
        compact_revision=response.compact_revision,
    )


def _observed_event(event: Event) -> ObservedEvent:
    kv = event.kv
    deleted = event.type is EventType.DELETE
    return ObservedEvent(
        kind="delete" if deleted else "put",
        key=kv.key,
        value=None if deleted else kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        prev_value=None if event.prev_kv is None else event.prev_kv.value,
    )
