"""Swarm options: every fault parameter of a run is derived from its seed.

Like TigerBeetle's VOPR, each seed picks a different "world" (cluster size,
timing, network quality, fault rates), so many seeds explore many worlds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftkv import limits

STEPS_PER_TICK = 10
"""Simulated time advances in steps; a node ticks about every STEPS_PER_TICK steps."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    seed: int
    node_count: int  # initial voters; more may join through membership changes
    max_node_count: int
    safety_ticks: int
    liveness_ticks: int
    election_ticks: int
    heartbeat_ticks: int
    pre_vote: bool
    check_quorum: bool
    max_inflight_msgs: int
    max_size_per_msg_bytes: int
    max_uncommitted_entries_bytes: int
    # Network.
    drop_probability: float
    duplicate_probability: float
    delay_min_steps: int
    delay_max_steps: int
    snapshot_failure_report_probability: float
    # Faults, per tick.
    partition_probability: float
    partition_ticks_max: int
    crash_probability: float
    crash_mid_ready_probability: float
    restart_ticks_max: int
    leader_fault_probability: float  # crash or isolate the current leader (churn)
    conf_change_probability: float
    transfer_probability: float
    # Clocks: each node ticks every STEPS_PER_TICK +/- drift steps.
    clock_drift_steps_max: int
    # Workload, per step.
    write_probability: float
    read_probability: float
    keys: int
    # Log compaction.
    compact_threshold_entries: int

    @staticmethod
    def from_seed(seed: int, nodes: int | None = None, ticks: int | None = None) -> SimOptions:
        rng = random.Random(seed)
        node_count = nodes if nodes is not None else rng.choice([1, 2, 3, 3, 3, 4, 5, 5, 6, 7])
        assert 1 <= node_count <= limits.SIM_MAX_NODES, node_count
        if ticks is not None and not 1 <= ticks <= limits.SIM_MAX_TICKS:
            raise ValueError(f"ticks must be in 1..{limits.SIM_MAX_TICKS}, got {ticks}")
        election_ticks = rng.randint(5, 20)
        delay_min_steps = rng.randint(1, 5)
        return SimOptions(
            seed=seed,
            node_count=node_count,
            max_node_count=limits.SIM_MAX_NODES,
            safety_ticks=ticks if ticks is not None else rng.randint(150, 600),
            # Enough to elect a leader and drain the backlog at the slowest
            # flow-control settings (one small message in flight).
            liveness_ticks=100 * election_ticks,
            election_ticks=election_ticks,
            heartbeat_ticks=rng.randint(1, max(1, election_ticks // 4)),
            pre_vote=rng.random() < 0.85,
            check_quorum=rng.random() < 0.85,
            max_inflight_msgs=rng.choice([1, 2, 4, 64, 256]),
            max_size_per_msg_bytes=rng.choice([64, 512, 4096, limits.RAFT_MAX_SIZE_PER_MSG_BYTES]),
            max_uncommitted_entries_bytes=rng.choice([512, 4096, 1 << 20]),
            drop_probability=rng.choice([0.0, 0.01, 0.05, 0.1, 0.2]),
            duplicate_probability=rng.choice([0.0, 0.01, 0.05]),
            delay_min_steps=delay_min_steps,
            delay_max_steps=delay_min_steps + rng.choice([0, 5, 15, 40]),
            snapshot_failure_report_probability=rng.choice([0.0, 0.5, 1.0]),
            partition_probability=rng.choice([0.0, 0.005, 0.02, 0.05]),
            partition_ticks_max=rng.randint(5, 80),
            crash_probability=rng.choice([0.0, 0.002, 0.01, 0.03]),
            crash_mid_ready_probability=rng.choice([0.0, 0.5, 0.9]),
            restart_ticks_max=rng.randint(1, 60),
            leader_fault_probability=rng.choice([0.0, 0.0, 0.02, 0.05, 0.1]),
            conf_change_probability=rng.choice([0.0, 0.0, 0.01, 0.03]),
            transfer_probability=rng.choice([0.0, 0.002, 0.01]),
            clock_drift_steps_max=rng.choice([0, 1, 3]),
            write_probability=rng.choice([0.02, 0.05, 0.2]),
            read_probability=rng.choice([0.0, 0.02, 0.1]),
            keys=rng.randint(1, 6),
            compact_threshold_entries=rng.choice([5, 20, 100, 1 << 30]),
        )

    def describe(self) -> str:
        return (
            f"seed={self.seed} nodes={self.node_count} ticks={self.safety_ticks} "
            f"election={self.election_ticks} heartbeat={self.heartbeat_ticks} "
            f"pre_vote={self.pre_vote} check_quorum={self.check_quorum} "
            f"drop={self.drop_probability} dup={self.duplicate_probability} "
            f"delay={self.delay_min_steps}..{self.delay_max_steps} "
            f"partition={self.partition_probability} crash={self.crash_probability} "
            f"leader_fault={self.leader_fault_probability} "
            f"conf_change={self.conf_change_probability} transfer={self.transfer_probability} "
            f"compact={self.compact_threshold_entries} inflight={self.max_inflight_msgs}"
        )
