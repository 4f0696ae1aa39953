"""``raftkv verify``: a real cluster under real faults, and checkers reading what happened.

One run:
1. starts a cluster of separate processes (raftkv, or etcd to calibrate the checkers), each
   in its own network namespace when network faults are asked for;
2. runs the client workloads (workload.py) while the nemesis (nemesis.py) injects faults on
   a seeded schedule, for ``duration_s``;
3. heals everything, and requires a write to succeed within a bound (recovery);
4. SIGKILLs every member, starts them all again, and requires recovery again;
5. reads the final state and the server's whole change history (a watch from revision 1);
6. checks: linearizability of every op (WGL, per key), the watch guarantees against the
   change history, conservation of the transfer total, and that no acknowledged write was
   lost;
7. writes the report (report.py) and exits non-zero on any anomaly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from raftkv.check.linearizability import Verdict, check
from raftkv.check.models import KVTxnModel
from raftkv.check.watch import RevisionChange, check_watches
from raftkv.client import Client
from raftkv.client.errors import ClientError
from raftkv.verify.cluster import Flavor, Hosts, LoopbackHosts, ProcessCluster
from raftkv.verify.mutants import build_mutant
from raftkv.verify.nemesis import NETWORK_FAULTS, Nemesis
from raftkv.verify.network import NetnsNetwork, cleanup_stale, netns_available
from raftkv.verify.proxy import ProxyNetwork
from raftkv.verify.records import Anomaly, RunRecord, RunSummary
from raftkv.verify.workload import PREFIX, RecordedOp, Recorder, WorkloadConfig, Workloads

NetworkMode = Literal["auto", "netns", "proxy", "loopback"]

LEADER_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 30.0
RECOVERY_BOUND_S = 30.0
PROGRESS_INTERVAL_S = 5.0
FINAL_CLIENT_ID = 1_000_000  # the runner's own final reads, apart from the workload clients
RECOVERY_CLIENT_TIMEOUT_S = 2.0
# How long each member may take to apply the final read's revision before it is compared.
MEMBER_CATCH_UP_S = 10.0


class VerifySetupError(RuntimeError):
    """The run could not start (no namespaces for network faults, no leader, ...)."""


@dataclass(frozen=True)
class VerifyOptions:
    out_dir: Path
    target: Flavor = "raftkv"
    nodes: int = 3
    duration_s: float = 60.0
    faults: tuple[str, ...] = ("kill", "pause", "partition")
    seed: int = 0
    network: NetworkMode = "auto"
    check_budget_s: float = 300.0
    recovery_bound_s: float = RECOVERY_BOUND_S
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    server_env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another build
    mutant: str | None = None  # run the servers from a deliberately broken build (mutants.py)
    quiet: bool = False

    def command(self) -> str:
        """The one-line command that repeats this run."""
        parts = [
            "raftkv",
            "verify",
            f"--target={self.target}",
            f"--nodes={self.nodes}",
            f"--duration={self.duration_s:g}",
            f"--faults={','.join(self.faults)}",
            f"--seed={self.seed}",
            f"--network={self.network}",
        ]
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.server_env.items())]
        parts += [f"--server-env={item}" for item in env]
        if self.mutant is not None:
            parts.append(f"--mutant={self.mutant}")
        return " ".join(parts)


class _NamespacedHosts:
    """The network's first hosts go to the first members; later members get new hosts."""

    def __init__(self, network: NetnsNetwork, size: int) -> None:
        self.network = network
        self._unused = list(range(size))

    def host_address(self, index: int) -> str:
        return self.network.host_address(index)

    def command_prefix(self, index: int) -> list[str]:
        return self.network.command_prefix(index)

    def add_host(self) -> int:
        if self._unused:
            return self._unused.pop(0)
        return self.network.add_host()

    def advertised_peer_port(self, index: int, peer_port: int) -> int:
        return peer_port


