"""Static purity checks for the deterministic parts of raftkv.

`raftkv.raft` (the consensus core) and `raftkv.sim` (the deterministic simulator) must not
touch the outside world: no clocks, no I/O, no threads or event loops, no processes, no
signals, and no module-global randomness. All randomness must flow through an explicitly
seeded `random.Random` instance, so that a simulator run is a pure function of its seed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "raftkv"

FORBIDDEN_IO = frozenset(
    {
        "asyncio",
        "time",
        "os",
        "socket",
        "threading",
        "subprocess",
        "multiprocessing",
        "selectors",
        "signal",
    }
)

# (package directory, forbidden top-level imports, minimum number of .py files expected).
# `sim` may additionally use `sys`/`argparse` (not in the list) and `random.Random(seed)`.
PACKAGES: list[tuple[Path, frozenset[str], int]] = [
    (SRC / "raft", FORBIDDEN_IO, 5),
    (SRC / "sim", FORBIDDEN_IO, 1),
]


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def find_violations(source: str, filename: str, forbidden: frozenset[str]) -> list[str]:
    """Return human-readable purity violations found in `source`.

    Flags:
    - `import X` / `import X.sub` / `from X import ...` / `from X.sub import ...` where the
      top-level module X is in `forbidden`;
    - `__import__("X")` / `importlib.import_module("X")` with a literal forbidden X;
    - `from random import <name>` for any name other than `Random` (including `*`);
    - any attribute access `random.<name>` (or via an alias of the random module) where
      `<name>` is not `Random`, e.g. `random.randint(...)`, `random.seed(...)`,
      `f = random.choice`.
    """
    tree = ast.parse(source, filename=filename)
    problems: list[str] = []
    random_names = {"random"}  # names bound to the `random` module

    def report(node: ast.AST, message: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: {message}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) in forbidden:
                    report(node, f"imports forbidden module {alias.name!r}")
                if alias.name == "random" and alias.asname:
                    random_names.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            if node.level != 0 or node.module is None:
                continue  # relative import of a sibling module
            if _top(node.module) in forbidden:
                report(node, f"imports from forbidden module {node.module!r}")
            if node.module == "random":
                for alias in node.names:
                    if alias.name != "Random":
                        report(node, f"imports module-global random.{alias.name}")

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_names
            and node.attr != "Random"
        ):
            report(node, f"uses module-global {node.value.id}.{node.attr}; use random.Random")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            dynamic_import = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            first = node.args[0]
            if (
                dynamic_import
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _top(first.value) in forbidden
            ):
                report(node, f"dynamically imports forbidden module {first.value!r}")
    return problems


# --- the checker itself must be able to fail --------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import time\n",
        "import os.path\n",
        "from os import path\n",
        "from os.path import join\n",
        "import sys, asyncio\n",
        "import threading as t\n",
        "def f():\n    import socket\n",
        "x = __import__('subprocess')\n",
        "import importlib\nimportlib.import_module('signal')\n",
        "random.randint(1, 2)\n",
        "import random\nrandom.randint(1, 2)\n",
        "import random\nrandom.seed(0)\n",
        "import random\nrandom.shuffle([1, 2])\n",
        "import random\npick = random.choice\n",
        "import random as rnd\nrnd.random()\n",
        "from random import randint\n",
        "from random import Random, choice\n",
        "from random import *\n",
    ],
)
def test_checker_flags_impure_source(source: str) -> None:
    assert find_violations(source, "<fake>", FORBIDDEN_IO), source


@pytest.mark.parametrize(
    "source",
    [
        "import random\nrng = random.Random(42)\n",
        "import random\n\ndef f(rng: random.Random) -> int:\n    return rng.randint(1, 2)\n",
        "from random import Random\nrng = Random(7)\nrng.choice([1, 2])\n",
        "import sys\nimport argparse\nimport dataclasses\nfrom collections import deque\n",
        "from . import time_helpers\nfrom .log import Log\n",
        "import timeit_like_but_not_time\n",
    ],
)
def test_checker_accepts_pure_source(source: str) -> None:
    assert find_violations(source, "<fake>", FORBIDDEN_IO) == []


# --- the real packages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("package_dir", "forbidden", "min_files"),
    PACKAGES,
    ids=[p.name for p, _, _ in PACKAGES],
)
def test_package_is_pure(package_dir: Path, forbidden: frozenset[str], min_files: int) -> None:
    assert package_dir.is_dir(), f"{package_dir} does not exist"
    files = sorted(package_dir.rglob("*.py"))
    assert len(files) >= min_files, (
        f"expected at least {min_files} .py files under {package_dir}, found {len(files)}"
    )
    problems: list[str] = []
    for path in files:
        rel = str(path.relative_to(SRC.parent.parent))
        problems.extend(find_violations(path.read_text(encoding="utf-8"), rel, forbidden))
    assert not problems, "purity violations:\n" + "\n".join(problems)
