"""The lessor is pure like the Raft core: no clocks, I/O, threads or global randomness."""

from __future__ import annotations

from tests.test_purity import FORBIDDEN_IO, SRC, find_violations

LEASE_DIR = SRC / "storage" / "lease"


def test_lease_package_is_pure() -> None:
    files = sorted(LEASE_DIR.rglob("*.py"))
    assert len(files) >= 2, f"expected the lease package under {LEASE_DIR}"
    problems: list[str] = []
    for path in files:
        problems.extend(find_violations(path.read_text(encoding="utf-8"), path.name, FORBIDDEN_IO))
    assert not problems, "purity violations:\n" + "\n".join(problems)
