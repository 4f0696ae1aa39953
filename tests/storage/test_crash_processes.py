"""Real processes, real SIGKILLs: acked writes survive, txns stay atomic, replay is idempotent.

Bounded for CI; run longer with ``python -m raftkv.verify.storage_crash --iterations 500``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.verify.storage_crash import Acked, CrashTestFailure, check_store, run

# 150 SIGKILLs in CI, as three independent histories of 50 (they run in parallel).
KILLS_PER_RUN = 50


@pytest.mark.parametrize("seed", [20261127, 20261128, 20261129])
def test_writer_survives_hundreds_of_sigkills(seed: int) -> None:
    acked = run(iterations=KILLS_PER_RUN, seed=seed)
    # The run must have acknowledged real work, of both kinds, for the checks to mean anything.
    assert len(acked.puts) > 500 and len(acked.txns) > 150


def test_checker_notices_a_lost_acknowledged_write(tmp_path: Path) -> None:
    acked = run(iterations=2, seed=7, data_dir=str(tmp_path))
    name, (value, revision) = next(iter(acked.puts.items()))
    acked.puts["never-written"] = (value, revision)
    with pytest.raises(CrashTestFailure, match="never-written"):
        check_store(str(tmp_path), acked)
    acked.puts.pop("never-written")
    acked.puts[name] = (value, revision + 1)  # acknowledged at another revision
    with pytest.raises(CrashTestFailure, match="lost"):
        check_store(str(tmp_path), acked)


def test_checker_passes_on_the_real_history(tmp_path: Path) -> None:
    acked = run(iterations=2, seed=8, data_dir=str(tmp_path))
    assert check_store(str(tmp_path), acked) >= 1 + len(acked.puts) + len(acked.txns)
    assert isinstance(acked, Acked)
