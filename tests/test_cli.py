"""Tests for the `raftkv` command-line entry point."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from raftkv.cli import main


def test_snapshot_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["snapshot"])
    assert exc_info.value.code == 2
    assert "required: ACTION" in capsys.readouterr().err


def test_snapshot_save_wants_one_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "save", "x.db", "--endpoints", "a:1,b:2"]) == 2
    assert "one selected node" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    for command in ["snapshot", "sim", "serve", "up", "bench"]:
        assert command in out


def test_no_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc_info:
        main([])
    assert exc_info.value.code == 2


@pytest.mark.parametrize("nodes", ["0", "8", "x"])
def test_sim_rejects_bad_node_counts(nodes: str) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["sim", "--nodes", nodes])
    assert exc_info.value.code == 2


def test_sim_forwards_options_to_vopr_run_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`raftkv sim` must call raftkv.sim.vopr.run_cli with exactly these keywords."""
    calls: list[dict[str, Any]] = []

    def fake_run_cli(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 7

    fake = types.ModuleType("raftkv.sim.vopr")
    fake.run_cli = fake_run_cli  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "raftkv.sim.vopr", fake)

    rc = main(
        ["sim", "--seeds", "100", "--seed", "42", "--nodes", "5", "--ticks", "900", "--verbose"]
    )
    assert rc == 7
    assert calls == [{"seeds": 100, "seed": 42, "nodes": 5, "ticks": 900, "verbose": True}]

    calls.clear()
    assert main(["sim"]) == 7
    assert calls == [{"seeds": None, "seed": None, "nodes": None, "ticks": None, "verbose": False}]
