"""Real network faults between server processes, with Linux network namespaces.

One ``NetnsNetwork`` is the network of one verify run::

    root namespace (the runner and its clients)
        veth "<run>", address .254/24
            |
    namespace "<run>-hub": bridge br0 (port "uplink" to the root side, port "h<i>" per host)
            |
    namespace "<run>-h<i>": veth "eth0", address .<i+1>/24, and lo

where ``<run>`` is ``NAMESPACE_PREFIX`` plus a short run tag, and the /24 is a free
10.X.Y.0/24. Servers run inside their host's namespace (``command_prefix``); clients in the
root namespace connect to ``host_address(i)`` directly.

Faults only touch node-to-node traffic, never the runner's: as in Jepsen, the control node
always reaches every node.

- ``drop(src, dst)``: a permanent neighbour (ARP) entry in src's namespace maps dst's address
  to the hub bridge's own MAC. The bridge hands such frames to the hub's IP stack, which has
  no address and does not forward, so they vanish: senders see timeouts, as on a real
  partition. (A blackhole route would instead fail ``connect()`` at once with EINVAL.)
  Established connections are cut too, since they resolve through the same entry.
- ``slow(i, rate)``: an htb qdisc on host i's eth0 sends its traffic to other hosts through
  a class limited to the rate; traffic to the root side goes through an unlimited class.
- ``lossy(i, percent)``: at the hub port towards every other host, a classic BPF filter
  picks packets from host i at random and classifies them into an htb class whose queue
  holds zero bytes. They are lost in the network, so the sender cannot tell, as on a real
  lossy wire. (netem is not available on every kernel; cls_bpf and htb are.)

Every ``ip``/``tc`` call goes through ``_run``, which raises ``NetworkCommandError`` with
the command, its batch input and stderr. The network tracks what it added, so ``heal``
removes exactly that with one call per touched namespace.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import os
import random
import re
import shutil
import subprocess
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from raftkv.limits import (
    NETWORK_COMMAND_TIMEOUT_MS,
    NETWORK_HTB_QUANTUM_BYTES,
    NETWORK_MAX_HOSTS,
    NETWORK_PICK_ATTEMPTS,
    NETWORK_RUN_TAG_MAX_CHARS,
    NETWORK_SLOW_QUEUE_PACKETS,
    NETWORK_UNLIMITED_RATE_GBIT,
)

NAMESPACE_PREFIX = "raftkv-"
# Pid files of live runs ("<run>.pid") and the lock that serialises picking tags and subnets.
STATE_DIR = Path("/run/raftkv-verify")
MAX_INTERFACE_NAME_CHARS = 15  # Linux IFNAMSIZ minus the terminating NUL
DEFAULT_RUN_TAG_CHARS = 5

HOST_INTERFACE = "eth0"
BRIDGE = "br0"
UPLINK_PORT = "uplink"
# The hub bridge's own (locally administered) MAC: frames sent to it reach the hub's IP
# stack, which drops them. Each run has its own bridge, so one value serves every run.
SINK_MAC = "02:72:6b:76:00:01"
ROOT_HOST_OCTET = 254
SUBNET_PREFIX_LENGTH = 24
# 10.64.0.0 - 10.254.255.0: clear of the low 10.x nets most setups use.
SUBNET_SECOND_OCTETS = range(64, 255)
# A route this wide or wider (a VPN's 10.0.0.0/8) is overridden by our more specific one.
SUBNET_IGNORED_ROUTE_PREFIX_LENGTH = 8
RANDOM_TAG_ALPHABET = "0123456789abcdef"

# htb handles: the root qdisc 1:, its default (unshaped) class, the slow and the drop class.
HTB_ROOT = "1:"
HTB_UNSHAPED_MINOR = 10
HTB_UNSHAPED_CLASS = f"1:{HTB_UNSHAPED_MINOR}"
HTB_SLOW_CLASS = "1:20"
HTB_DROP_CLASS = "1:30"

HTB_UNLIMITED = f"rate {NETWORK_UNLIMITED_RATE_GBIT}gbit quantum {NETWORK_HTB_QUANTUM_BYTES}"

# Classic BPF, as `tc ... bpf bytecode` spells it ("code jt jf k"); offsets are from the
# Ethernet header at a device's egress.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
BPF_RET_MATCH = 0xFFFFFFFF  # cls_bpf: -1 means "matched, use the filter's classid"
BPF_RET_NO_MATCH = 0
BPF_IPV4_SOURCE_OFFSET = 14 + 12
BPF_RANDOM_U32_OFFSET = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a random 32-bit word
BPF_RANDOM_RANGE = 1 << 32

# Error text of `ip`/`tc` for an object that is already gone (tolerated when removing).
MISSING_OBJECT_MARKERS = (
    "No such file or directory",
    "Cannot find device",
    "does not exist",
    "Cannot delete qdisc with handle of zero",
)
# Error text of `tc` when the kernel lacks a qdisc or classifier.
UNSUPPORTED_MARKERS = ("is unknown", "not found", "Failed to load")

TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

assert len(NAMESPACE_PREFIX) + NETWORK_RUN_TAG_MAX_CHARS <= MAX_INTERFACE_NAME_CHARS
assert DEFAULT_RUN_TAG_CHARS <= NETWORK_RUN_TAG_MAX_CHARS


class NetworkUnavailableError(RuntimeError):
    """Network namespaces cannot be used here (not root, no `ip`, `ip netns add` refused)."""


class UnsupportedFaultError(ValueError):
    """The kernel or the installed tools cannot inject this fault (a qdisc is missing)."""


class NetworkCommandError(RuntimeError):
    """An `ip` or `tc` command failed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, stdin: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdin = stdin
        batch = f"\nbatch input:\n{stdin.rstrip()}" if stdin else ""
        super().__init__(f"`{' '.join(argv)}` failed (exit {returncode}): {stderr.strip()}{batch}")


