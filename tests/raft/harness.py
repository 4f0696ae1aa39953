"""An in-memory network of RawNodes: the vocabulary of the Raft core tests.

Each node owns a ``MemoryStorage`` (what it has persisted), a ``RawNode`` (its
volatile Raft state) and a toy state machine: the list of (index, data) of
the non-empty normal entries it applied. Readies are handled exactly as the
contract at the top of ``raftkv.raft.rawnode`` says:

  1. persist snapshot, entries, hard state into the node's MemoryStorage;
  2. put ``messages`` on the wire;
  3. put ``persisted_messages`` on the wire;
  4. apply the snapshot and committed entries (conf changes through
     ``RawNode.apply_conf_change``), collect read states;
  5. ``advance``.

Messages travel through one FIFO queue. Filters decide at delivery time
whether a message is lost (``cut``, ``isolate``, ``drop``, ``ignore``).
``tick`` and ``tick_all`` let every message settle after each tick, so time
is slow compared to the network unless a test says otherwise.

The harness checks safety properties on every Ready and fails the test at
the first violation:
  * a node's commit index never decreases (in memory and as persisted);
  * entries are applied in order, without gaps or repeats;
  * State Machine Safety (Raft §5.4.3): no two nodes ever apply different
    entries at the same index, even across crashes;
  * Election Safety (Raft §5.2): at most one leader per term;
  * Leader Completeness (Raft §5.4): a node that becomes leader holds every
    entry that was applied anywhere while the applier was in an older term.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from raftkv.raft import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RawNode,
    ReadState,
    Snapshot,
    StateType,
    StepPeerNotFound,
    bootstrap_storage,
)
from raftkv.raft.messages import HardState, NodeId
from raftkv.raft.raft import Raft
from raftkv.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM

Filter = Callable[[Message], bool]
"""A predicate over a message in flight; True means the message is lost."""


# -- The toy state machine ---------------------------------------------------


def encode_state(state: list[tuple[int, bytes]]) -> bytes:
    return json.dumps([[index, data.hex()] for index, data in state]).encode()


def decode_state(data: bytes) -> list[tuple[int, bytes]]:
    if not data:
        return []
    return [(index, bytes.fromhex(hex_data)) for index, hex_data in json.loads(data)]


# -- One node ----------------------------------------------------------------


@dataclass
class Node:
    id: NodeId
    storage: MemoryStorage
    config: RaftConfig
    rawnode: RawNode | None = None  # None while crashed
    # The state machine: (index, data) of every applied non-empty normal entry.
    state: list[tuple[int, bytes]] = field(default_factory=list)
    applied_index: int = 0
    # (index, configuration) each time the configuration changed by applying.
    conf_history: list[tuple[int, ConfState]] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    snapshots_received: list[Snapshot] = field(default_factory=list)
    # Every commit index this node reported in a Ready's hard state.
    commit_history: list[int] = field(default_factory=list)
    # The highest in-memory commit index seen since the node last started.
    running_commit: int = 0
    crashes: int = 0

    @property
    def alive(self) -> bool:
        return self.rawnode is not None

    @property
    def raft(self) -> Raft:
        assert self.rawnode is not None, f"node {self.id} is crashed"
        return self.rawnode.raft

    def applied_data(self) -> list[bytes]:
        return [data for _, data in self.state]

    def conf_state_at(self, index: int) -> ConfState:
        candidates = [conf for at, conf in self.conf_history if at <= index]
        assert candidates, f"no known configuration at index {index} on node {self.id}"
        return candidates[-1]

    def reset_state_machine_from_storage(self) -> None:
        """What a restarted process does: load the latest snapshot into the state machine."""
        snapshot = self.storage.snapshot()
        meta = snapshot.metadata
        self.state = decode_state(snapshot.data)
        self.applied_index = meta.index
        self.conf_history = [(meta.index, meta.conf_state)] if meta.index else []


# -- The network -------------------------------------------------------------


class Network:
    """A set of nodes, a FIFO wire between them, and filters that lose messages."""

    def __init__(
        self,
        storages: dict[NodeId, MemoryStorage],
        *,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        seed: int = 0,
        **config_overrides: Any,
    ) -> None:
        self.config_template: dict[str, Any] = dict(
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            **config_overrides,
        )
        self.seed = seed
        self.nodes: dict[NodeId, Node] = {}
        self.queue: deque[Message] = deque()
        self.filters: list[Filter] = []
        self.sent: list[Message] = []  # every message any node put on the wire
        self.delivered: list[Message] = []
        self.lost: list[Message] = []
        # State Machine Safety: index -> the (term, type, data) applied there.
        self.applied_everywhere: dict[int, tuple[int, EntryType, bytes]] = {}
        # index -> the lowest term any node was in when it applied that index.
        # The entry was committed in that term or earlier.
        self.applied_in_term: dict[int, int] = {}
        # Election Safety: term -> the node that led it.
        self.leader_of_term: dict[int, NodeId] = {}
        for node_id, storage in sorted(storages.items()):
            self._add(node_id, storage)

    @classmethod
    def bootstrap(
        cls,
        ids: Iterable[NodeId],
        *,
        learners: Iterable[NodeId] = (),
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        seed: int = 0,
        **config_overrides: Any,
    ) -> Network:
        """A new cluster: every member's storage starts from the same bootstrap snapshot."""
        voters = frozenset(ids)
        learner_set = frozenset(learners)
        conf_state = ConfState(voters=voters, learners=learner_set)
        storages = {}
        for node_id in voters | learner_set:
            storage = MemoryStorage()
            bootstrap_storage(storage, conf_state)
            storages[node_id] = storage
        return cls(
            storages,
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            seed=seed,
            **config_overrides,
        )

    @classmethod
    def with_logs(
        cls,
        logs: dict[NodeId, list[int]],
        *,
        term: int,
        **kwargs: Any,
    ) -> Network:
        """A cluster whose members already hold the given logs (term of each entry).

        ``logs[n][0]`` is the term at index 1, which must be the bootstrap
        entry (term 1); the others become normal entries at index 2, 3, ...
        whose data names their term and index. Every node's hard state is
        ``term`` with no vote, and only the bootstrap entry is known committed.
        """
        conf_state = ConfState(voters=frozenset(logs))
        storages = {}
        for node_id, terms in logs.items():
            assert terms[0] == BOOTSTRAP_TERM, "index 1 is the bootstrap entry"
            storage = MemoryStorage()
            bootstrap_storage(storage, conf_state)
            storage.append(
                [
                    Entry(term=t, index=index, data=f"{t}/{index}".encode())
                    for index, t in enumerate(terms[1:], start=BOOTSTRAP_INDEX + 1)
                ]
            )
            storage.set_hard_state(HardState(term=term, commit=BOOTSTRAP_INDEX))
            storages[node_id] = storage
        return cls(storages, **kwargs)

    # -- Membership of the harness ------------------------------------------

    def _config(self, node_id: NodeId) -> RaftConfig:
        rng = random.Random(self.seed * 1000 + node_id)
        return RaftConfig(id=node_id, rng=rng, **self.config_template)

    def _add(self, node_id: NodeId, storage: MemoryStorage) -> Node:
        assert node_id not in self.nodes, f"node {node_id} exists"
        node = Node(id=node_id, storage=storage, config=self._config(node_id))
        node.reset_state_machine_from_storage()
        node.rawnode = RawNode(node.config, storage)
        node.commit_history.append(storage.hard_state.commit)
        node.running_commit = node.rawnode.raft.log.committed
        self.nodes[node_id] = node
        return node

    def add_node(self, node_id: NodeId) -> Node:
        """A new process with empty storage; it learns everything from a leader's snapshot.

        This only starts the process: it joins the cluster once a conf change
        that adds it is committed.
        """
        return self._add(node_id, MemoryStorage())

    def crash(self, node_id: NodeId) -> None:
        """Stop a node: its volatile state is gone, its storage survives.

        Messages it sent that are still in flight, and messages to it, are lost.
        """
        node = self.nodes[node_id]
        assert node.alive, f"node {node_id} is already crashed"
        node.rawnode = None
        node.crashes += 1
        kept = deque(m for m in self.queue if m.to != node_id and m.frm != node_id)
        self.lost.extend(m for m in self.queue if m.to == node_id or m.frm == node_id)
        self.queue = kept

    def restart(self, node_id: NodeId) -> None:
        """Start a crashed node again from what its MemoryStorage holds."""
        node = self.nodes[node_id]
        assert not node.alive, f"node {node_id} is running"
        node.reset_state_machine_from_storage()
        node.read_states = []
        node.rawnode = RawNode(node.config, node.storage)
        assert node.rawnode.raft.log.committed >= node.commit_history[-1], (
            f"node {node_id} restarted with commit {node.rawnode.raft.log.committed} "
            f"below its persisted commit {node.commit_history[-1]}"
        )
        node.running_commit = node.rawnode.raft.log.committed

    # -- Accessors ----------------------------------------------------------

    def node(self, node_id: NodeId) -> Node:
        return self.nodes[node_id]

    def rawnode(self, node_id: NodeId) -> RawNode:
        rawnode = self.nodes[node_id].rawnode
        assert rawnode is not None, f"node {node_id} is crashed"
        return rawnode

    def raft(self, node_id: NodeId) -> Raft:
        return self.nodes[node_id].raft

    def alive_ids(self) -> list[NodeId]:
        return [node_id for node_id, node in sorted(self.nodes.items()) if node.alive]

    def leader(self) -> NodeId | None:
        """The running leader with the highest term (a stale leader may linger)."""
        leaders = [
            (self.raft(node_id).term, node_id)
            for node_id in self.alive_ids()
            if self.raft(node_id).state is StateType.LEADER
        ]
        return max(leaders)[1] if leaders else None

    def state(self, node_id: NodeId) -> StateType:
        return self.raft(node_id).state

    def term(self, node_id: NodeId) -> int:
        return self.raft(node_id).term

    def commit(self, node_id: NodeId) -> int:
        return self.raft(node_id).log.committed

    def log(self, node_id: NodeId) -> list[tuple[int, int]]:
        """(index, term) of every entry in the node's *persisted* log, snapshot entry first."""
        storage = self.nodes[node_id].storage
        first = storage.first_index() - 1
        return [(index, storage.term(index)) for index in range(first, storage.last_index() + 1)]

    def log_entries(self, node_id: NodeId) -> list[Entry]:
        """The node's persisted entries after its snapshot."""
        storage = self.nodes[node_id].storage
        first, last = storage.first_index(), storage.last_index()
        if first > last:
            return []
        return storage.entries(first, last + 1, 1 << 62)

    def messages(
        self,
        *,
        frm: NodeId | None = None,
        to: NodeId | None = None,
        type: MessageType | None = None,
        since: int = 0,
    ) -> list[Message]:
        """Messages put on the wire (``since`` is a position in ``sent``)."""
        return [m for m in self.sent[since:] if _matches(m, frm, to, type)]

    # -- Client requests ----------------------------------------------------

    def campaign(self, node_id: NodeId) -> None:
        """Make the node start an election now; nothing is delivered yet."""
        self.rawnode(node_id).campaign()

    def elect(self, node_id: NodeId) -> None:
        """Campaign and let the election settle; the node must win."""
        self.campaign(node_id)
        self.stabilize()
        assert self.state(node_id) is StateType.LEADER, f"node {node_id} did not win"

    def propose(self, node_id: NodeId, data: bytes) -> None:
        self.rawnode(node_id).propose(data)

    def propose_conf_change(self, node_id: NodeId, change: ConfChange) -> None:
        self.rawnode(node_id).propose_conf_change(change)

    def read_index(self, node_id: NodeId, context: bytes) -> None:
        self.rawnode(node_id).read_index(context)

    def transfer_leader(self, node_id: NodeId, transferee: NodeId) -> None:
        self.rawnode(node_id).transfer_leader(transferee)

    def compact(self, node_id: NodeId, index: int | None = None) -> Snapshot:
        """Snapshot the node's state machine at ``index`` (default: applied) and compact."""
        node = self.nodes[node_id]
        if index is None:
            index = node.applied_index
        assert index <= node.applied_index, "can only snapshot applied state"
        data = encode_state([(i, d) for i, d in node.state if i <= index])
        snapshot = node.storage.create_snapshot(index, node.conf_state_at(index), data)
        node.storage.compact(index)
        return snapshot

    # -- Time ---------------------------------------------------------------

    def tick(self, node_id: NodeId, n: int = 1, *, settle: bool = True) -> None:
        for _ in range(n):
            self.rawnode(node_id).tick()
            if settle:
                self.stabilize()

    def tick_all(self, n: int = 1, *, settle: bool = True) -> None:
        for _ in range(n):
            for node_id in self.alive_ids():
                self.rawnode(node_id).tick()
            if settle:
                self.stabilize()

    def tick_until(
        self, condition: Callable[[], bool], *, limit: int, nodes: Iterable[NodeId] | None = None
    ) -> int:
        """Tick (all running nodes, or ``nodes``) until condition holds; return the ticks used."""
        chosen = list(nodes) if nodes is not None else None
        for ticks in range(limit + 1):
            if condition():
                return ticks
            for node_id in chosen if chosen is not None else self.alive_ids():
                self.rawnode(node_id).tick()
            self.stabilize()
        raise AssertionError(f"condition not reached within {limit} ticks")

    # -- Faults -------------------------------------------------------------

    def add_filter(self, predicate: Filter) -> Filter:
        self.filters.append(predicate)
        return predicate

    def remove_filter(self, predicate: Filter) -> None:
        self.filters.remove(predicate)

    def drop(
        self,
        frm: NodeId | None = None,
        to: NodeId | None = None,
        type: MessageType | None = None,
    ) -> Filter:
        """Lose every message matching (from, to, type); None matches anything."""
        return self.add_filter(lambda m: _matches(m, frm, to, type))

    def ignore(self, type: MessageType) -> Filter:
        """Lose every message of this type."""
        return self.drop(type=type)

    def cut(self, a: NodeId, b: NodeId) -> None:
        """Lose messages between a and b in both directions."""
        self.drop(frm=a, to=b)
        self.drop(frm=b, to=a)

    def isolate(self, node_id: NodeId) -> None:
        """Lose every message to or from node_id (including to nodes added later)."""
        self.drop(frm=node_id)
        self.drop(to=node_id)

    def heal(self) -> None:
        """Remove every filter."""
        self.filters.clear()

    # -- Driving the nodes ----------------------------------------------------

    def stabilize(self, max_steps: int = 100_000) -> None:
        """Handle Readies and deliver messages until nothing is left to do."""
        for _ in range(max_steps):
            progressed = False
            for node_id in self.alive_ids():
                while self.process_ready(node_id):
                    progressed = True
            if self.queue:
                self.deliver_one()
            elif not progressed:
                return
        raise AssertionError(f"network did not settle within {max_steps} steps")

    def deliver_one(self) -> None:
        message = self.queue.popleft()
        target = self.nodes.get(message.to)
        if target is None or not target.alive or any(f(message) for f in self.filters):
            self.lost.append(message)
            return
        self.delivered.append(message)
        # A response from a node that left the configuration is refused; fine.
        with contextlib.suppress(StepPeerNotFound):
            self.rawnode(message.to).step(message)
        self._check_running_invariants(target)

    def process_ready(self, node_id: NodeId) -> bool:
        """Handle one Ready of node_id by the contract; False if it had none."""
        node = self.nodes[node_id]
        rawnode = node.rawnode
        if rawnode is None or not rawnode.has_ready():
            return False
        ready = rawnode.ready()
        storage = node.storage

        # 1. Persist: snapshot, then entries, then hard state.
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            assert ready.hard_state.commit >= node.commit_history[-1], (
                f"node {node_id} commit went back: {node.commit_history[-1]} -> "
                f"{ready.hard_state.commit}"
            )
            storage.set_hard_state(ready.hard_state)
            node.commit_history.append(ready.hard_state.commit)

        # 2 and 3. Send.
        for message in [*ready.messages, *ready.persisted_messages]:
            assert message.frm == node_id or message.type is MessageType.TRANSFER_LEADER, message
            self.sent.append(message)
            self.queue.append(message)

        # 4. Apply.
        if ready.snapshot is not None:
            node.snapshots_received.append(ready.snapshot)
            meta = ready.snapshot.metadata
            node.state = decode_state(ready.snapshot.data)
            node.applied_index = meta.index
            node.conf_history.append((meta.index, meta.conf_state))
        for entry in ready.committed_entries:
            self._apply(node, rawnode, entry)
        node.read_states.extend(ready.read_states)
        if ready.soft_state is not None and ready.soft_state.state is StateType.LEADER:
            self._record_leader(node_id, rawnode.raft.term)
            self._check_leader_completeness(node)

        # 5. Advance.
        rawnode.advance(ready)
        self._check_running_invariants(node)
        return True

    def _apply(self, node: Node, rawnode: RawNode, entry: Entry) -> None:
        assert entry.index == node.applied_index + 1, (
            f"node {node.id} applies {entry.index} after {node.applied_index}"
        )
        fingerprint = (entry.term, entry.type, entry.data)
        seen = self.applied_everywhere.setdefault(entry.index, fingerprint)
        assert seen == fingerprint, (
            f"State Machine Safety violated at index {entry.index}: node {node.id} "
            f"applies {fingerprint}, another node applied {seen}"
        )
        term_now = rawnode.raft.term
        self.applied_in_term[entry.index] = min(
            self.applied_in_term.get(entry.index, term_now), term_now
        )
        node.applied_index = entry.index
        if entry.type is EntryType.CONF_CHANGE:
            conf_state = rawnode.apply_conf_change(ConfChange.decode(entry.data))
            node.conf_history.append((entry.index, conf_state))
        elif entry.data:
            node.state.append((entry.index, entry.data))

    def _record_leader(self, node_id: NodeId, term: int) -> None:
        leader = self.leader_of_term.setdefault(term, node_id)
        assert leader == node_id, f"two leaders in term {term}: {leader} and {node_id}"

    def _check_leader_completeness(self, node: Node) -> None:
        log = node.raft.log
        term = node.raft.term
        for index, (entry_term, _, _) in self.applied_everywhere.items():
            if self.applied_in_term[index] >= term or index < log.first_index():
                continue
            assert log.match_term(index, entry_term), (
                f"Leader Completeness violated: leader {node.id} of term {term} lacks "
                f"committed entry {entry_term}/{index}"
            )

    def _check_running_invariants(self, node: Node) -> None:
        raft = node.raft
        assert raft.log.committed >= max(node.running_commit, node.commit_history[-1]), (
            f"node {node.id} commit went back to {raft.log.committed} (had "
            f"{node.running_commit} in memory, {node.commit_history[-1]} persisted)"
        )
        node.running_commit = raft.log.committed
        if raft.state is StateType.LEADER:
            self._record_leader(node.id, raft.term)


def _matches(
    message: Message, frm: NodeId | None, to: NodeId | None, type: MessageType | None
) -> bool:
    return (
        (frm is None or message.frm == frm)
        and (to is None or message.to == to)
        and (type is None or message.type is type)
    )