class _ProxiedHosts:
    """Every member on 127.0.0.1; the others reach it through the proxy's front port."""

    def __init__(self, proxy: ProxyNetwork) -> None:
        self.proxy = proxy

    def host_address(self, index: int) -> str:
        return self.proxy.host_address(index)

    def command_prefix(self, index: int) -> list[str]:
        return self.proxy.command_prefix(index)

    def add_host(self) -> int:
        return self.proxy.add_host()

    def advertised_peer_port(self, index: int, peer_port: int) -> int:
        return self.proxy.front(index, peer_port)


def _open_network(options: VerifyOptions) -> tuple[NetnsNetwork | ProxyNetwork | None, Hosts]:
    """Where the members run: namespaces when network faults are asked for and root can
    make them, else the loopback proxy; plain loopback when no network fault is wanted."""
    wants_network = bool(set(options.faults) & set(NETWORK_FAULTS))
    mode = options.network
    if mode == "auto":
        mode = (
            "loopback" if not wants_network else "netns" if netns_available() is None else "proxy"
        )
    if mode == "loopback":
        if wants_network:
            raise VerifySetupError("network faults need --network=netns, proxy or auto")
        return None, LoopbackHosts()
    if mode == "proxy":
        proxy = ProxyNetwork(seed=options.seed)
        return proxy, _ProxiedHosts(proxy)
    reason = netns_available()
    if reason is not None:
        raise VerifySetupError(f"network namespaces are not available here: {reason}")
    cleanup_stale()  # what runners killed before they could clean up left behind
    network = NetnsNetwork.create(options.nodes)
    return network, _NamespacedHosts(network, options.nodes)


