"""Deliberately broken raftkv builds, to show that ``raftkv verify`` catches real bugs.

A mutant is a copy of the installed ``raftkv`` package with one known bug put in by a
textual patch. The verify runner starts its servers with the copy first on PYTHONPATH
(``raftkv verify --mutant NAME``), so the clients, checkers and runner stay correct.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import raftkv


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # inside the raftkv package
    original: str
    broken: str
    bug: str  # what the broken build does wrong


MUTANTS = {
    mutant.name: mutant
    for mutant in (
        Mutant(
            "stale-read",
            "server/node.py",
            "    async def read_barrier(self) -> None:\n        self._check_serving()\n",
            "    async def read_barrier(self) -> None:\n        self._check_serving()\n"
            "        return  # MUTANT: serve linearizable reads from local state\n",
            "every member answers a linearizable read from its own state, without ReadIndex",
        ),
    )
}


class MutantError(RuntimeError):
    """The mutant's patch no longer applies (the source it patches has changed)."""


def build_mutant(name: str, destination: Path) -> Path:
    """Copy the raftkv package under ``destination`` with mutant ``name`` applied; returns the
    directory to put first on PYTHONPATH."""
    mutant = MUTANTS[name]
    package = Path(raftkv.__file__).parent
    root = destination / f"raftkv-mutant-{name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(package, root / "raftkv", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "raftkv" / mutant.path
    source = target.read_text()
    if source.count(mutant.original) != 1:
        raise MutantError(
            f"mutant {name}: the text it patches is not found exactly once in {mutant.path}"
        )
    target.write_text(source.replace(mutant.original, mutant.broken))
    return root