# --- Commands -----------------------------------------------------------------------


@functools.cache
def _tool(name: str) -> str | None:
    """The path of an executable; also looks in the sbin directories a user's PATH may lack."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in TOOL_DIRS:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _ip() -> str:
    path = _tool("ip")
    if path is None:
        raise NetworkUnavailableError("iproute2's `ip` is not installed")
    return path


def _tc() -> str:
    path = _tool("tc")
    if path is None:
        raise UnsupportedFaultError("iproute2's `tc` is not installed")
    return path


def _only_missing_objects(stderr: str) -> bool:
    """Whether every error line says an object is already gone (batch noise aside)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return all(
        line.startswith("Command failed") or any(m in line for m in MISSING_OBJECT_MARKERS)
        for line in lines
    )


def _run(argv: Sequence[str], batch: Sequence[str] = (), *, tolerate_missing: bool = False) -> str:
    """Run one command (with `batch` lines on stdin for `-batch -`); return its stdout."""
    stdin = "".join(f"{line}\n" for line in batch)
    try:
        completed = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NETWORK_COMMAND_TIMEOUT_MS / 1000,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetworkCommandError(argv, None, "timed out", stdin) from exc
    failed = completed.returncode != 0
    if failed and not (tolerate_missing and _only_missing_objects(completed.stderr)):
        raise NetworkCommandError(argv, completed.returncode, completed.stderr, stdin)
    return completed.stdout


def _as_unsupported(error: NetworkCommandError, fault: str) -> Exception:
    """The kernel lacking a qdisc or classifier is an unsupported fault, not a failure."""
    if any(marker in error.stderr for marker in UNSUPPORTED_MARKERS):
        return UnsupportedFaultError(f"{fault} is not supported here: {error.stderr.strip()}")
    return error


