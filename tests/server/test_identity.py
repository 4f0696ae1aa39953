"""A member's id (server/identity.py): derived for founders, unique per MemberAdd, learned
from the peers' member list when joining, kept in the data directory across restarts.

The in-process members here are real Nodes (transport, WAL, backend) on one event loop;
tests/cluster/test_member_replace.py runs the same with processes and etcdctl."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.raft import Message
from raftkv.server.identity import (
    IDENTITY_FILE,
    IdentityError,
    MemberIdentity,
    NoPeerReachableError,
    NotAMemberError,
    discover_identity,
    founding_identity,
    read_identity,
    write_identity,
)
from raftkv.server.node import Node
from raftkv.server.peer_rpc import PeerCall, PeerReply, decode_call, decode_reply, encode_call
from raftkv.storage.members import (
    MemberRecord,
    added_member_id_for,
    cluster_id_for,
    member_id_for,
)
from raftkv.storage.mvcc import PutRequest, RangeRequest
from tests.server.test_node import _config, _free_port, _leader, _start, _stop_all, _until, run

URL = "http://127.0.0.1:2380"

# --- Ids ----------------------------------------------------------------------------------


def test_founding_ids_are_those_of_earlier_releases() -> None:
    # Values from the derivation as released: founding members of clusters bootstrapped
    # before unique MemberAdd ids must keep the ids (and cluster id) in their data.
    first = member_id_for([URL], "etcd-cluster")
    second = member_id_for(["http://10.0.0.2:2380", "http://10.0.0.1:2380"], "raftkv-up")
    assert first == 0x746AEE220BEF54EC
    assert second == 0xAF67EB7386EB56DD
    assert cluster_id_for([first, second], "etcd-cluster") == 0x952C8B7A7B74DAB5


def test_founding_identity_is_what_every_founder_computes() -> None:
    cluster = {"a": ("http://127.0.0.1:1",), "b": ("http://127.0.0.1:2",)}
    identities = [founding_identity(urls, cluster, "token") for urls in cluster.values()]
    ids = [member_id_for(urls, "token") for urls in cluster.values()]
    assert [identity.member_id for identity in identities] == ids
    assert {identity.cluster_id for identity in identities} == {cluster_id_for(ids, "token")}


def test_an_added_member_id_differs_per_add_and_from_the_founding_one() -> None:
    ids = {
        added_member_id_for([URL], "token", now_ns, nonce)
        for now_ns in (1, 2)
        for nonce in (10, 11)
    }
    assert len(ids) == 4
    assert member_id_for([URL], "token") not in ids
    assert 0 not in ids


# --- The identity file --------------------------------------------------------------------


def test_the_identity_file_round_trips_and_a_missing_one_is_none(tmp_path: Path) -> None:
    assert read_identity(str(tmp_path)) is None
    identity = MemberIdentity(0xABC, 0xDEF, ((7, ("http://127.0.0.1:7",)), (8, (URL,))))
    write_identity(str(tmp_path), identity)
    assert read_identity(str(tmp_path)) == identity
    assert [p.name for p in tmp_path.iterdir()] == [IDENTITY_FILE]  # no temporary left


def test_a_damaged_identity_file_refuses_to_guess(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_text('{"member_id": "zz"')
    with pytest.raises(IdentityError, match=IDENTITY_FILE):
        read_identity(str(tmp_path))


# --- The member_list peer call ------------------------------------------------------------


def test_member_list_call_and_reply_round_trip() -> None:
    assert decode_call(encode_call(PeerCall("member_list"))).kind == "member_list"
    members = (
        MemberRecord(5, "m1", (URL,), ("http://127.0.0.1:2379",)),
        MemberRecord(6, "", ("http://127.0.0.1:2480",), (), is_learner=True),
    )
    reply = decode_reply(PeerReply(cluster_id=0x1234, members=members).encode())
    assert reply.cluster_id == 0x1234 and reply.members == members


def test_a_reply_without_a_member_list_decodes_as_empty() -> None:
    # The replies of members that predate member_list carry neither field.
    old = {"member": 3, "ttl": 0, "granted": 0, "keys": []}
    reply = decode_reply(json.dumps(old).encode())
    assert reply.member_id == 3 and reply.members == () and reply.cluster_id == 0


# --- Discovery ----------------------------------------------------------------------------


def test_discovery_without_a_reachable_peer_names_the_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MEMBER_DISCOVERY_TIMEOUT_S", 1.0)
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    own = f"http://127.0.0.1:{_free_port()}"
    cluster = {"m1": (dead,), "me": (own,)}
    with pytest.raises(NoPeerReachableError) as caught:
        asyncio.run(discover_identity("me", (own,), cluster, None))
    assert dead in str(caught.value) and "--initial-cluster" in str(caught.value)


def test_discovery_needs_another_member_in_the_initial_cluster() -> None:
    own = "http://127.0.0.1:1"
    with pytest.raises(NoPeerReachableError, match="names no member but this one"):
        asyncio.run(discover_identity("me", (own,), {"me": (own,)}, None))


def test_discovery_of_a_peer_that_is_not_raftkv_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MEMBER_DISCOVERY_TIMEOUT_S", 1.0)

    async def scenario() -> str:
        async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        own = f"http://127.0.0.1:{_free_port()}"
        try:
            with pytest.raises(NoPeerReachableError) as caught:
                await discover_identity("me", (own,), {"web": (url,), "me": (own,)}, None)
        finally:
            server.close()
            await server.wait_closed()
        assert url in str(caught.value)
        return str(caught.value)

    assert "bad magic" in asyncio.run(scenario())


@run
async def test_a_joiner_with_urls_that_differ_from_its_record_is_told_so(tmp_path: Path) -> None:
    nodes = await _start(tmp_path, 3)
    try:
        added = f"http://127.0.0.1:{_free_port()}"
        extra = f"http://127.0.0.1:{_free_port()}"
        await _leader(nodes).member_add([added, extra], is_learner=True)
        cluster = {**nodes[0].config.initial_cluster}
        with pytest.raises(NotAMemberError) as caught:
            await discover_identity("m9", (added,), {**cluster, "m9": (added,)}, None)
        message = str(caught.value)
        assert added in message and extra in message and "must equal" in message
        assert f"{nodes[0].cluster_id:x}" in message
    finally:
        await _stop_all(nodes)


@run
async def test_a_joiner_restarted_before_its_snapshot_reaches_the_runtime_added_peers(
    tmp_path: Path,
) -> None:
    """Its --initial-cluster names only a member that was itself added at runtime (whose id
    no URL derivation gives): the peers it learned are kept, so a restart before the
    leader's snapshot arrived still reaches the cluster."""
    nodes = await _start(tmp_path, 3)
    try:
        leader = _leader(nodes)
        await leader.propose(PutRequest(b"before", b"join"))
        first_url = (f"http://127.0.0.1:{_free_port()}",)
        first_record = await leader.member_add(list(first_url), is_learner=True)
        first_cluster = {**nodes[0].config.initial_cluster, "a": first_url}
        first = Node(_config(tmp_path, "a", first_cluster, initial_cluster_state="existing"))
        await first.start()
        nodes.append(first)
        assert first.member_id == first_record.id != member_id_for(first_url, "etcd-cluster")
        await _until(lambda: bool(first.member_store.all()))

        second_url = (f"http://127.0.0.1:{_free_port()}",)
        second_record = await leader.member_add(list(second_url), is_learner=False)
        only_first: dict[str, tuple[str, ...]] = {"a": first_url, "b": second_url}
        config = _config(tmp_path, "b", only_first, initial_cluster_state="existing")
        cut_off = Node(config)

        async def drop_snapshot(message: Message, path: str) -> None:
            return None  # as if the member died before the snapshot arrived

        cut_off._on_peer_snapshot = drop_snapshot  # type: ignore[method-assign]
        await cut_off.start()
        assert cut_off.member_id == second_record.id
        await asyncio.sleep(0.3)
        assert not cut_off.member_store.all(), "the snapshot was dropped"
        await cut_off.stop()

        second = Node(config)
        await second.start()
        nodes.append(second)
        assert second.member_id == second_record.id  # from its data, not asked again
        members = {m.id for m in leader.members()}
        assert set(second.transport.peer_ids()) <= members - {second.member_id}
        await _until(lambda: second.kv.range(RangeRequest(b"before")).count == 1)
    finally:
        await _stop_all(nodes)


@run
async def test_member_list_is_answered_by_followers_too(tmp_path: Path) -> None:
    nodes = await _start(tmp_path, 3)
    try:
        follower = next(node for node in nodes if not node.is_leader)
        own = f"http://127.0.0.1:{_free_port()}"
        member = await _leader(nodes).member_add([own], is_learner=False)
        await _until(lambda: follower.member_store.get(member.id) is not None)
        cluster = {"f": follower.config.initial_advertise_peer_urls, "me": (own,)}
        identity = await discover_identity("me", (own,), cluster, None)
        assert identity.member_id == member.id
        assert identity.cluster_id == follower.cluster_id != 0
        assert {peer for peer, _ in identity.peers} == {node.member_id for node in nodes}
    finally:
        await _stop_all(nodes)
