"""A seeded, in-memory network: drop, delay, duplication, reordering, partitions."""

from __future__ import annotations

import random
from collections.abc import Callable

from raftkv import limits
from raftkv.raft.messages import Message, MessageType, NodeId
from raftkv.sim.options import SimOptions


class SimNetwork:
    """Messages wait in per-step buckets; random delays reorder them."""

    def __init__(self, options: SimOptions, rng: random.Random) -> None:
        self.options = options
        self.rng = rng
        self.in_flight: dict[int, list[Message]] = {}
        self.in_flight_count = 0
        # Directed links that currently lose every message: (from, to).
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.healed = False  # liveness phase: no loss, no duplication
        self.sent_count = 0
        self.dropped_count = 0
        # Called when a snapshot message is lost, like a transport reporting failure.
        self.on_snapshot_lost: Callable[[Message], None] | None = None

    def send(self, message: Message, now_step: int) -> None:
        self.sent_count += 1
        if self._lost(message):
            self.dropped_count += 1
            if (
                message.type is MessageType.SNAP
                and self.on_snapshot_lost is not None
                and self.rng.random() < self.options.snapshot_failure_report_probability
            ):
                self.on_snapshot_lost(message)
            return
        self._schedule(message, now_step)
        if not self.healed and self.rng.random() < self.options.duplicate_probability:
            self._schedule(message, now_step)

    def _lost(self, message: Message) -> bool:
        if (message.frm, message.to) in self.blocked:
            return True
        if self.in_flight_count >= limits.SIM_MAX_MESSAGES_IN_FLIGHT:
            return True
        return not self.healed and self.rng.random() < self.options.drop_probability

    def _schedule(self, message: Message, now_step: int) -> None:
        if self.healed:
            delay = self.options.delay_min_steps
        else:
            delay = self.rng.randint(self.options.delay_min_steps, self.options.delay_max_steps)
        self.in_flight.setdefault(now_step + delay, []).append(message)
        self.in_flight_count += 1

    def due(self, now_step: int) -> list[Message]:
        messages = self.in_flight.pop(now_step, [])
        self.in_flight_count -= len(messages)
        return messages

    # -- Partitions -------------------------------------------------------------

    def partition(self, side_a: set[NodeId], side_b: set[NodeId], one_way: bool) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()