@functools.cache
def netns_available() -> str | None:
    """None if network namespaces can be used here, else the reason they cannot.

    Actually creates and deletes a throwaway namespace; the answer is cached.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (this process is not root)"
    ip = _tool("ip")
    if ip is None:
        return "iproute2's `ip` is not installed"
    probe = f"{NAMESPACE_PREFIX}probe{os.getpid()}"
    try:
        _run([ip, "netns", "add", probe])
    except NetworkCommandError as exc:
        return f"`ip netns add` failed: {exc.stderr.strip()}"
    _run([ip, "netns", "del", probe], tolerate_missing=True)
    return None


# --- Runs: names, pid files, subnets ------------------------------------------------


def _run_name_pattern(prefix: str, suffix: str) -> re.Pattern[str]:
    tag = rf"[0-9a-z]{{1,{NETWORK_RUN_TAG_MAX_CHARS}}}"
    return re.compile(rf"({re.escape(prefix)}{tag}){suffix}")


def _pid_file(run_name: str) -> Path:
    return STATE_DIR / f"{run_name}.pid"


def _process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; field 22 (starttime) counts from after it.
    fields_after_name = stat.rsplit(")", 1)[1].split()
    return int(fields_after_name[19])


def _write_pid_file(run_name: str) -> None:
    pid = os.getpid()
    target = _pid_file(run_name)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(f"{pid} {_process_start_ticks(pid)}\n")
    temporary.replace(target)  # atomic: cleanup_stale never reads half a file


def _creator_alive(run_name: str) -> bool:
    try:
        pid_text, ticks_text = _pid_file(run_name).read_text().split()
        pid, ticks = int(pid_text), int(ticks_text)
    except (OSError, ValueError):
        return False
    return _process_start_ticks(pid) == ticks


@contextmanager
def _creation_lock() -> Iterator[None]:
    """Serialises picking run tags and subnets among the runs on this machine."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def _list_namespaces() -> list[str]:
    # Lines look like "name (id: 3)" or "name".
    return [line.split()[0] for line in _run([_ip(), "netns", "list"]).splitlines() if line]


def _list_root_links() -> list[str]:
    # Lines look like "9: name@if5: <FLAGS> ..."
    names = []
    for line in _run([_ip(), "-o", "link", "show"]).splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names.append(parts[1].rstrip(":").split("@")[0])
    return names


def _run_names_in_use(prefix: str) -> set[str]:
    namespace_pattern = _run_name_pattern(prefix, r"-(?:hub|h\d+)")
    link_pattern = _run_name_pattern(prefix, "")
    in_use = {p.stem for p in STATE_DIR.glob(f"{prefix}*.pid")}
    for name in _list_namespaces():
        match = namespace_pattern.fullmatch(name)
        if match:
            in_use.add(match.group(1))
    in_use.update(name for name in _list_root_links() if link_pattern.fullmatch(name))
    return in_use


def _claim_run_name(run_tag: str | None, rng: random.Random) -> str:
    """A run name no other run uses, with this process's pid file written (hold the lock)."""
    in_use = _run_names_in_use(NAMESPACE_PREFIX)
    if run_tag is not None:
        assert re.fullmatch(rf"[0-9a-z]{{1,{NETWORK_RUN_TAG_MAX_CHARS}}}", run_tag), run_tag
        candidates = [run_tag]
    else:
        candidates = [
            "".join(rng.choices(RANDOM_TAG_ALPHABET, k=DEFAULT_RUN_TAG_CHARS))
            for _ in range(NETWORK_PICK_ATTEMPTS)
        ]
    for tag in candidates:
        run_name = NAMESPACE_PREFIX + tag
        if run_name not in in_use:
            _write_pid_file(run_name)
            return run_name
    raise NetworkUnavailableError(f"run tag(s) already in use: {candidates[:3]}")


def _root_networks() -> list[ipaddress.IPv4Network]:
    """The networks of the root namespace's addresses and (narrower than /8) routes."""
    networks = []
    for line in _run([_ip(), "-o", "-4", "addr", "show"]).splitlines():
        parts = line.split()
        if "inet" in parts:
            address = parts[parts.index("inet") + 1]
            networks.append(ipaddress.IPv4Interface(address).network)
    for line in _run([_ip(), "-4", "route", "show"]).splitlines():
        destination = line.split()[0] if line.strip() else "default"
        if destination != "default":
            network = ipaddress.IPv4Network(destination, strict=False)
            if network.prefixlen > SUBNET_IGNORED_ROUTE_PREFIX_LENGTH:
                networks.append(network)
    return networks