class _Run:
    def __init__(self, options: VerifyOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.recorder = Recorder()
        self.anomalies: list[Anomaly] = []
        self.verdicts: dict[str, str] = {}
        self.out_dir = options.out_dir
        self.data_dir = options.out_dir / "data"
        self.started_wall = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.network: NetnsNetwork | ProxyNetwork | None = None
        self.cluster: ProcessCluster | None = None
        self.nemesis: Nemesis | None = None
        self.workloads: Workloads | None = None

    def say(self, text: str) -> None:
        if not self.options.quiet:
            elapsed = time.monotonic() - self.started_wall
            print(f"[verify {elapsed:6.1f}s] {text}", flush=True)

    # --- The run -----------------------------------------------------------------------

    def execute(self) -> RunRecord:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        server_env = dict(self.options.server_env)
        if self.options.mutant is not None:
            build = build_mutant(self.options.mutant, self.out_dir / "mutant")
            server_env["PYTHONPATH"] = str(build)
            self.say(f"servers run the broken build {self.options.mutant!r} from {build}")
        self.network, hosts = _open_network(self.options)
        try:
            self.cluster = ProcessCluster.start(
                self.data_dir,
                self.options.nodes,
                flavor=self.options.target,
                hosts=hosts,
                env=server_env,
            )
            asyncio.run(self._main())
        finally:
            if self.cluster is not None:
                self.cluster.close()
            if self.network is not None:
                self.network.close()
        record = self._record()
        if record.summary.passed:
            for member in self.cluster.members if self.cluster else []:
                shutil.rmtree(member.data_dir, ignore_errors=True)  # keep the logs only
        return record

    async def _main(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        self.say(f"{self.options.nodes} {self.options.target} members starting")
        await asyncio.to_thread(cluster.wait_for_leader, LEADER_TIMEOUT_S)
        workloads = Workloads(cluster.endpoints(), self.options.workload, self.rng, self.recorder)
        self.workloads = workloads
        await asyncio.wait_for(self._setup(workloads), SETUP_TIMEOUT_S)
        self.nemesis = Nemesis(
            cluster,
            self.network,
            self.options.faults,
            random.Random(self.rng.getrandbits(64)),
            self.recorder.origin_ns,
            say=self.say,
            on_members_changed=lambda: workloads.set_endpoints(self._live_endpoints()),
        )
        await self._fault_phase(workloads, self.nemesis)
        await self._heal_everything()
        self.say("healed; checking recovery")
        await self._check_recovery("after the final heal")
        self.say("full restart (SIGKILL every member, start them again)")
        await self._full_restart()
        await self._check_recovery("after the full restart")
        await self._final_checks(workloads)

    async def _setup(self, workloads: Workloads) -> None:
        while True:
            try:
                await workloads.setup()
                return
            except ClientError as error:
                self.say(f"setup: {error}; retrying")
                await asyncio.sleep(0.5)

    async def _fault_phase(self, workloads: Workloads, nemesis: Nemesis) -> None:
        nemesis_stop = asyncio.Event()
        self.say(
            f"running workloads with faults {','.join(self.options.faults) or 'none'} "
            f"for {self.options.duration_s:g}s (seed {self.options.seed})"
        )
        tasks = [
            asyncio.create_task(workloads.run()),
            asyncio.create_task(nemesis.run(nemesis_stop)),
            asyncio.create_task(self._progress(nemesis_stop)),
        ]
        try:
            await asyncio.sleep(self.options.duration_s)
            nemesis_stop.set()
            await tasks[1]  # the nemesis heals what it injected before it returns
        except Exception as error:  # the history is still worth checking
            nemesis.errors.append(f"the nemesis stopped: {error!r}")
            self.say(f"the nemesis stopped: {error!r}")
        finally:
            # Python 3.11's wait_for can swallow a cancellation, so the clients are told to
            # stop rather than cancelled.
            nemesis_stop.set()
            workloads.stop.set()
            await asyncio.gather(tasks[0], tasks[2])

    async def _progress(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with_timeout = asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await with_timeout
            counts = {"ok": 0, "fail": 0, "unknown": 0}
            for op in self.recorder.ops:
                if op.text_out != "pending":  # still in flight otherwise
                    counts[op.status] += 1
            faults = len(self.nemesis.records) if self.nemesis else 0
            self.say(
                f"ops ok={counts['ok']} fail={counts['fail']} unknown={counts['unknown']}, "
                f"faults={faults}"
            )

    async def _heal_everything(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        if self.network is not None:
            await asyncio.to_thread(self.network.heal)
        for index in range(len(cluster.members)):
            cluster.resume(index)
            cluster.start_again(index)

    async def _full_restart(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        for index in range(len(cluster.members)):
            cluster.kill(index)
        for index in range(len(cluster.members)):
            cluster.start_again(index)
        await asyncio.to_thread(cluster.wait_for_leader, LEADER_TIMEOUT_S)

    def _live_endpoints(self) -> list[str]:
        assert self.cluster is not None
        return [m.client_endpoint for m in self.cluster.members if not m.removed]

    async def _check_recovery(self, when: str) -> None:
        """A fresh write must succeed within the bound once everything is healed."""
        started = time.monotonic()
        deadline = started + self.options.recovery_bound_s
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                async with Client(
                    self._live_endpoints(), timeout_s=RECOVERY_CLIENT_TIMEOUT_S
                ) as client:
                    await client.put(f"{PREFIX}recovery", when)
                self.say(f"recovered {when} in {time.monotonic() - started:.1f}s")
                return
            except (ClientError, TimeoutError, OSError) as error:
                last_error = f"{type(error).__name__}: {error}"
                await asyncio.sleep(0.2)
        self.anomalies.append(
            Anomaly(
                "recovery",
                f"no write succeeded within {self.options.recovery_bound_s:g}s {when}",
                f"last error: {last_error}",
            )
        )

    # --- Checking ------------------------------------------------------------------------

    async def _final_checks(self, workloads: Workloads) -> None:
        final = await self._final_reads()
        await self._check_members_agree(final[1])
        reference = await self._change_history(final[1])
        self._check_final_state(final[0], reference)
        self._check_lost_writes(reference)
        self._check_conservation(workloads)
        self._check_watches(workloads, reference)
        self.say("checking linearizability")
        await asyncio.to_thread(self._check_linearizability)

    async def _final_reads(self) -> tuple[dict[str, str], int]:
        """Every key's final value, recorded as one known read per key (the range is atomic,
        and per-key reads keep the checker's partitions apart)."""
        async with Client(self._live_endpoints(), timeout_s=5.0) as client:
            call_ns = time.monotonic_ns()
            result = await client.get_prefix(PREFIX)
            return_ns = time.monotonic_ns()
        values = {kv.key.decode(): kv.value.decode() for kv in result.kvs}
        keys = {key for op in self.recorder.ops for key in _keys_of(op.model_input)}
        for key in sorted(keys):
            op = RecordedOp(
                len(self.recorder.ops) + len(self.recorder.virtual),
                FINAL_CLIENT_ID,
                "final",
                call_ns,
                f"final get {key}",
                ("get", key),
            )
            op.return_ns, op.status = return_ns, "ok"
            op.model_output, op.text_out = values.get(key), repr(values.get(key))
            self.recorder.ops.append(op)
        return values, result.header.revision

    async def _check_members_agree(self, revision: int) -> None:
        anomaly = await members_disagree(self._live_endpoints(), revision)
        self.verdicts["agreement"] = "ok" if anomaly is None else "anomaly"
        if anomaly is not None:
            self.anomalies.append(anomaly)

    async def _change_history(self, last_revision: int) -> list[RevisionChange]:
        """Every change under ``v/`` since revision 1, from a watch with prev_kv."""
        changes: list[RevisionChange] = []
        async with Client(self._live_endpoints(), timeout_s=5.0) as client:
            watch = client.watch(PREFIX, prefix=True, start_revision=1, prev_kv=True)
            async with watch:
                while watch.next_revision <= last_revision:
                    response = await asyncio.wait_for(watch.__anext__(), 30.0)
                    for event in response.events:
                        deleted = event.type.name == "DELETE"
                        changes.append(
                            RevisionChange(
                                revision=event.kv.mod_revision,
                                key=event.kv.key,
                                kind="delete" if deleted else "put",
                                value=None if deleted else event.kv.value,
                                prev_value=None if event.prev_kv is None else event.prev_kv.value,
                            )
                        )
        return changes

    def _check_final_state(self, final: dict[str, str], reference: list[RevisionChange]) -> None:
        replayed: dict[str, str] = {}
        for change in reference:
            key = change.key.decode()
            if change.kind == "delete":
                replayed.pop(key, None)
            else:
                assert change.value is not None
                replayed[key] = change.value.decode()
        if replayed != final:
            differing = sorted(
                k for k in replayed.keys() | final.keys() if replayed.get(k) != final.get(k)
            )
            self.anomalies.append(
                Anomaly(
                    "history",
                    f"the change history disagrees with the final state on {len(differing)} keys",
                    "\n".join(
                        f"{k}: history says {replayed.get(k)!r}, final read {final.get(k)!r}"
                        for k in differing[:20]
                    ),
                )
            )
        self.verdicts["history"] = "anomaly" if replayed != final else "ok"

    def _check_lost_writes(self, reference: list[RevisionChange]) -> None:
        written = {(c.key.decode(), c.value.decode()) for c in reference if c.value is not None}
        lost = []
        for op in self.recorder.ops:
            if op.status != "ok":
                continue
            for key, value in _acknowledged_writes(op):
                if (key, value) not in written:
                    lost.append((op, key, value))
        self.verdicts["lost-write"] = "anomaly" if lost else "ok"
        if lost:
            self.anomalies.append(
                Anomaly(
                    "lost-write",
                    f"{len(lost)} acknowledged writes are missing from the history",
                    "\n".join(
                        f"op {op.op_id} ({op.text_in}) wrote {key}={value}, acknowledged, "
                        "never in the change history"
                        for op, key, value in lost[:20]
                    ),
                    tuple(self.recorder.record(op) for op, _, _ in lost[:20]),
                )
            )

    def _check_conservation(self, workloads: Workloads) -> None:
        violations = workloads.conservation_violations
        self.verdicts["conservation"] = "anomaly" if violations else "ok"
        if violations:
            self.anomalies.append(
                Anomaly(
                    "conservation",
                    f"{len(violations)} reads of the accounts saw a wrong total",
                    "\n".join(violations[:20]),
                )
            )

    def _check_watches(self, workloads: Workloads, reference: list[RevisionChange]) -> None:
        report = check_watches(reference, workloads.watches)
        self.verdicts["watch"] = "ok" if report.ok else "anomaly"
        self.say(
            f"watch: {len(workloads.watches)} watches, {report.events_checked} events, "
            f"{len(report.violations)} violations"
        )
        if not report.ok:
            self.anomalies.append(
                Anomaly(
                    "watch",
                    f"{len(report.violations)} watch guarantee violations",
                    "\n".join(
                        f"watch {v.watch_id}: {v.guarantee}: {v.detail}"
                        for v in report.violations[:30]
                    ),
                )
            )

    def _check_linearizability(self) -> None:
        history = self.recorder.checker_history()
        result = check(history, KVTxnModel(), time_budget_s=self.options.check_budget_s)
        self.ops_checked = len(history)
        self.say(
            f"linearizability: {result.verdict.value} ({len(history)} ops, "
            f"{result.partitions} partitions, {result.elapsed_s:.1f}s)"
        )
        self.verdicts["linearizability"] = {
            Verdict.OK: "ok",
            Verdict.VIOLATION: "anomaly",
            Verdict.UNKNOWN: "unknown",
        }[result.verdict]
        if result.verdict is Verdict.VIOLATION:
            by_id = {op.op_id: op for op in [*self.recorder.ops, *self.recorder.virtual]}
            ops = tuple(self.recorder.record(by_id[op.op_id]) for op in result.failing)
            summary = result.explanation.splitlines()[0]
            self.anomalies.append(Anomaly("linearizability", summary, result.explanation, ops))
        elif result.verdict is Verdict.UNKNOWN:
            self.unknown_reason = result.explanation

    # --- The record ----------------------------------------------------------------------

    def _record(self) -> RunRecord:
        ops = self.recorder.records()
        by_status: dict[str, int] = {}
        for op in ops:
            by_status[op.status] = by_status.get(op.status, 0) + 1
        faults = self.nemesis.records if self.nemesis else []
        for error in self.nemesis.errors if self.nemesis else []:
            self.say(f"nemesis could not inject: {error}")
        summary = RunSummary(
            target=self.options.target,
            nodes=self.options.nodes,
            seed=self.options.seed,
            duration_s=self.options.duration_s,
            faults_requested=self.options.faults,
            command=self.options.command(),
            started_at=self.started_at,
            ops_by_status=by_status,
            ops_checked=getattr(self, "ops_checked", 0),
            faults_injected=len(faults),
            verdicts=dict(self.verdicts),
            anomalies=len(self.anomalies),
            wall_s=time.monotonic() - self.started_wall,
        )
        return RunRecord(summary, ops, list(faults), list(self.anomalies))


async def members_disagree(endpoints: Sequence[str], revision: int) -> Anomaly | None:
    """Whether the members hold different keys under ``v/`` at ``revision``, each read
    from its own copy once it has applied ``revision``.

    The other checks read through whichever member answers; a member whose state machine
    diverged (an entry applied twice, or skipped after a crash) can hide among them.
    """
    states = {endpoint: await _member_state(endpoint, revision) for endpoint in endpoints}
    reference_endpoint, reference = next(iter(states.items()))
    differing = {e: state for e, state in states.items() if state != reference}
    if not differing:
        return None
    return Anomaly(
        "agreement",
        f"{len(differing)} of {len(states)} members disagree with {reference_endpoint} "
        f"at revision {revision}",
        "\n".join(
            _state_difference(reference_endpoint, reference, endpoint, state)
            for endpoint, state in differing.items()
        ),
    )


async def _member_state(endpoint: str, revision: int) -> list[tuple[str, str, int]] | str:
    """The keys under ``v/`` at ``revision`` on this member alone (serializable reads), or
    why they could not be read within MEMBER_CATCH_UP_S (a member the full restart left
    still starting gets the whole time to open its port and catch up)."""
    deadline = time.monotonic() + MEMBER_CATCH_UP_S
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            async with Client([endpoint], timeout_s=RECOVERY_CLIENT_TIMEOUT_S) as client:
                current = await client.get(f"{PREFIX}recovery", serializable=True)
                if current.header.revision >= revision:
                    result = await client.get_prefix(PREFIX, revision=revision, serializable=True)
                    return [
                        (kv.key.decode(), kv.value.decode(), kv.mod_revision) for kv in result.kvs
                    ]
                last_error = f"applied only up to revision {current.header.revision}"
        except (ClientError, TimeoutError) as error:
            last_error = f"{type(error).__name__}: {error}"
        await asyncio.sleep(0.1)
    return f"unreadable: {last_error}"


def _state_difference(
    reference_endpoint: str,
    reference: list[tuple[str, str, int]] | str,
    endpoint: str,
    state: list[tuple[str, str, int]] | str,
) -> str:
    if isinstance(state, str) or isinstance(reference, str):
        return f"{endpoint}: {state if isinstance(state, str) else 'readable'}; " + (
            f"{reference_endpoint}: {reference if isinstance(reference, str) else 'readable'}"
        )
    theirs = {key: (value, mod) for key, value, mod in state}
    ours = {key: (value, mod) for key, value, mod in reference}
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    lines = [f"{endpoint} differs on {len(keys)} keys (value, mod revision):"]
    lines += [
        f"  {k}: {endpoint} {theirs.get(k)}, {reference_endpoint} {ours.get(k)}" for k in keys[:20]
    ]
    return "\n".join(lines)


def _keys_of(model_input: object) -> list[str]:
    match model_input:
        case ("get" | "delete", key) | ("put", key, _) | ("cas", key, _, _):
            return [str(key)]
        case ("txn" | "ctxn", first, writes):
            # txn: (reads, writes) with reads a tuple of keys; ctxn: (guard, writes) with the
            # guard a tuple of (key, expected) pairs.
            assert isinstance(first, tuple) and isinstance(writes, tuple)
            read_keys = [k if isinstance(k, str) else k[0] for k in first]
            return [*map(str, read_keys), *(str(k) for k, _ in writes)]
    return []


def _acknowledged_writes(op: RecordedOp) -> list[tuple[str, str]]:
    match op.model_input:
        case ("put", key, value):
            return [(str(key), str(value))]
        case ("cas", key, _, new) if op.model_output is True:
            return [(str(key), str(new))]
        case ("ctxn", _, writes) if op.model_output is True:
            assert isinstance(writes, tuple)
            return [(str(k), str(v)) for k, v in writes]
        case ("txn", _, writes):
            assert isinstance(writes, tuple)
            return [(str(k), str(v)) for k, v in writes]
    return []


def _stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C, so every member process and namespace is removed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run_verify(options: VerifyOptions) -> RunRecord:
    """Run once and write the report into ``options.out_dir``."""
    from raftkv.verify.report import summary_text, write_report

    _stop_on_sigterm()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(options)
    record = run.execute()
    write_report(record, options.out_dir)
    if not options.quiet:
        print(summary_text(record), flush=True)
        print(f"report: {options.out_dir / 'index.html'}", flush=True)
    return record


def parse_faults(text: str) -> tuple[str, ...]:
    from raftkv.verify.nemesis import ALL_FAULTS

    faults = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; choose from {', '.join(ALL_FAULTS)}")
    return faults
