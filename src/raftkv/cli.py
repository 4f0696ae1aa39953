"""Command-line interface for raftkv (``raftkv`` console script and ``python -m raftkv``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import raftkv
from raftkv import limits
from raftkv.argtypes import bounded_int
from raftkv.snapshot_command import add_snapshot_parser, run_snapshot

EXIT_NOT_IMPLEMENTED = 2
EXIT_BAD_CONFIG = 2

# Subcommands that exist in the CLI surface but are not built yet, and the issue that
# builds each.
_PENDING: dict[str, str] = {}
_PENDING_ISSUE: dict[str, int] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv",
        description="raftkv: an etcd-compatible replicated key-value store.",
    )
    parser.add_argument("--version", action="version", version=f"raftkv {raftkv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, help_text in _PENDING.items():
        sub.add_parser(name, help=f"{help_text} (not yet implemented)")

    # `serve` parses its own (etcd's) flags: main() hands its arguments to load_config.
    sub.add_parser("serve", help="run one raftkv member (etcd's flags; see `raftkv serve --help`)")
    _add_up_parser(sub)
    _add_verify_parser(sub)
    _add_bench_parser(sub)
    add_snapshot_parser(sub)
    _add_certs_parser(sub)

    sim = sub.add_parser("sim", help="run the deterministic cluster simulator (VOPR)")
    sim.add_argument(
        "--seeds",
        type=bounded_int("count", 1),
        default=None,
        metavar="N",
        help="number of seeds to run",
    )
    sim.add_argument(
        "--seed",
        type=bounded_int("seed", 0),
        default=None,
        metavar="S",
        help="run (or replay) this specific seed",
    )
    sim.add_argument(
        "--nodes",
        type=bounded_int("nodes", 1, 7),
        default=None,
        metavar="K",
        help="cluster size, 1..7 (default: chosen by the simulator)",
    )
    sim.add_argument(
        "--ticks",
        type=bounded_int("ticks", 1, limits.SIM_MAX_TICKS),
        default=None,
        metavar="T",
        help="number of ticks to simulate per seed (default: chosen by the simulator)",
    )
    sim.add_argument("--verbose", action="store_true", help="print a trace of the run")
    return parser


def _add_up_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start a local raftkv cluster, one process per member")
    up.add_argument(
        "--size",
        type=bounded_int("size", 1, limits.UP_MAX_MEMBERS),
        default=3,
        metavar="N",
        help=f"number of members, 1..{limits.UP_MAX_MEMBERS} (default: 3)",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path("raftkv-up-data"),
        metavar="DIR",
        help="where the members keep their data and logs (default: ./raftkv-up-data)",
    )
    up.add_argument(
        "--base-port",
        type=bounded_int("base port", 1, 65535),
        default=2379,
        metavar="P",
        help=f"member i listens on P+{limits.UP_PORT_STRIDE}*i (client), +1 (peer), "
        "+2 (JSON gateway) (default: 2379)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    up.add_argument(
        "--tls",
        type=Path,
        default=None,
        metavar="DIR",
        help="mutual TLS on every URL with the files `raftkv certs --out DIR` wrote",
    )


def _add_certs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser(
        "certs",
        help="write a development CA and server, peer and client certificates (TLS)",
        description="Write ca.crt and server, peer and client certificates with their keys "
        "for a local TLS cluster; see docs/operations.md (TLS).",
    )
    certs.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    certs.add_argument(
        "--hosts",
        default="127.0.0.1,localhost",
        metavar="HOST,...",
        help="IP addresses and DNS names the server and peer certificates are valid for "
        "(default: 127.0.0.1,localhost)",
    )
    certs.add_argument("--force", action="store_true", help="replace existing files")


def _run_certs(args: argparse.Namespace) -> int:
    from raftkv.certs import CertsError, generate_dev_certs, parse_hosts

    try:
        files = generate_dev_certs(args.out, parse_hosts(args.hosts), force=args.force)
    except (CertsError, OSError) as error:
        print(f"raftkv certs: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for path in files.all_paths():
        print(path)
    return 0


def _add_verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from raftkv.verify.mutants import MUTANTS

    verify = sub.add_parser(
        "verify", help="run a cluster under injected faults and check what clients saw"
    )
    verify.add_argument("--target", choices=["raftkv", "etcd"], default="raftkv")
    verify.add_argument(
        "--nodes", type=bounded_int("nodes", 1, limits.UP_MAX_MEMBERS), default=3, metavar="N"
    )
    verify.add_argument(
        "--duration",
        type=bounded_int("duration", 1),
        default=60,
        metavar="SECONDS",
        help="how long faults are injected (default: 60)",
    )
    verify.add_argument(
        "--faults",
        default="kill,pause,partition",
        help="comma-separated: kill, pause, partition, slow, lossy, membership "
        "(default: kill,pause,partition)",
    )
    verify.add_argument("--seed", type=bounded_int("seed", 0), default=None, metavar="S")
    verify.add_argument("--out", type=Path, default=None, metavar="DIR")
    verify.add_argument(
        "--network",
        choices=["auto", "netns", "proxy", "loopback"],
        default="auto",
        help="netns: every member in its own network namespace (needs root); proxy: members "
        "on 127.0.0.1 reach each other through a fault-injecting TCP proxy; loopback: no "
        "network faults. auto: netns when network faults are asked for and namespaces can "
        "be made, else proxy; loopback otherwise",
    )
    verify.add_argument(
        "--check-budget",
        type=bounded_int("check budget", 1),
        default=300,
        metavar="SECONDS",
        help="time the linearizability search may take before it answers unknown",
    )
    verify.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the server processes (e.g. PYTHONPATH of another build)",
    )
    verify.add_argument(
        "--mutant",
        choices=sorted(MUTANTS),
        default=None,
        help="run the servers from a deliberately broken build, to see the checkers catch it",
    )
    verify.add_argument("--quiet", action="store_true")


def _add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from raftkv.bench.workloads import WORKLOADS

    bench = sub.add_parser(
        "bench",
        help="load any etcd v3 endpoint, or compare raftkv with etcd (--compare)",
        description="raftkv bench --endpoints URLS WORKLOAD [options] | raftkv bench --compare",
    )
    bench.add_argument("workload", nargs="?", choices=WORKLOADS, help="what to run")
    bench.add_argument("--endpoints", default="", metavar="URLS", help="comma-separated")
    count = bounded_int
    bench.add_argument(
        "--clients", type=count("clients", 1, limits.BENCH_MAX_CLIENTS), default=1, metavar="N"
    )
    bench.add_argument(
        "--conns", type=count("conns", 1, limits.BENCH_MAX_CONNECTIONS), default=1, metavar="N"
    )
    bench.add_argument(
        "--workers",
        type=count("workers", 1, limits.BENCH_MAX_WORKERS),
        default=None,
        metavar="N",
        help="load processes (default: the number of CPUs)",
    )
    bench.add_argument("--total", type=count("total", 1), default=None, metavar="N")
    bench.add_argument("--duration", type=_positive_float, default=None, metavar="SECONDS")
    bench.add_argument(
        "--rate", type=_positive_float, default=None, metavar="OPS", help="total ops/s limit"
    )
    bench.add_argument("--target-leader", action="store_true")
    bench.add_argument(
        "--key-size", type=count("key size", 1, limits.BENCH_MAX_KEY_BYTES), default=8
    )
    bench.add_argument(
        "--val-size", type=count("value size", 0, limits.BENCH_MAX_VALUE_BYTES), default=256
    )
    bench.add_argument("--sequential-keys", action="store_true")
    bench.add_argument(
        "--key-space-size", type=count("key space", 1, limits.BENCH_MAX_KEY_SPACE), default=100_000
    )
    bench.add_argument("--consistency", choices=["l", "s"], default="l")
    bench.add_argument(
        "--range-keys", type=count("range keys", 1, limits.BENCH_MAX_PRELOAD_KEYS), default=1000
    )
    bench.add_argument(
        "--watchers", type=count("watchers", 1, limits.BENCH_MAX_WATCHERS), default=100
    )
    bench.add_argument("--lease-ttl", type=count("lease TTL", 1), default=30, metavar="SECONDS")
    bench.add_argument("--keepalives-per-lease", type=count("keepalives", 1), default=100)
    bench.add_argument(
        "--mixed-objects", type=count("objects", 1, limits.BENCH_MAX_PRELOAD_KEYS), default=1000
    )
    bench.add_argument("--list-limit", type=count("list limit", 1), default=500)
    bench.add_argument("--seed", type=count("seed", 0), default=None)
    bench.add_argument("--json", type=Path, default=None, metavar="FILE")
    bench.add_argument("--quiet", action="store_true", help="no progress line")
    bench.add_argument("--compare", action="store_true", help="raftkv vs etcd, 3 members each")
    bench.add_argument(
        "--compare-scale",
        type=count("scale keys", 1, limits.BENCH_MAX_PRELOAD_KEYS),
        default=1_000_000,
        metavar="KEYS",
        help="keys loaded for the memory and restart figures (default: 1000000)",
    )
    bench.add_argument("--compare-duration", type=_positive_float, default=10.0, metavar="SECONDS")
    bench.add_argument("--compare-repetitions", type=count("repetitions", 1), default=1)
    bench.add_argument(
        "--compare-clients", type=count("clients", 1, limits.BENCH_MAX_CLIENTS), default=1000
    )
    bench.add_argument(
        "--compare-conns", type=count("conns", 1, limits.BENCH_MAX_CONNECTIONS), default=100
    )
    bench.add_argument(
        "--compare-watchers", type=count("watchers", 1, limits.BENCH_MAX_WATCHERS), default=1000
    )
    bench.add_argument("--compare-watch-writes", type=count("writes", 1), default=500)
    bench.add_argument(
        "--compare-only",
        default="",
        metavar="KEYS",
        help="comma-separated comparisons to run (e.g. write_throughput,watch_fanout); "
        "the memory and restart rows always run (default: all)",
    )
    bench.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="--compare: where results go"
    )
    bench.add_argument(
        "--doc", type=Path, default=None, metavar="FILE", help="--compare: append the section"
    )
    bench.add_argument(
        "--work-dir", type=Path, default=None, metavar="DIR", help="--compare: cluster data"
    )
    bench.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--compare: environment of the raftkv servers (e.g. PYTHONPATH of another build)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _run_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from raftkv.bench.load import BenchConfigError, default_workers
    from raftkv.bench.workloads import BenchSetupError
    from raftkv.verify.cluster import ClusterError

    workers = args.workers or default_workers()
    try:
        if args.compare:
            return _run_compare(args, argv, workers)
        return _run_load(args, workers)
    except BenchConfigError as error:
        print(f"raftkv bench: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (BenchSetupError, ClusterError) as error:
        print(f"raftkv bench: {error}", file=sys.stderr)
        return 1


def _run_load(args: argparse.Namespace, workers: int) -> int:
    import json

    from raftkv.bench.load import BenchConfigError, BenchOptions, run_bench

    endpoints = tuple(e for e in args.endpoints.split(",") if e)
    if args.workload is None or not endpoints:
        raise BenchConfigError("give --endpoints URLS and a WORKLOAD (or --compare)")
    options = BenchOptions(
        endpoints=endpoints,
        workload=args.workload,
        clients=args.clients,
        connections=args.conns,
        workers=workers,
        total=args.total,
        duration_s=args.duration,
        rate_ops_s=args.rate,
        target_leader=args.target_leader,
        key_bytes=args.key_size,
        value_bytes=args.val_size,
        sequential_keys=args.sequential_keys,
        key_space=args.key_space_size,
        serializable=args.consistency == "s",
        range_keys=args.range_keys,
        watchers=args.watchers,
        lease_ttl_s=args.lease_ttl,
        keepalives_per_lease=args.keepalives_per_lease,
        mixed_objects=args.mixed_objects,
        list_limit=args.list_limit,
        quiet=args.quiet,
        seed=args.seed,
    )
    result = run_bench(options)
    print(result.format_table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 1 if result.total_errors else 0


def _run_compare(args: argparse.Namespace, argv: list[str], workers: int) -> int:
    import shlex
    import time

    from raftkv.bench.compare import CompareOptions, run_compare
    from raftkv.bench.load import BenchConfigError

    if args.workload is not None or args.endpoints:
        raise BenchConfigError("--compare starts its own clusters: no WORKLOAD or --endpoints")
    if any("=" not in item for item in args.server_env):
        raise BenchConfigError("--server-env takes KEY=VALUE")
    server_env = dict(item.split("=", 1) for item in args.server_env)
    out_dir = args.out or Path("bench-results") / time.strftime("compare-%Y%m%d-%H%M%S")
    options = CompareOptions(
        out_dir=out_dir,
        doc_path=args.doc,
        work_dir=args.work_dir,
        scale_keys=args.compare_scale,
        duration_s=args.compare_duration,
        repetitions=args.compare_repetitions,
        workers=workers,
        clients=args.compare_clients,
        connections=args.compare_conns,
        watchers=args.compare_watchers,
        watch_writes=args.compare_watch_writes,
        only=tuple(key for key in args.compare_only.split(",") if key),
        server_env=server_env,
        quiet=args.quiet,
        command=shlex.join(["raftkv", *argv]),
    )
    report = run_compare(options)
    print((out_dir / "compare.md").read_text())
    return 0 if report.rows else 1


def _run_verify(args: argparse.Namespace) -> int:
    import random
    import time

    from raftkv.verify.runner import VerifyOptions, VerifySetupError, parse_faults, run_verify

    try:
        faults = parse_faults(args.faults)
        server_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError as error:
        print(f"raftkv verify: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    out_dir = args.out or Path("verify-results") / time.strftime(f"%Y%m%d-%H%M%S-seed{seed}")
    options = VerifyOptions(
        out_dir=out_dir,
        target=args.target,
        nodes=args.nodes,
        duration_s=float(args.duration),
        faults=faults,
        seed=seed,
        network=args.network,
        check_budget_s=float(args.check_budget),
        server_env=server_env,
        mutant=args.mutant,
        quiet=args.quiet,
    )
    try:
        record = run_verify(options)
    except VerifySetupError as error:
        print(f"raftkv verify: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not record.summary.passed:
        print(f"replay: {record.summary.command}", file=sys.stderr)
        return 1
    return 0


def _run_serve(argv: list[str]) -> int:
    from raftkv.server.config import ConfigError, load_config

    try:
        config = load_config(argv, os.environ)
    except ConfigError as error:
        print(f"raftkv serve: {error.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for warning in config.warnings:
        print(f"raftkv serve: warning: {warning}", file=sys.stderr)
    # Imported lazily: the server is heavy, and the rest of the CLI must not need it.
    from raftkv.server.main import serve

    return serve(config)


def _run_up(args: argparse.Namespace) -> int:
    from raftkv.up import run_up

    return run_up(
        size=args.size,
        data_dir=args.data_dir,
        base_port=args.base_port,
        host=args.host,
        tls_dir=args.tls,
    )


def _not_yet(command: str) -> int:
    print(
        f"raftkv {command}: not yet implemented (issue #{_PENDING_ISSUE[command]}); see README",
        file=sys.stderr,
    )
    return EXIT_NOT_IMPLEMENTED


def _run_sim(args: argparse.Namespace) -> int:
    # Imported lazily so the rest of the CLI does not depend on the simulator.
    from raftkv.sim.vopr import run_cli

    return run_cli(
        seeds=args.seeds,
        seed=args.seed,
        nodes=args.nodes,
        ticks=args.ticks,
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["serve"]:
        return _run_serve(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    command: str = args.command
    if command == "sim":
        return _run_sim(args)
    if command == "up":
        return _run_up(args)
    if command == "verify":
        return _run_verify(args)
    if command == "bench":
        return _run_bench(args, arguments)
    if command == "snapshot":
        return run_snapshot(args)
    if command == "certs":
        return _run_certs(args)
    if command in _PENDING:
        return _not_yet(command)
    parser.error(f"unknown command: {command}")  # unreachable: argparse validates choices


if __name__ == "__main__":
    sys.exit(main())
