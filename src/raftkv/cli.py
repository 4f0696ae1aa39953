"""Command-line interface for raftkv (``raftkv`` console script and ``python -m raftkv``)."""

from __future__ import annotations

import argparse
import sys

import raftkv
from raftkv import limits
from raftkv.argtypes import bounded_int

EXIT_NOT_IMPLEMENTED = 2

# Subcommands that exist in the CLI surface but need the server (issue #4) first.
_PENDING: dict[str, str] = {
    "serve": "run a single raftkv server node",
    "up": "start a local raftkv cluster",
    "bench": "run the load generator and etcd comparison",
    "verify": "run fault injection against real server processes",
    "snapshot": "save or restore a snapshot of a running cluster",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv",
        description="raftkv: an etcd-compatible replicated key-value store.",
    )
    parser.add_argument("--version", action="version", version=f"raftkv {raftkv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, help_text in _PENDING.items():
        sub.add_parser(name, help=f"{help_text} (not yet implemented)")

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


def _not_yet(command: str) -> int:
    print(
        f"raftkv {command}: not yet implemented — the server lands with issue #4; see README",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    command: str = args.command
    if command == "sim":
        return _run_sim(args)
    if command in _PENDING:
        return _not_yet(command)
    parser.error(f"unknown command: {command}")  # unreachable: argparse validates choices


if __name__ == "__main__":
    sys.exit(main())
