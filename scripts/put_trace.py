"""Where one put's time goes: a timeline across the client and the three members.

    python scripts/put_trace.py [--src src] [--puts 400] [--gap-ms 4]

Copies ``--src`` to a temporary directory and adds a timestamp (CLOCK_MONOTONIC, shared by
every process on the machine) at each step of a put's path: the HTTP/2 front end's read and
write, the KV handler, the proposal, each Ready round (wake, send, WAL save, fdatasync in
its thread and back, apply), and each peer frame. It starts a 3-member cluster of that copy,
sends ``--puts`` sequential puts to the leader with a gap between them (so the rounds of one
put do not overlap the next), and prints, for each step, its median time after the client
sent the put. L is the leader, F1 and F2 the followers. The copy is traced; the tree in the
repository is not touched. Each timestamp costs a few microseconds of its own.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.verify.cluster import ProcessCluster

WARM_UP_PUTS = 50
SKIPPED_PUTS = 20  # the first traced puts still warm caches up
TRACE_MODULE = """import os, time
_fd = os.open(os.path.join(os.environ["RAFTKV_TRACE_DIR"], f"{os.getpid()}.txt"),
              os.O_WRONLY | os.O_CREAT | os.O_APPEND)
def tr(name):
    os.write(_fd, f"{time.monotonic_ns()} {name}\\n".encode())
"""
SYNC_LINE = (
    "        took_s = metrics.timed(metrics.WAL_FSYNC_SECONDS.observe, self.persistence.sync)\n"
)
# (file, text, text with a timestamp): each text must occur exactly once.
PROBES: list[tuple[str, str, str]] = [
    (
        "api/h2/server.py",
        "        self.buffer += data\n",
        "        _tr('h2 read')\n        self.buffer += data\n",
    ),
    (
        "api/h2/server.py",
        '            self.transport.write(b"".join(self.out))\n',
        "            _tr('h2 write')\n            self.transport.write(b\"\".join(self.out))\n",
    ),
    (
        "api/kv.py",
        "        put = convert.put_request(request)\n",
        "        _tr('put handler')\n        put = convert.put_request(request)\n",
    ),
    (
        "server/node.py",
        "        request = self._prepare(request)\n",
        "        _tr('propose')\n        request = self._prepare(request)\n",
    ),
    (
        "server/node.py",
        "                self._wake.clear()\n",
        "                _tr('loop wakes')\n                self._wake.clear()\n",
    ),
    (
        "server/node.py",
        "    async def _handle_ready(self, ready: Ready) -> None:\n",
        "    async def _handle_ready(self, ready: Ready) -> None:\n        _tr('ready')\n",
    ),
    (
        "server/node.py",
        "        self.persistence.save(ready)\n",
        "        _tr('sent')\n        self.persistence.save(ready)\n        _tr('saved')\n",
    ),
    (
        "server/node.py",
        "            await synced\n",
        "            await synced\n            _tr('synced (loop)')\n",
    ),
    (
        "server/node.py",
        SYNC_LINE,
        "        _tr('fdatasync starts (thread)')\n"
        + SYNC_LINE
        + "        _tr('fdatasync ends (thread)')\n",
    ),
    (
        "server/node.py",
        "            self.backend.commit_if_due()\n",
        "            self.backend.commit_if_due()\n            _tr('applied')\n",
    ),
    (
        "server/node.py",
        "        self._inbox.append(message)\n",
        "        self._inbox.append(message)\n        _tr('peer message in inbox')\n",
    ),
    (
        "server/node.py",
        "                await asyncio.sleep(0)\n",
        "                await asyncio.sleep(0)\n                _tr('loop idle')\n",
    ),
    (
        "server/transport.py",
        "    header = await reader.readexactly(_FRAME_HEADER.size)\n",
        "    header = await reader.readexactly(_FRAME_HEADER.size)\n    _tr('peer frame')\n",
    ),
]


def instrument(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    package = target / "raftkv"
    (package / "_trace.py").write_text(TRACE_MODULE)
    for relative, text, traced in PROBES:
        path = package / relative
        code = path.read_text()
        assert code.count(text) == 1, f"{relative}: the probe's text is not there once"
        code = code.replace(text, traced)
        header = "from __future__ import annotations\n"
        if "from raftkv._trace import tr as _tr" not in code:
            code = code.replace(header, header + "\nfrom raftkv._trace import tr as _tr\n", 1)
        path.write_text(code)


def run_puts(root: Path, source: Path, puts: int, gap_s: float) -> list[tuple[int, int]]:
    env = {"PYTHONPATH": str(source), "RAFTKV_TRACE_DIR": str(root / "trace")}
    with ProcessCluster.start(
        root / "cluster", 3, heartbeat_interval=100, election_timeout=1000, env=env
    ) as cluster:
        cluster.wait_for_leader()
        time.sleep(1.0)  # the election settled: ask again, the leader may have moved
        leader = cluster.members[cluster.wait_for_leader()].client_endpoint
        with grpc.insecure_channel(leader) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for number in range(WARM_UP_PUTS):
                kv.Put(rpc_pb2.PutRequest(key=b"warm%d" % number, value=b"x" * 256))
            marks = []
            for number in range(puts):
                time.sleep(gap_s)
                sent_ns = time.monotonic_ns()
                kv.Put(rpc_pb2.PutRequest(key=b"k%08d" % number, value=b"x" * 256))
                marks.append((sent_ns, time.monotonic_ns()))
        return marks



def timeline(trace_dir: Path, marks: list[tuple[int, int]]) -> list[str]:
    by_process = {}
    for path in trace_dir.glob("*.txt"):
        events = []
        for line in path.read_text().splitlines():
            stamp, name = line.split(" ", 1)
            events.append((int(stamp), name))
        by_process[path.stem] = events
    leader = next(
        p for p, events in by_process.items() if any(n == "put handler" for _, n in events)
    )
    followers = sorted(p for p in by_process if p != leader)
    label = {leader: "L", **{p: f"F{i}" for i, p in enumerate(followers, start=1)}}
    events = sorted((t, label[p], n) for p, evs in by_process.items() for t, n in evs)
    stamps = [t for t, _, _ in events]
    offsets: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    latencies = []
    for sent_ns, answered_ns in marks[SKIPPED_PUTS:]:
        latencies.append((answered_ns - sent_ns) / 1000)
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        window = events[
            bisect.bisect_left(stamps, sent_ns) : bisect.bisect_right(stamps, answered_ns)
        ]
        for stamp, who, name in window:
            seen[(who, name)] += 1
            offsets[(who, name, seen[(who, name)])].append((stamp - sent_ns) / 1000)
    wanted = len(latencies) // 2
    rows = sorted(
        (statistics.median(values), key) for key, values in offsets.items() if len(values) > wanted
    )
    lines = [f"{'µs':>8}  who  step (median over {len(latencies)} puts)"]
    lines += [
        f"{at:8.0f}  {who:3}  {name}{f' #{n}' if n > 1 else ''}" for at, (who, name, n) in rows
    ]
    lines.append(f"{statistics.median(latencies):8.0f}  client: the answer arrives")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--puts", type=int, default=400)
    parser.add_argument("--gap-ms", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        instrument(args.src, root / "src")
        (root / "trace").mkdir()
        (root / "cluster").mkdir()
        marks = run_puts(root, root / "src", args.puts, args.gap_ms / 1000)
        print(f"load average {os.getloadavg()}", file=sys.stderr)
        print("\n".join(timeline(root / "trace", marks)))


if __name__ == "__main__":
    main()
