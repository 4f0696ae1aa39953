"""The nemesis: real faults on a seeded schedule.

Each round picks one fault kind from those asked for, injects it, holds it for a few
seconds, heals it, and lets the cluster settle briefly. Process faults are signals
(SIGKILL then a restart from the same data; SIGSTOP then SIGCONT); network faults are the
namespaces' routes and queues (verify/network.py). A membership change runs while another
fault is active: it replaces a member (remove, then add a new one on a fresh host).

Every fault is recorded with its start and end. The same seed gives the same sequence of
choices; what the cluster does in between (who is leader) is real, not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raftkv.client import Client
from raftkv.client.errors import ClientError
from raftkv.client.models import Member
from raftkv.verify.cluster import ProcessCluster
from raftkv.verify.records import FaultRecord

PROCESS_FAULTS = ("kill", "pause")
NETWORK_FAULTS = ("partition", "slow", "lossy")
ALL_FAULTS = (*PROCESS_FAULTS, *NETWORK_FAULTS, "membership")

HOLD_MIN_S = 2.0
HOLD_MAX_S = 7.0
SETTLE_MIN_S = 1.0
SETTLE_MAX_S = 3.0
SLOW_LINK_KBIT = 256
LOSS_PERCENTS = (5, 15, 30)
MEMBER_CALL_TIMEOUT_S = 5.0


Heal = Callable[[], Awaitable[None]]


class Network(Protocol):
    size: int  # hosts, including those of removed members

    def partition(self, groups: Sequence[Sequence[int]]) -> None: ...

    def drop(self, src: int, dst: int) -> None: ...

    def undrop(self, src: int, dst: int) -> None: ...

    def slow(self, index: int, rate_kbit: int) -> None: ...

    def lossy(self, index: int, loss_percent: float) -> None: ...

    def heal(self) -> None: ...


@dataclass
class Nemesis:
    cluster: ProcessCluster
    network: Network | None
    faults: Sequence[str]
    rng: random.Random
    origin_ns: int
    say: Callable[[str], None] = print
    on_members_changed: Callable[[], None] = lambda: None  # clients follow the new members
    records: list[FaultRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a fault that could not be injected
    _next_member: int = 0
    _replacement: tuple[str, str] | None = None  # (removed, new name) not yet added

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(ALL_FAULTS)
        assert not unknown, f"unknown faults {sorted(unknown)}"
        assert self.network is not None or not set(self.faults) & set(NETWORK_FAULTS)
        self._next_member = len(self.cluster.members) + 1
        self._kinds = [kind for kind in self.faults if kind != "membership"]
        self._round_kinds = [*self._kinds] + (["membership"] if "membership" in self.faults else [])

    def _now_s(self) -> float:
        return (time.monotonic_ns() - self.origin_ns) / 1e9

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds of faults until ``stop`` is set; every fault is healed when it returns."""
        if not self._round_kinds:  # a run without faults: a baseline
            await stop.wait()
            return
        while not stop.is_set():
            await _sleep_or_stop(stop, self.rng.uniform(SETTLE_MIN_S, SETTLE_MAX_S))
            if stop.is_set():
                break
            # A membership change runs alone or, more often, while another fault is on.
            kind = self.rng.choice(self._round_kinds)
            hold_s = self.rng.uniform(HOLD_MIN_S, HOLD_MAX_S)
            with_membership = "membership" in self.faults and (
                kind == "membership" or self.rng.random() < 0.4
            )
            try:
                await self._round(kind, hold_s, with_membership, stop)
            except Exception as error:  # a broken round must not end the schedule silently
                detail = "".join(traceback.format_exception(error)).strip()
                self.errors.append(f"{self._now_s():.1f}s {kind}: {error!r}")
                self.say(f"nemesis: round {kind} failed:\n{detail}")

    async def _round(
        self, kind: str, hold_s: float, with_membership: bool, stop: asyncio.Event
    ) -> None:
        start_s = self._now_s()
        try:
            heal, targets, detail = await self._inject(kind)
        except Exception as error:  # a fault that could not be set up is reported, not fatal
            self.errors.append(f"{start_s:.1f}s {kind}: {error!r}")
            self.say(f"nemesis: could not inject {kind}: {error!r}")
            return
        self.say(f"nemesis: {kind}: {detail} (for {hold_s:.1f}s)")
        try:
            if with_membership:
                # Half-way through, once an election the fault caused has had time to end.
                await _sleep_or_stop(stop, hold_s / 2)
                await self._replace_member(start_s)
                await _sleep_or_stop(stop, hold_s / 2)
            else:
                await _sleep_or_stop(stop, hold_s)
        finally:
            await heal()
            self.records.append(FaultRecord(kind, start_s, self._now_s(), targets, detail))
            self.say(f"nemesis: healed {kind}")

    async def _inject(self, kind: str) -> tuple[Heal, tuple[str, ...], str]:
        if kind == "kill":
            return await self._kill()
        if kind == "pause":
            return await self._pause()
        if kind == "partition":
            return await self._partition()
        if kind == "slow":
            return await self._slow()
        if kind == "lossy":
            return await self._lossy()
        assert kind == "membership", kind

        async def nothing() -> None:
            pass

        return nothing, (), "no other fault"

    # --- Process faults --------------------------------------------------------------------

    async def _pick(self, how: str) -> list[int]:
        """Member indexes: "one" random running member, the "leader", or a "majority"."""
        running = [i for i, m in enumerate(self.cluster.members) if m.is_running()]
        if how == "leader":
            leader = await asyncio.to_thread(self.cluster.leader_index)
            if leader is not None:
                return [leader]
            how = "one"
        if how == "majority":
            return self.rng.sample(running, len(running) // 2 + 1)
        return [self.rng.choice(running)]

    async def _kill(self) -> tuple[Heal, tuple[str, ...], str]:
        how = self.rng.choice(["one", "leader", "majority"])
        victims = await self._pick(how)
        for index in victims:
            self.cluster.kill(index)

        async def restart() -> None:
            for index in victims:
                self.cluster.start_again(index)

        names = self._names(victims)
        return restart, names, f"SIGKILL {how}: {', '.join(names)}"

    async def _pause(self) -> tuple[Heal, tuple[str, ...], str]:
        how = self.rng.choice(["one", "leader"])
        victims = await self._pick(how)
        for index in victims:
            self.cluster.pause(index)

        async def resume() -> None:
            for index in victims:
                self.cluster.resume(index)

        names = self._names(victims)
        return resume, names, f"SIGSTOP {how}: {', '.join(names)}"

    # --- Network faults --------------------------------------------------------------------

    def _hosts(self) -> list[int]:
        return [m.host_index for m in self.cluster.members if m.is_running()]

    async def _heal_network(self) -> None:
        assert self.network is not None
        await asyncio.to_thread(self.network.heal)

    async def _partition(self) -> tuple[Heal, tuple[str, ...], str]:
        assert self.network is not None
        network = self.network
        hosts = self._hosts()
        shape = self.rng.choice(["leader", "split", "bridge", "one-way"])
        if shape == "leader":
            leader = (await self._pick("leader"))[0]
            isolated = self.cluster.members[leader].host_index
            rest = [h for h in hosts if h != isolated]
            await asyncio.to_thread(network.partition, self._groups([[isolated], rest]))
            detail = f"leader {self._host_name(isolated)} isolated"
            targets: tuple[str, ...] = (self._host_name(isolated),)
        elif shape == "split":
            shuffled = self.rng.sample(hosts, len(hosts))
            minority = shuffled[: (len(hosts) - 1) // 2] or shuffled[:1]
            majority = [h for h in hosts if h not in minority]
            await asyncio.to_thread(network.partition, self._groups([minority, majority]))
            targets = tuple(self._host_name(h) for h in minority)
            detail = f"minority {{{', '.join(targets)}}} split from the majority"
        elif shape == "bridge":
            # Two halves that cannot talk, and one host (the bridge) that talks to both.
            shuffled = self.rng.sample(hosts, len(hosts))
            bridge, rest = shuffled[0], shuffled[1:]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
            pairs = [(a, b) for a in left for b in right] + [(b, a) for a in left for b in right]
            await asyncio.to_thread(_drop_all, network, pairs)
            targets = (self._host_name(bridge),)
            detail = (
                f"bridge {self._host_name(bridge)} between {self._names_of_hosts(left)} "
                f"and {self._names_of_hosts(right)}"
            )
        else:
            src, dst = self.rng.sample(hosts, 2)
            await asyncio.to_thread(network.drop, src, dst)
            targets = (self._host_name(src), self._host_name(dst))
            detail = f"{self._host_name(src)} -> {self._host_name(dst)} dropped"
        return self._heal_network, targets, f"{shape}: {detail}"

    def _groups(self, groups: list[list[int]]) -> list[list[int]]:
        """The partition's groups, plus a group of its own for every host not in one (the
        hosts of removed or stopped members)."""
        assert self.network is not None
        grouped = {host for group in groups for host in group}
        return groups + [[h] for h in range(self.network.size) if h not in grouped]

    async def _slow(self) -> tuple[Heal, tuple[str, ...], str]:
        assert self.network is not None
        hosts = self.rng.sample(self._hosts(), self.rng.randint(1, 2))
        for host in hosts:
            await asyncio.to_thread(self.network.slow, host, SLOW_LINK_KBIT)
        names = tuple(self._host_name(h) for h in hosts)
        return (
            self._heal_network,
            names,
            f"links from {', '.join(names)} at {SLOW_LINK_KBIT} kbit/s",
        )

    async def _lossy(self) -> tuple[Heal, tuple[str, ...], str]:
        """A random share of the packets one or two hosts send to the others is lost."""
        assert self.network is not None
        hosts = self.rng.sample(self._hosts(), self.rng.randint(1, 2))
        loss_percent = self.rng.choice(LOSS_PERCENTS)
        for host in hosts:
            await asyncio.to_thread(self.network.lossy, host, loss_percent)
        names = tuple(self._host_name(h) for h in hosts)
        detail = f"{loss_percent}% of packets from {', '.join(names)} lost"
        return self._heal_network, names, detail

    # --- Membership ------------------------------------------------------------------------

    async def _replace_member(self, start_s: float) -> None:
        """Remove one running non-leader member, then add a new one in its place.

        Either step may fail or time out under faults; a remove that timed out may still
        have happened. So each change starts from the cluster's own member list, and a
        member removed but not yet replaced is replaced before anything else."""
        endpoints = self.cluster.endpoints()
        if not endpoints:
            self.say("nemesis: membership: no member is running")
            return
        try:
            async with Client(endpoints, timeout_s=MEMBER_CALL_TIMEOUT_S) as client:
                await self._reconcile(client)
                if self._replacement is None:
                    removed = await self._remove_one(client)
                    if removed is None:
                        return
                removed, name = self._replacement or ("?", "?")
                await self._add(client, name)
        except (ClientError, TimeoutError) as error:
            self.errors.append(f"{start_s:.1f}s membership: {type(error).__name__}: {error}")
            self.say(f"nemesis: membership change failed: {type(error).__name__}: {error}")
            return
        self._replacement = None
        detail = f"replaced {removed} by {name}"
        self.say(f"nemesis: membership: {detail}")
        self.records.append(
            FaultRecord("membership", start_s, self._now_s(), (removed, name), detail)
        )

    async def _reconcile(self, client: Client) -> None:
        """Stop every member process the cluster no longer lists (an ambiguous remove)."""
        members = await self._members(client)
        listed = {url for member in members for url in member.peer_urls}
        for index, process in enumerate(self.cluster.members):
            if process.removed or process.peer_url in listed:
                continue
            self._retire(index)

    @staticmethod
    async def _members(client: Client) -> tuple[Member, ...]:
        # Linearizable: a lagging member's list could miss a member just added.
        return await asyncio.wait_for(client.member_list(linearizable=True), MEMBER_CALL_TIMEOUT_S)

    def _retire(self, index: int) -> None:
        self.cluster.retire(index)
        self.on_members_changed()
        if self._replacement is None:
            self._replacement = (self.cluster.members[index].name, f"m{self._next_member}")
            self._next_member += 1

    async def _remove_one(self, client: Client) -> str | None:
        leader = await asyncio.to_thread(self.cluster.leader_index)
        candidates = [
            i
            for i, m in enumerate(self.cluster.members)
            if m.is_running() and not m.paused and i != leader
        ]
        if leader is None or not candidates:
            self.say("nemesis: membership: no leader, or no member to replace")
            return None
        victim = self.rng.choice(candidates)
        members = await self._members(client)
        url = self.cluster.members[victim].peer_url
        victim_id = next(m.id for m in members if url in m.peer_urls)
        await asyncio.wait_for(client.member_remove(victim_id), 2 * MEMBER_CALL_TIMEOUT_S)
        self._retire(victim)
        return self.cluster.members[victim].name

    async def _add(self, client: Client, name: str) -> None:
        """Add ``name`` unless an earlier, ambiguous attempt did, then start it."""
        planned = await asyncio.to_thread(self.cluster.plan_member, name)
        members = await self._members(client)
        if not any(planned.peer_url in m.peer_urls for m in members):
            added = await asyncio.wait_for(
                client.member_add([planned.peer_url]), 2 * MEMBER_CALL_TIMEOUT_S
            )
            members = added.members
        initial = {(m.name or name): m.peer_urls[0] for m in members}
        self.cluster.add_member_process(name, initial, state="existing")
        self.on_members_changed()

    # --- Names -----------------------------------------------------------------------------

    def _names(self, indexes: Sequence[int]) -> tuple[str, ...]:
        return tuple(self.cluster.members[i].name for i in indexes)

    def _host_name(self, host: int) -> str:
        return next(m.name for m in self.cluster.members if m.host_index == host)

    def _names_of_hosts(self, hosts: Sequence[int]) -> str:
        return "{" + ", ".join(self._host_name(h) for h in hosts) + "}"


def _drop_all(network: Network, pairs: Sequence[tuple[int, int]]) -> None:
    for src, dst in pairs:
        network.drop(src, dst)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
