"""The MVCC package is deterministic: no clock, no OS calls, no global randomness."""

from __future__ import annotations

from tests.test_purity import FORBIDDEN_IO, SRC, find_violations


def test_mvcc_is_pure() -> None:
    files = sorted((SRC / "storage" / "mvcc").rglob("*.py"))
    assert len(files) >= 8
    problems: list[str] = []
    for path in files:
        problems.extend(find_violations(path.read_text(encoding="utf-8"), path.name, FORBIDDEN_IO))
    assert not problems, "purity violations:\n" + "\n".join(problems)
