"""Command-line interface for raftkv (``raftkv`` console script and ``python -m raftkv``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import raftkv
from raftkv import limits
from raftkv.argtypes import bounded_int

EXIT_NOT_IMPLEMENTED = 2
EXIT_BAD_CONFIG = 2

# Subcommands that exist in the CLI surface but are not built yet, and the issue that
# builds each.
_PENDING: dict[str, str] = {
    "bench": "run the load generator and etcd comparison",
    "snapshot": "save or restore a snapshot of a running cluster",
}
_PENDING_ISSUE = {"bench": 6, "snapshot": 7}


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
        choices=["auto", "netns", "loopback"],
        default="auto",
        help="netns: every member in its own network namespace (needs root; required for "
        "network faults); loopback: all on 127.0.0.1 (default: auto)",
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

    return run_up(size=args.size, data_dir=args.data_dir, base_port=args.base_port, host=args.host)


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
    if command in _PENDING:
        return _not_yet(command)
    parser.error(f"unknown command: {command}")  # unreachable: argparse validates choices


if __name__ == "__main__":
    sys.exit(main())