def _pick_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/24 that no address or route of the root namespace overlaps."""
    taken = _root_networks()
    for _ in range(NETWORK_PICK_ATTEMPTS):
        second, third = rng.choice(SUBNET_SECOND_OCTETS), rng.randrange(256)
        candidate = ipaddress.IPv4Network(f"10.{second}.{third}.0/{SUBNET_PREFIX_LENGTH}")
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise NetworkUnavailableError("no free 10.X.Y.0/24 subnet in the root namespace")


def _remove_run(run_name: str, namespaces: Iterable[str]) -> None:
    """Deletes a run's root veth, namespaces and pid file; objects already gone are fine.

    The veth goes first and explicitly: deleting a namespace frees its devices
    asynchronously, and the root end would linger until the hub's are freed.
    """
    ip = _ip()
    _run([ip, "link", "del", run_name], tolerate_missing=True)
    deletions = [f"netns del {namespace}" for namespace in namespaces]
    if deletions:
        _run([ip, "-force", "-batch", "-"], deletions, tolerate_missing=True)
    _pid_file(run_name).unlink(missing_ok=True)


@dataclass
class _StaleRun:
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    pid_files: list[str] = field(default_factory=list)


def cleanup_stale(prefix: str = NAMESPACE_PREFIX) -> list[str]:
    """Removes the namespaces, root veths and pid files of runs whose creator is dead.

    Returns the names of what it removed (namespaces, links, pid file paths). Runs whose
    creating process is alive are never touched.
    """
    namespace_pattern = _run_name_pattern(prefix, r"-(?:hub|h\d+)")
    link_pattern = _run_name_pattern(prefix, "")
    pid_pattern = _run_name_pattern(prefix, r"\.pid")
    runs: dict[str, _StaleRun] = {}
    for name in _list_namespaces():
        match = namespace_pattern.fullmatch(name)
        if match:
            runs.setdefault(match.group(1), _StaleRun()).namespaces.append(name)
    for name in _list_root_links():
        if link_pattern.fullmatch(name):
            runs.setdefault(name, _StaleRun()).links.append(name)
    if STATE_DIR.is_dir():
        for path in STATE_DIR.iterdir():
            match = pid_pattern.fullmatch(path.name)
            if match:
                runs.setdefault(match.group(1), _StaleRun()).pid_files.append(str(path))
    removed: list[str] = []
    for run_name, objects in sorted(runs.items()):
        if _creator_alive(run_name):
            continue
        _remove_run(run_name, objects.namespaces)
        removed += objects.links + objects.namespaces + objects.pid_files
    return removed


# --- Traffic control --------------------------------------------------------------------


def _htb_root_lines(dev: str) -> list[str]:
    """`tc -batch` lines for an htb root whose unclassified traffic is not shaped."""
    return [
        f"qdisc add {dev} root handle {HTB_ROOT} htb default {HTB_UNSHAPED_MINOR}",
        f"class add {dev} parent {HTB_ROOT} classid {HTB_UNSHAPED_CLASS} htb {HTB_UNLIMITED}",
    ]


def _delete_host_qdisc(namespace: str, *, tolerate_missing: bool) -> None:
    argv = [_tc(), "-n", namespace, "qdisc", "del", "dev", HOST_INTERFACE, "root"]
    _run(argv, tolerate_missing=tolerate_missing)


def _loss_threshold(loss_percent: float) -> int:
    """The random u32 below which a packet is dropped."""
    threshold = round(loss_percent / 100 * BPF_RANDOM_RANGE)
    return min(max(threshold, 1), BPF_RANDOM_RANGE - 1)


def _loss_program(sources: Sequence[tuple[ipaddress.IPv4Address, float]]) -> str:
    """cBPF for `tc ... bpf bytecode`: matches a loss_percent of each source's packets."""
    instructions: list[tuple[int, int, int, int]] = []
    for address, loss_percent in sources:
        instructions += [
            (BPF_LD_W_ABS, 0, 0, BPF_IPV4_SOURCE_OFFSET),  # A = IPv4 source address
            (BPF_JEQ_K, 0, 4, int(address)),  # another source: on to the next block
            (BPF_LD_W_ABS, 0, 0, BPF_RANDOM_U32_OFFSET),  # A = random u32
            (BPF_JGE_K, 1, 0, _loss_threshold(loss_percent)),  # at or above: keep
            (BPF_RET_K, 0, 0, BPF_RET_MATCH),  # drop
            (BPF_RET_K, 0, 0, BPF_RET_NO_MATCH),  # keep
        ]
    instructions.append((BPF_RET_K, 0, 0, BPF_RET_NO_MATCH))
    body = ",".join(f"{code} {jt} {jf} {k}" for code, jt, jf, k in instructions)
    return f"{len(instructions)},{body}"


