"""The member-agreement check of `raftkv verify`: each member's own copy at one revision.

Two independent single-member etcd processes stand in for two members of one cluster: the
same writes leave them in agreement, and one different write at the same revision makes
them disagree, which the check must name key by key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftkv.client import Client
from raftkv.verify import runner
from raftkv.verify.runner import members_disagree
from tests.etcd_process import free_port, run_etcd


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    return tmp_path / "a", tmp_path / "b"


async def _write(endpoint: str, pairs: list[tuple[str, str]]) -> int:
    async with Client([endpoint], timeout_s=5.0) as client:
        revision = 0
        for key, value in pairs:
            revision = (await client.put(key, value)).header.revision
        return revision


def test_members_with_the_same_writes_agree_and_one_different_write_is_named(
    tmp_path: Path,
) -> None:
    a, b = _dirs(tmp_path)
    with run_etcd(a) as first, run_etcd(b) as second:
        endpoints = [first.endpoint, second.endpoint]
        common = [("v/acct/0", "100"), ("v/acct/1", "100")]

        async def scenario() -> None:
            revisions = {await _write(e, common) for e in endpoints}
            assert revisions == {3}
            assert await members_disagree(endpoints, 3) is None

            await _write(first.endpoint, [("v/acct/1", "95")])
            await _write(second.endpoint, [("v/acct/1", "105")])
            anomaly = await members_disagree(endpoints, 4)
            assert anomaly is not None
            assert anomaly.checker == "agreement"
            assert f"disagree with {first.endpoint} at revision 4" in anomaly.summary
            assert "differs on 1 keys" in anomaly.explanation
            assert "v/acct/1" in anomaly.explanation and "v/acct/0" not in anomaly.explanation
            # At the earlier revision the two still agree: the check reads that revision.
            assert await members_disagree(endpoints, 3) is None

        asyncio.run(scenario())


def test_a_member_that_never_reaches_the_revision_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "MEMBER_CATCH_UP_S", 1.0)
    a, b = _dirs(tmp_path)
    with run_etcd(a) as first, run_etcd(b) as second:

        async def scenario() -> None:
            await _write(first.endpoint, [("v/r/0", "1"), ("v/r/0", "2")])
            await _write(second.endpoint, [("v/r/0", "1")])
            anomaly = await members_disagree([first.endpoint, second.endpoint], 3)
            assert anomaly is not None
            assert "applied only up to revision 2" in anomaly.explanation

        asyncio.run(scenario())


def test_a_member_not_yet_listening_is_reported_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full restart can leave a member still opening its port when the check starts:
    it is asked again until MEMBER_CATCH_UP_S, then reported, and the run goes on."""
    monkeypatch.setattr(runner, "MEMBER_CATCH_UP_S", 1.0)
    a, _ = _dirs(tmp_path)
    with run_etcd(a) as first:

        async def scenario() -> None:
            await _write(first.endpoint, [("v/r/0", "1")])
            closed = f"127.0.0.1:{free_port()}"
            anomaly = await members_disagree([first.endpoint, closed], 2)
            assert anomaly is not None
            assert f"{closed}: unreadable: " in anomaly.explanation

        asyncio.run(scenario())
