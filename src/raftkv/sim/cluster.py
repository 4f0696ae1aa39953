"""The deterministic simulation of one Raft cluster for one seed.

A safety phase runs the workload under seeded faults, checking the Raft
invariants after every Ready and every ReadIndex read against the writes.
A liveness phase then heals everything and requires the cluster to elect a
leader and commit a fresh write on every member within a bounded time.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from raftkv.check.raft_invariants import InvariantViolation, RaftInvariantChecker
from raftkv.raft.errors import ProposalDropped, ReadIndexDropped
from raftkv.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Index,
    Message,
    NodeId,
)
from raftkv.raft.raft import StateType
from raftkv.sim.disk import SimDisk
from raftkv.sim.network import SimNetwork
from raftkv.sim.node import NODE_DIRECTORY, CrashPoint, SimNode
from raftkv.sim.options import STEPS_PER_TICK, SimOptions
from raftkv.storage.raft_storage import RaftPersistence


class LivenessFailure(Exception):
    """The healed cluster did not make progress within the bound."""


@dataclass(slots=True)
class WriteOp:
    key: str
    node: NodeId
    incarnation: int
    acked_index: Index | None = None


@dataclass(slots=True)
class ReadOp:
    key: str
    # What any linearizable read invoked now must see at least:
    floor_key_index: Index  # the newest write to key that completed before
    floor_commit_index: Index  # the highest index acknowledged to any client before


@dataclass(slots=True)
class SimStats:
    ticks: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    crashes: int = 0
    partitions: int = 0
    conf_changes_applied: int = 0
    transfers: int = 0
    writes_acked: int = 0
    writes_dropped: int = 0
    reads_checked: int = 0
    reads_dropped: int = 0
    snapshots_restored: int = 0
    invariant_checks: int = 0
    liveness_ticks: int = 0

    def add(self, other: SimStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class SimCluster:
    options: SimOptions
    verbose: bool = False
    rng: random.Random = field(init=False)
    network: SimNetwork = field(init=False)
    checker: RaftInvariantChecker = field(init=False)
    nodes: dict[NodeId, SimNode] = field(default_factory=dict)
    retired: set[NodeId] = field(default_factory=set)
    trace_lines: list[str] = field(default_factory=list)
    stats: SimStats = field(default_factory=SimStats)
    writes: dict[int, WriteOp] = field(default_factory=dict)
    reads: dict[int, ReadOp] = field(default_factory=dict)
    key_floor: dict[str, Index] = field(default_factory=dict)
    max_acked_index: Index = 0
    next_op_id: int = 1
    now_step: int = 0
    heal_at_tick: int | None = None
    liveness_marker: tuple[int, int] | None = None  # (op id, proposed at tick)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.options.seed * 7919 + 1)
        self.network = SimNetwork(self.options, random.Random(self.rng.getrandbits(64)))
        self.network.on_snapshot_lost = self.report_snapshot_lost
        self.checker = RaftInvariantChecker()
        voters = frozenset(range(1, self.options.node_count + 1))
        for node_id in sorted(voters):
            disk = SimDisk()
            conf_state = ConfState(voters=voters)
            persistence = RaftPersistence.bootstrap(disk, NODE_DIRECTORY, conf_state, data=b"{}")
            self.add_node(node_id, disk, persistence)

    # -- Plumbing -----------------------------------------------------------------

    @property
    def tick(self) -> int:
        return self.now_step // STEPS_PER_TICK

    def trace(self, line: str) -> None:
        line = f"[{self.tick:5d}] {line}"
        self.trace_lines.append(line)
        if self.verbose:
            print(line)

    def add_node(self, node_id: NodeId, disk: SimDisk, persistence: RaftPersistence) -> SimNode:
        assert node_id not in self.nodes
        node = SimNode(
            node_id,
            self.options,
            random.Random(self.rng.getrandbits(64)),
            self.checker,
            disk,
            persistence,
            self.send,
            self.on_apply,
            self.trace,
        )
        drift = self.options.clock_drift_steps_max
        node.tick_period_steps = STEPS_PER_TICK + self.rng.randint(-drift, drift)
        node.next_tick_step = self.now_step + self.rng.randrange(STEPS_PER_TICK)
        self.nodes[node_id] = node
        return node

    def send(self, message: Message) -> None:
        if self.verbose:
            self.trace(f"send {message.describe()}")
        self.network.send(message, self.now_step)

    def report_snapshot_lost(self, message: Message) -> None:
        sender = self.nodes.get(message.frm)
        if sender is not None and sender.rawnode is not None:
            sender.rawnode.report_snapshot(message.to, failed=True)

    def alive_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.alive]

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        best: SimNode | None = None
        for node in self.alive_nodes():
            assert node.rawnode is not None
            raft = node.rawnode.raft
            if raft.state is StateType.LEADER and (
                best is None or raft.term > best.rawnode.raft.term  # type: ignore[union-attr]
            ):
                best = node
        return best

    # -- The main loop --------------------------------------------------------------

    def run(self) -> None:
        self.trace(f"options {self.options.describe()}")
        for _ in range(self.options.safety_ticks * STEPS_PER_TICK):
            self.step(faults=True)
        self.start_liveness_phase()
        deadline_tick = self.tick + self.options.liveness_ticks
        while self.tick < deadline_tick:
            self.step(faults=False)
            if self.now_step % STEPS_PER_TICK == 0 and self.liveness_reached():
                self.stats.liveness_ticks = self.options.liveness_ticks - (
                    deadline_tick - self.tick
                )
                self.finish()
                return
        raise LivenessFailure(
            f"no progress within {self.options.liveness_ticks} ticks after healing: "
            + "; ".join(self.describe_node(node) for node in self.nodes.values())
        )

    def step(self, faults: bool) -> None:
        for message in self.network.due(self.now_step):
            node = self.nodes.get(message.to)
            if node is not None:
                node.deliver(message)
        self.tick_nodes()
        if self.now_step % STEPS_PER_TICK == 0:
            self.stats.ticks += 1
            self.per_tick(faults)
        if faults:
            self.run_workload()  # the liveness phase adds only its own marker write
        self.process_readies()
        self.now_step += 1

    def tick_nodes(self) -> None:
        for node in self.nodes.values():
            if node.rawnode is not None and self.now_step >= node.next_tick_step:
                node.rawnode.tick()
                node.next_tick_step += node.tick_period_steps

    def process_readies(self) -> None:
        order = list(self.nodes.values())
        self.rng.shuffle(order)
        for node in order:
            node.process_ready()
            self.serve_reads(node)

    def per_tick(self, faults: bool) -> None:
        self.restart_crashed()
        for node in self.nodes.values():
            node.maybe_compact()
        if not faults:
            return
        self.maybe_partition()
        if self.rng.random() < self.options.crash_probability:
            self.crash_one()
        if self.rng.random() < self.options.leader_fault_probability:
            self.fault_leader()
        if self.rng.random() < self.options.conf_change_probability:
            self.change_membership()
        if self.rng.random() < self.options.transfer_probability:
            self.transfer_leadership()

    # -- Faults ---------------------------------------------------------------------

    def restart_crashed(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                continue
            if node.restart_at_tick is None:
                node.restart_at_tick = self.tick + self.rng.randint(
                    1, self.options.restart_ticks_max
                )
            elif self.tick >= node.restart_at_tick:
                node.restart_at_tick = None
                node.start()
                self.trace(f"node {node.id} restarted (term {node.storage.hard_state.term})")

    def crash_one(self) -> None:
        alive = self.alive_nodes()
        if not alive:
            return
        leader = self.leader()
        node = leader if leader is not None and self.rng.random() < 0.3 else self.rng.choice(alive)
        self.stats.crashes += 1
        if self.rng.random() < self.options.crash_mid_ready_probability:
            node.armed_crash = self.rng.choice(list(CrashPoint))
            self.trace(f"node {node.id} will crash at {node.armed_crash.value}")
        else:
            node.crash()
            self.trace(f"node {node.id} crashed")

    def fault_leader(self) -> None:
        """Churn: take the leader away soon after it was elected or appended."""
        leader = self.leader()
        if leader is None:
            return
        if self.heal_at_tick is None and self.rng.random() < 0.5:
            others = set(self.nodes) - {leader.id}
            self.network.partition({leader.id}, others, one_way=False)
            self.heal_at_tick = self.tick + self.rng.randint(1, self.options.election_ticks * 2)
            self.stats.partitions += 1
            self.trace(f"partition isolate-leader: [{leader.id}] | {sorted(others)}")
            return
        self.stats.crashes += 1
        leader.armed_crash = self.rng.choice(list(CrashPoint))
        leader.restart_at_tick = self.tick + self.rng.randint(1, self.options.election_ticks)
        self.trace(f"leader {leader.id} will crash at {leader.armed_crash.value}")

    def maybe_partition(self) -> None:
        if self.heal_at_tick is not None:
            if self.tick >= self.heal_at_tick:
                self.network.heal()
                self.heal_at_tick = None
                self.trace("network healed")
            return
        if self.rng.random() >= self.options.partition_probability:
            return
        ids = sorted(self.nodes)
        if len(ids) < 2:
            return
        self.stats.partitions += 1
        kind = self.rng.choice(["split", "one-way", "isolate-leader", "bridge"])
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        side_a, side_b = set(ids[:cut]), set(ids[cut:])
        leader = self.leader()
        if kind == "isolate-leader" and leader is not None:
            side_a, side_b = {leader.id}, set(ids) - {leader.id}
        if kind == "bridge" and len(ids) >= 3:
            bridge = ids[0]
            side_a, side_b = set(ids[1 : cut + 1]) - {bridge}, set(ids[cut + 1 :]) - {bridge}
        self.network.partition(side_a, side_b, one_way=kind == "one-way")
        self.heal_at_tick = self.tick + self.rng.randint(1, self.options.partition_ticks_max)
        self.trace(f"partition {kind}: {sorted(side_a)} | {sorted(side_b)}")

    def change_membership(self) -> None:
        leader = self.leader()
        if leader is None or leader.rawnode is None:
            return
        conf = leader.conf_state
        spare = [
            node_id
            for node_id in range(1, self.options.max_node_count + 1)
            if node_id not in self.nodes and node_id not in self.retired
        ]
        choices: list[ConfChange] = []
        if spare:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, spare[0]))
            choices.append(ConfChange(ConfChangeType.ADD_NODE, spare[0]))
        for learner in sorted(conf.learners):
            choices.append(ConfChange(ConfChangeType.ADD_NODE, learner))
        if len(conf.voters) > 1:
            victim = self.rng.choice(sorted(conf.voters))
            choices.append(ConfChange(ConfChangeType.REMOVE_NODE, victim))
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, victim))
        if not choices:
            return
        change = self.rng.choice(choices)
        if change.node_id not in self.nodes:
            disk = SimDisk()  # joins empty and learns everything from a snapshot
            self.add_node(change.node_id, disk, RaftPersistence.create_empty(disk, NODE_DIRECTORY))
        try:
            leader.rawnode.propose_conf_change(change)
            self.trace(f"propose {change.describe()} via {leader.id}")
        except ProposalDropped as error:
            self.trace(f"propose {change.describe()} refused: {error.reason}")

    def transfer_leadership(self) -> None:
        leader = self.leader()
        if leader is None or leader.rawnode is None:
            return
        others = sorted(leader.conf_state.voters - {leader.id})
        if not others:
            return
        target = self.rng.choice(others)
        self.stats.transfers += 1
        leader.rawnode.transfer_leader(target)
        self.trace(f"transfer leadership {leader.id} -> {target}")

    # -- Workload and its checks ------------------------------------------------------

    def new_op_id(self) -> int:
        op_id = self.next_op_id
        self.next_op_id += 1
        return op_id

    def run_workload(self) -> None:
        if self.rng.random() < self.options.write_probability:
            self.start_write()
        if self.rng.random() < self.options.read_probability:
            self.start_read()

    def start_write(self, node: SimNode | None = None) -> int | None:
        if node is None:
            alive = self.alive_nodes()
            if not alive:
                return None
            node = self.rng.choice(alive)
        assert node.rawnode is not None
        op_id = self.new_op_id()
        key = f"k{self.rng.randrange(self.options.keys)}"
        try:
            node.rawnode.propose(f"w|{op_id}|{key}|v{op_id}".encode())
        except ProposalDropped:
            self.stats.writes_dropped += 1
            return None
        self.writes[op_id] = WriteOp(key=key, node=node.id, incarnation=node.crash_count)
        return op_id

    def start_read(self) -> None:
        alive = self.alive_nodes()
        if not alive:
            return
        node = self.rng.choice(alive)
        assert node.rawnode is not None
        op_id = self.new_op_id()
        key = f"k{self.rng.randrange(self.options.keys)}"
        context = f"r{op_id}".encode()
        try:
            node.rawnode.read_index(context)
        except ReadIndexDropped:
            self.stats.reads_dropped += 1
            return
        self.reads[op_id] = ReadOp(
            key=key,
            floor_key_index=self.key_floor.get(key, 0),
            floor_commit_index=self.max_acked_index,
        )
        node.pending_reads[context] = op_id

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        if entry.type is EntryType.CONF_CHANGE:
            self.stats.conf_changes_applied += 1
            change = ConfChange.decode(entry.data)
            if change.type is ConfChangeType.REMOVE_NODE:
                self.retired.add(change.node_id)
            return
        if not entry.data:
            return
        op_id = int(entry.data.split(b"|", 2)[1])
        op = self.writes.get(op_id)
        if op is None or op.acked_index is not None:
            return
        if op.node != node.id or op.incarnation != node.crash_count:
            return  # only the proposing incarnation can answer the client
        op.acked_index = entry.index
        self.stats.writes_acked += 1
        self.max_acked_index = max(self.max_acked_index, entry.index)
        self.key_floor[op.key] = max(self.key_floor.get(op.key, 0), entry.index)

    def serve_reads(self, node: SimNode) -> None:
        if not node.waiting_reads:
            return
        still_waiting = []
        for read_index, context in node.waiting_reads:
            if node.applied < read_index:
                still_waiting.append((read_index, context))
                continue
            op_id = node.pending_reads.pop(context, None)
            if op_id is not None:  # None: a duplicate answer to a served read
                self.check_read(node, op_id, read_index)
        node.waiting_reads = still_waiting

    def check_read(self, node: SimNode, op_id: int, read_index: Index) -> None:
        op = self.reads.pop(op_id)
        if read_index < op.floor_commit_index:
            raise InvariantViolation(
                f"stale ReadIndex: node {node.id} answered read r{op_id} with index "
                f"{read_index}, but index {op.floor_commit_index} was acknowledged before it began"
            )
        observed = node.kv.get(op.key)
        observed_index = observed.index if observed is not None else 0
        if observed_index < op.floor_key_index:
            raise InvariantViolation(
                f"stale read: node {node.id} read {op.key} from the write at {observed_index}, "
                f"but the write at {op.floor_key_index} completed before the read began"
            )
        self.key_floor[op.key] = max(self.key_floor.get(op.key, 0), observed_index)
        self.stats.reads_checked += 1

    # -- Liveness -----------------------------------------------------------------------

    def start_liveness_phase(self) -> None:
        self.trace("liveness phase: network healed, crashed nodes restart")
        self.network.heal()
        self.network.healed = True
        self.heal_at_tick = None
        for node in self.nodes.values():
            node.armed_crash = None
            if not node.alive:
                node.restart_at_tick = self.tick

    def liveness_reached(self) -> bool:
        leader = self.leader()
        if leader is None or leader.rawnode is None:
            return False
        if self.liveness_marker is None or self.tick - self.liveness_marker[1] > 4 * (
            self.options.election_ticks
        ):
            op_id = self.start_write(leader)
            if op_id is not None:
                self.liveness_marker = (op_id, self.tick)
            return False
        marker = self.writes.get(self.liveness_marker[0])
        if marker is None or marker.acked_index is None:
            return False
        members = leader.conf_state.voters | leader.conf_state.learners
        return all(
            member in self.nodes and self.nodes[member].applied >= marker.acked_index
            for member in members
        )

    def describe_node(self, node: SimNode) -> str:
        if node.rawnode is None:
            return f"node {node.id} down"
        status = node.rawnode.status()
        return (
            f"node {node.id} {status.state.value} term={status.term} lead={status.lead} "
            f"commit={status.commit} applied={node.applied} {status.conf_state.describe()}"
        )

    def finish(self) -> None:
        self.stats.messages_sent = self.network.sent_count
        self.stats.messages_dropped = self.network.dropped_count
        self.stats.invariant_checks = self.checker.checks
        for node in self.nodes.values():
            self.trace(self.describe_node(node))

    def trace_digest(self) -> str:
        digest = hashlib.sha256()
        for line in self.trace_lines:
            digest.update(line.encode())
            digest.update(b"\n")
        return digest.hexdigest()