# --- The network --------------------------------------------------------------------


def partition_pairs(groups: Sequence[Collection[int]], size: int) -> list[tuple[int, int]]:
    """The (src, dst) host pairs a partition into ``groups`` cuts, both directions; every
    one of the ``size`` hosts must be in exactly one group."""
    group_of: dict[int, int] = {}
    for group_index, members in enumerate(groups):
        for host in members:
            assert host not in group_of, f"host {host} is in two groups"
            group_of[host] = group_index
    assert len(group_of) == size, f"hosts in no group: {set(range(size)) - set(group_of)}"
    hosts = range(size)
    return [(a, b) for a in hosts for b in hosts if group_of[a] != group_of[b]]


class NetnsNetwork:
    """N hosts, each in its own namespace, on one bridge; the runner's (root) namespace
    reaches every host through one veth, so clients in this process connect directly.

    Fault methods are idempotent and add to the faults already in place; ``heal`` undoes
    them all. ``close`` does not stop processes: stop the servers first.
    """

    def __init__(self, run_name: str, subnet: ipaddress.IPv4Network) -> None:
        """Use ``create``; this only records names (nothing exists yet)."""
        self.run_name = run_name
        self.subnet = subnet
        self.size = 0
        self._dropped: set[tuple[int, int]] = set()
        self._slow_rate_kbit: dict[int, int] = {}
        self._loss_percent: dict[int, float] = {}
        self._lossy_ports: set[int] = set()  # hub ports with the loss qdisc installed
        self._closed = False

    @classmethod
    def create(cls, size: int, run_tag: str | None = None) -> NetnsNetwork:
        """A network of `size` hosts, with its own namespace names and free /24 subnet.

        `run_tag`: up to 8 of [0-9a-z], unique among live runs (default: 5 random hex).
        """
        assert 1 <= size <= NETWORK_MAX_HOSTS, size
        reason = netns_available()
        if reason is not None:
            raise NetworkUnavailableError(reason)
        rng = random.SystemRandom()
        with _creation_lock():
            subnet = _pick_subnet(rng)
            network = cls(_claim_run_name(run_tag, rng), subnet)
            try:
                network._create_hub()  # under the lock: the root address marks the subnet taken
            except BaseException:
                network.close()
                raise
        try:
            network._add_hosts(size)
        except BaseException:
            network.close()
            raise
        return network

    # Names and addresses.

    @property
    def hub_namespace(self) -> str:
        return f"{self.run_name}-hub"

    @property
    def root_address(self) -> str:
        """The runner's own address on this network."""
        return str(self.subnet.network_address + ROOT_HOST_OCTET)

    def namespace(self, index: int) -> str:
        self._check_host(index)
        return f"{self.run_name}-h{index}"

    def host_address(self, index: int) -> str:
        self._check_host(index)
        return str(self._address(index))

    def command_prefix(self, index: int) -> list[str]:
        """Put before a server's command to run it in host `index` (it execs, same pid)."""
        return [_ip(), "netns", "exec", self.namespace(index)]

    def _address(self, index: int) -> ipaddress.IPv4Address:
        return self.subnet.network_address + index + 1

    def _check_host(self, index: int) -> None:
        assert 0 <= index < self.size, f"no host {index} (the network has {self.size})"

    # Building.

    def _create_hub(self) -> None:
        ip, hub, veth = _ip(), self.hub_namespace, self.run_name
        _run(
            [ip, "-batch", "-"],
            [
                f"netns add {hub}",
                f"link add {veth} type veth peer name {UPLINK_PORT} netns {hub}",
                f"addr add {self.root_address}/{SUBNET_PREFIX_LENGTH} dev {veth}",
                f"link set {veth} up",
            ],
        )
        _run(
            [ip, "-n", hub, "-batch", "-"],
            [
                f"link add {BRIDGE} address {SINK_MAC} type bridge",
                f"link set {BRIDGE} up",
                f"link set {UPLINK_PORT} master {BRIDGE} up",
            ],
        )

    def add_host(self) -> int:
        """A new host (for a member added later); returns its index. Faults in place stay."""
        self._add_hosts(1)
        return self.size - 1

    def _add_hosts(self, count: int) -> None:
        assert not self._closed
        assert self.size + count <= NETWORK_MAX_HOSTS, (self.size, count)
        ip, first = _ip(), self.size
        self.size += count  # before creating anything, so close() removes partial hosts
        indexes = range(first, self.size)
        _run([ip, "-batch", "-"], [f"netns add {self.namespace(i)}" for i in indexes])
        hub_lines = []
        for i in indexes:
            hub_lines += [
                f"link add h{i} type veth peer name {HOST_INTERFACE} netns {self.namespace(i)}",
                f"link set h{i} master {BRIDGE} up",
            ]
        _run([ip, "-n", self.hub_namespace, "-batch", "-"], hub_lines)
        for i in indexes:
            _run(
                [ip, "-n", self.namespace(i), "-batch", "-"],
                [
                    "link set lo up",
                    f"addr add {self._address(i)}/{SUBNET_PREFIX_LENGTH} dev {HOST_INTERFACE}",
                    f"link set {HOST_INTERFACE} up",
                ],
            )
        if self._loss_percent:
            self._install_loss()  # the new hosts' hub ports must drop from lossy hosts too

    # Faults.

    def partition(self, groups: Sequence[Collection[int]]) -> None:
        """Hosts in different groups cannot exchange packets, in either direction.

        Every host must be in exactly one group. Adds to drops already in place.
        """
        for members in groups:
            for host in members:
                self._check_host(host)
        self._drop_pairs(partition_pairs(groups, self.size))

    def drop(self, src: int, dst: int) -> None:
        """Packets from src to dst are dropped (one way; TCP to or from dst then fails too)."""
        self._drop_pairs([(src, dst)])

    def undrop(self, src: int, dst: int) -> None:
        self._check_host(src)
        self._check_host(dst)
        if (src, dst) not in self._dropped:
            return
        line = f"neigh del {self._address(dst)} dev {HOST_INTERFACE}"
        _run([_ip(), "-n", self.namespace(src), "-batch", "-"], [line])
        self._dropped.discard((src, dst))

    def _drop_pairs(self, pairs: Iterable[tuple[int, int]]) -> None:
        by_source: dict[int, list[int]] = {}
        for src, dst in sorted(set(pairs) - self._dropped):
            self._check_host(src)
            self._check_host(dst)
            assert src != dst, f"host {src} cannot be cut from itself"
            by_source.setdefault(src, []).append(dst)
        for src, destinations in by_source.items():
            lines = [
                f"neigh replace {self._address(dst)} lladdr {SINK_MAC} "
                f"dev {HOST_INTERFACE} nud permanent"
                for dst in destinations
            ]
            _run([_ip(), "-n", self.namespace(src), "-batch", "-"], lines)
            self._dropped.update((src, dst) for dst in destinations)

    def slow(self, index: int, rate_kbit: int) -> None:
        """Limits host `index`'s traffic to other hosts (not to the root side) to rate_kbit.

        Packets queue (up to NETWORK_SLOW_QUEUE_PACKETS), which is what delays them.
        """
        self._check_host(index)
        assert rate_kbit >= 1, rate_kbit
        current = self._slow_rate_kbit.get(index)
        if current == rate_kbit:
            return
        tc, dev = _tc(), f"dev {HOST_INTERFACE}"
        rate = f"rate {rate_kbit}kbit ceil {rate_kbit}kbit quantum {NETWORK_HTB_QUANTUM_BYTES}"
        if current is not None:
            lines = [f"class change {dev} parent {HTB_ROOT} classid {HTB_SLOW_CLASS} htb {rate}"]
        else:
            lines = [
                *_htb_root_lines(dev),
                f"class add {dev} parent {HTB_ROOT} classid {HTB_SLOW_CLASS} htb {rate}",
                f"qdisc add {dev} parent {HTB_SLOW_CLASS} pfifo limit {NETWORK_SLOW_QUEUE_PACKETS}",
                # The runner's address first: its traffic is never shaped.
                f"filter add {dev} parent {HTB_ROOT} protocol ip prio 1 u32 "
                f"match ip dst {self.root_address}/32 flowid {HTB_UNSHAPED_CLASS}",
                f"filter add {dev} parent {HTB_ROOT} protocol ip prio 2 u32 "
                f"match ip dst {self.subnet} flowid {HTB_SLOW_CLASS}",
            ]
        namespace = self.namespace(index)
        try:
            _run([tc, "-n", namespace, "-batch", "-"], lines)
        except NetworkCommandError as exc:
            if current is None:  # a batch stops at its first error: remove what it added
                _delete_host_qdisc(namespace, tolerate_missing=True)
            raise _as_unsupported(exc, "a slow link (tc htb + u32)") from exc
        self._slow_rate_kbit[index] = rate_kbit

    def lossy(self, index: int, loss_percent: float) -> None:
        """A random loss_percent of the packets host `index` sends to other hosts are lost.

        Packets to the root side are not. If installing fails, no loss stays installed.
        """
        self._check_host(index)
        assert 0 < loss_percent < 100, loss_percent
        if self._loss_percent.get(index) == loss_percent:
            return
        self._loss_percent[index] = loss_percent
        try:
            self._install_loss()
        except NetworkCommandError as exc:
            self._remove_loss(tolerate_missing=True, ports=range(self.size))
            raise _as_unsupported(exc, "a lossy link (tc htb + cls_bpf)") from exc

    def _install_loss(self) -> None:
        """(Re)writes the loss filter of every hub port that carries packets of a lossy host."""
        lines: list[str] = []
        installed: list[int] = []
        for port in range(self.size):
            sources = [
                (self._address(host), percent)
                for host, percent in sorted(self._loss_percent.items())
                if host != port
            ]
            if not sources:
                continue
            dev = f"dev h{port}"
            verb = "replace" if port in self._lossy_ports else "add"
            if port not in self._lossy_ports:
                drop_class = f"parent {HTB_ROOT} classid {HTB_DROP_CLASS}"
                lines += [
                    *_htb_root_lines(dev),
                    f"class add {dev} {drop_class} htb {HTB_UNLIMITED}",
                    f"qdisc add {dev} parent {HTB_DROP_CLASS} bfifo limit 0",  # holds nothing
                ]
            lines.append(
                f"filter {verb} {dev} parent {HTB_ROOT} protocol ip prio 1 handle 1 bpf "
                f'bytecode "{_loss_program(sources)}" classid {HTB_DROP_CLASS}'
            )
            installed.append(port)
        if lines:
            _run([_tc(), "-n", self.hub_namespace, "-batch", "-"], lines)
            self._lossy_ports.update(installed)

    def _remove_loss(self, *, tolerate_missing: bool, ports: Iterable[int]) -> None:
        lines = [f"qdisc del dev h{port} root" for port in sorted(ports)]
        if lines:
            force = ["-force"] if tolerate_missing else []
            _run(
                [_tc(), *force, "-n", self.hub_namespace, "-batch", "-"],
                lines,
                tolerate_missing=tolerate_missing,
            )
        self._lossy_ports.clear()
        self._loss_percent.clear()

    def heal(self) -> None:
        """Removes every drop, slow link and loss this network added (one call per touched
        namespace); afterwards every host reaches every other host and the root side."""
        by_source: dict[int, list[int]] = {}
        for src, dst in sorted(self._dropped):
            by_source.setdefault(src, []).append(dst)
        for src, destinations in by_source.items():
            lines = [f"neigh del {self._address(dst)} dev {HOST_INTERFACE}" for dst in destinations]
            _run([_ip(), "-n", self.namespace(src), "-batch", "-"], lines)
            self._dropped.difference_update((src, dst) for dst in destinations)
        for index in sorted(self._slow_rate_kbit):
            _delete_host_qdisc(self.namespace(index), tolerate_missing=False)
            del self._slow_rate_kbit[index]
        self._remove_loss(tolerate_missing=False, ports=self._lossy_ports)

    # Teardown.

    def close(self) -> None:
        """Deletes the namespaces, veths and bridge. Safe to call twice; objects already
        gone are fine."""
        if self._closed:
            return
        self._closed = True
        hosts = [f"{self.run_name}-h{index}" for index in range(self.size)]
        _remove_run(self.run_name, [self.hub_namespace, *hosts])

    def __enter__(self) -> NetnsNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
