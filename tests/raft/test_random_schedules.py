"""Random fault schedules: safety always, and liveness once the faults stop.

Each seed drives a cluster through a random mix of ticks, proposals (on any
node), partitions, crashes and restarts, log compaction, leadership
transfers, ReadIndex requests and membership changes, over a network that
also reorders and duplicates messages. The harness checks safety on every
Ready (commit monotonicity, State Machine Safety, Election Safety, Leader
Completeness). At the end the faults stop, and the cluster must elect a
leader and bring every member to the same applied state.

These run with the default configuration (pre-vote and check-quorum on).
Without both, a removed node that never learned of its removal can keep
deposing leaders (Raft thesis §4.2.3), so liveness is not asserted there.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    ProposalDropped,
    ReadIndexDropped,
)
from tests.raft.harness import Network

MAX_NODES = 7


class UnreliableNetwork(Network):
    """Delivers a random message from the queue first, and sometimes twice."""

    chaos: random.Random = random.Random(0)

    def deliver_one(self) -> None:
        if len(self.queue) > 1 and self.chaos.random() < 0.3:
            self.queue.rotate(-self.chaos.randrange(len(self.queue)))
        if self.chaos.random() < 0.05:
            self.queue.append(self.queue[0])
        super().deliver_one()


def random_conf_change(net: Network, leader: int, rng: random.Random) -> ConfChange | None:
    tracker = net.raft(leader).tracker
    roll = rng.random()
    if roll < 0.3:
        new_id = max(net.nodes) + 1
        if new_id > MAX_NODES:
            return None
        net.add_node(new_id)
        return ConfChange(ConfChangeType.ADD_LEARNER, new_id)
    if roll < 0.6 and tracker.learners:
        return ConfChange(ConfChangeType.ADD_NODE, rng.choice(sorted(tracker.learners)))
    if roll < 0.8:
        members = sorted(tracker.voters | tracker.learners)
        return ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(members))
    return ConfChange(ConfChangeType.ADD_LEARNER, rng.choice(sorted(tracker.voters)))


def run_schedule(seed: int, steps: int) -> Network:
    rng = random.Random(seed)
    size = rng.choice([3, 5])
    UnreliableNetwork.chaos = random.Random(seed)
    net = UnreliableNetwork.bootstrap(
        range(1, size + 1),
        seed=seed,
        max_inflight_msgs=rng.choice([1, 2, 256]),
        max_size_per_msg_bytes=rng.choice([1, 100, 1 << 20]),
    )
    proposals = 0
    for step in range(steps):
        alive = net.alive_ids()
        everyone = sorted(net.nodes)
        roll = rng.random()
        if roll < 0.35:
            net.tick_all(rng.randint(1, 5))
        elif roll < 0.55:
            proposals += 1
            with contextlib.suppress(ProposalDropped):
                net.propose(rng.choice(alive), f"v{proposals}".encode())
            if rng.random() < 0.7:
                net.stabilize()
        elif roll < 0.62:
            net.isolate(rng.choice(everyone))
        elif roll < 0.67:
            a, b = rng.sample(everyone, 2)
            net.cut(a, b)
        elif roll < 0.75:
            net.heal()
        elif roll < 0.79:
            if len(alive) > 1:
                net.crash(rng.choice(alive))
        elif roll < 0.85:
            crashed = [n for n in everyone if not net.node(n).alive]
            if crashed:
                net.restart(rng.choice(crashed))
        elif roll < 0.88:
            node = net.node(rng.choice(alive))
            if node.applied_index > node.storage.snapshot().metadata.index:
                net.compact(node.id)
        elif roll < 0.91:
            net.transfer_leader(rng.choice(alive), rng.choice(everyone))
        elif roll < 0.94:
            with contextlib.suppress(ReadIndexDropped):
                net.read_index(rng.choice(alive), f"r{step}".encode())
        elif roll < 0.97:
            leader = net.leader()
            change = random_conf_change(net, leader, rng) if leader is not None else None
            if leader is not None and change is not None:
                with contextlib.suppress(ProposalDropped):
                    net.propose_conf_change(leader, change)
        else:
            net.stabilize()
    return net


def settle(net: Network) -> int:
    """Stop all faults; return the leader once every member has applied the same state.

    A marker entry is proposed (again every few ticks: an uncommitted
    proposal may legitimately be lost when its leader is deposed) until the
    leader has applied it and every member has caught up with the leader.
    """
    net.heal()
    for node in sorted(net.nodes):
        if not net.node(node).alive:
            net.restart(node)
    ticks = 0

    def converged() -> bool:
        nonlocal ticks
        ticks += 1
        leader = net.leader()
        if leader is None:
            return False
        target = net.node(leader).applied_data()
        if b"final" not in target:
            if ticks % 20 == 1:
                with contextlib.suppress(ProposalDropped):  # e.g. a transfer is under way
                    net.propose(leader, b"final")
            return False
        tracker = net.raft(leader).tracker
        members = tracker.voters | tracker.learners
        return all(net.node(member).applied_data() == target for member in members)

    net.tick_until(converged, limit=400)
    leader = net.leader()
    assert leader is not None
    return leader


@pytest.mark.parametrize("seed", range(40))
def test_random_schedule_is_safe_and_recovers(seed: int) -> None:
    net = run_schedule(seed, steps=300)
    leader = settle(net)
    # Every member's log is the leader's log once settled.
    tracker = net.raft(leader).tracker
    for member in tracker.voters | tracker.learners:
        assert net.commit(member) == net.commit(leader)
