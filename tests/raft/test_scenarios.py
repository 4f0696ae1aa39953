"""Whole-cluster scenarios for the Raft core, driven through the in-memory Network.

Section numbers refer to the Raft paper (Ongaro and Ousterhout, "In Search of
an Understandable Consensus Algorithm", extended version) and, where marked,
to Ongaro's thesis. On top of the assertions below, the harness checks on
every Ready that commit indexes never decrease, that no two nodes apply
different entries at one index, that each term has at most one leader, and
that every new leader holds all entries committed before its term.
"""

from __future__ import annotations

import pytest

from raftkv import limits
from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    ReadIndexDropped,
    ReadState,
    StateType,
)
from raftkv.raft.log import RaftLog
from raftkv.raft.messages import entry_size_bytes
from raftkv.raft.tracker import ProgressState
from tests.raft.harness import Network

M = MessageType
LEADER = StateType.LEADER
FOLLOWER = StateType.FOLLOWER

ELECTION = 10  # election_ticks used by every scenario unless stated


def add_learner(node: int) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_LEARNER, node)


def add_voter(node: int) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_NODE, node)


def remove(node: int) -> ConfChange:
    return ConfChange(ConfChangeType.REMOVE_NODE, node)


def elected_cluster(size: int = 3, **kwargs: object) -> Network:
    """A bootstrapped cluster in which node 1 won the first election (term 2)."""
    net = Network.bootstrap(range(1, size + 1), **kwargs)  # type: ignore[arg-type]
    net.elect(1)
    return net


def propose_and_commit(net: Network, node: int, *payloads: bytes) -> None:
    for payload in payloads:
        net.propose(node, payload)
        net.stabilize()


# -- Leader election (§5.2) ----------------------------------------------------


def test_single_campaign_wins_and_commits_an_empty_entry() -> None:
    """§5.2: a candidate with a majority of votes becomes leader; followers follow it.

    A new leader appends an empty entry of its term (§8, "no-op"), which every
    node then commits: it is how the leader learns its commit index.
    """
    net = Network.bootstrap([1, 2, 3])
    net.campaign(1)
    net.stabilize()

    assert net.state(1) is LEADER
    assert [net.state(n) for n in (2, 3)] == [FOLLOWER, FOLLOWER]
    assert {net.term(n) for n in (1, 2, 3)} == {2}
    assert {net.raft(n).lead for n in (1, 2, 3)} == {1}
    empty_entry = Entry(term=2, index=2)
    for node in (1, 2, 3):
        assert net.log_entries(node) == [empty_entry]
        assert net.commit(node) == 2
        assert net.node(node).applied_index == 2


def test_single_node_cluster_elects_itself_at_once() -> None:
    """§5.2: a cluster of one is its own majority; no messages are needed."""
    net = Network.bootstrap([1])
    net.campaign(1)
    net.stabilize()
    assert net.state(1) is LEADER
    assert net.commit(1) == 2
    assert net.sent == []


def test_simultaneous_candidates_yield_one_leader() -> None:
    """§5.2: two nodes campaign at once; each voter grants one vote per term, one wins."""
    net = Network.bootstrap([1, 2, 3])
    net.campaign(1)
    net.campaign(3)
    net.stabilize()

    leaders = [n for n in (1, 2, 3) if net.state(n) is LEADER]
    assert len(leaders) == 1
    assert {net.raft(n).lead for n in (1, 2, 3)} == {leaders[0]}


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
def test_split_vote_is_resolved_by_randomized_timeouts(pre_vote: bool) -> None:
    """§5.2: a split vote leaves no leader; randomized election timeouts break the tie.

    In a 4-node cluster, 1 can only reach 2 and 3 can only reach 4, so both
    candidates get 2 of the 3 votes they need. Once the network heals, the
    node whose randomized timeout fires first wins a later term.
    """
    net = Network.bootstrap([1, 2, 3, 4], pre_vote=pre_vote)
    net.cut(1, 3)
    net.cut(1, 4)
    net.cut(3, 2)
    net.campaign(1)
    net.campaign(3)
    net.stabilize()
    assert net.leader() is None

    net.heal()
    net.tick_until(lambda: net.leader() is not None, limit=4 * ELECTION)
    leader = net.leader()
    assert leader is not None
    net.tick_all(2)
    assert {net.raft(n).lead for n in (1, 2, 3, 4)} == {leader}
    assert net.term(leader) >= 2


def test_candidate_with_stale_log_loses() -> None:
    """§5.4.1: a voter denies its vote to a candidate whose log is less up-to-date."""
    net = elected_cluster(3)
    net.isolate(3)
    propose_and_commit(net, 1, b"a", b"b")
    net.heal()
    net.cut(1, 3)  # 3 can only ask 2, which has the newer log

    net.campaign(3)
    net.stabilize()
    assert net.state(3) is not LEADER
    assert net.state(1) is LEADER


# -- Pre-vote and check-quorum (thesis §9.6) -----------------------------------


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum", "disrupts"),
    [(True, True, False), (False, False, True)],
    ids=["pre-vote-protects-leader", "without-pre-vote-term-is-bumped"],
)
def test_rejoining_partitioned_follower(pre_vote: bool, check_quorum: bool, disrupts: bool) -> None:
    """Thesis §9.6: a follower that was partitioned away must not depose a healthy leader.

    The partitioned follower ticks far past its election timeout. With
    pre-vote it never learns of a majority willing to vote, so its term stays
    put; when it rejoins, the leader keeps its term and leadership. Without
    pre-vote (and check-quorum) the same follower has inflated its term and
    forces the leader to step down: the contrast shows the check can fail.
    """
    net = elected_cluster(3, pre_vote=pre_vote, check_quorum=check_quorum)
    leader_term = net.term(1)
    net.isolate(3)
    propose_and_commit(net, 1, b"while-3-was-away")
    net.tick(3, 10 * ELECTION)
    if pre_vote:
        assert net.term(3) == leader_term
    else:
        assert net.term(3) > leader_term

    net.heal()
    net.tick_all(4 * ELECTION)

    if disrupts:
        assert net.term(1) > leader_term  # the old leader was deposed
    else:
        assert net.state(1) is LEADER
        assert net.term(1) == leader_term
        assert net.raft(3).lead == 1
        assert net.node(3).applied_data() == [b"while-3-was-away"]
    assert net.leader() is not None


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    """Thesis §6.2: with check-quorum, a leader that hears from no majority steps down.

    The rest of the cluster elects a new leader in a higher term.
    """
    net = elected_cluster(3)
    net.isolate(1)
    # The first check after isolation still sees the last round's activity;
    # the second one finds no active quorum.
    ticks = net.tick_until(lambda: net.state(1) is not LEADER, limit=2 * ELECTION, nodes=[1])
    assert ELECTION <= ticks <= 2 * ELECTION
    assert net.raft(1).lead == 0

    net.tick_until(lambda: LEADER in (net.state(2), net.state(3)), limit=4 * ELECTION)
    new_leader = net.leader()
    assert new_leader in (2, 3)
    assert net.term(new_leader) > 2


def test_check_quorum_lease_ignores_vote_requests() -> None:
    """Thesis §6.2: a follower that heard from its leader recently ignores vote requests."""
    net = elected_cluster(3, pre_vote=False)
    net.campaign(2)  # a disruptive, non-transfer campaign at term 3
    net.stabilize()
    assert net.state(1) is LEADER
    assert net.term(1) == 2
    assert net.term(3) == 2


# -- Log replication (§5.3) ----------------------------------------------------


def test_figure_7_followers_converge_to_the_leader_log() -> None:
    """§5.3, Figure 7: a new leader makes every follower's log identical to its own.

    Followers (a)-(f) of Figure 7 miss entries, hold extra uncommitted
    entries, or both. The term-8 leader finds each follower's last matching
    entry (using the fast backtracking hint, one rejection per follower),
    deletes conflicting suffixes and appends its own entries.
    """
    logs = {
        1: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6],  # the leader of term 8
        2: [1, 1, 1, 4, 4, 5, 5, 6, 6],  # (a)
        3: [1, 1, 1, 4],  # (b)
        4: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # (c)
        5: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # (d)
        6: [1, 1, 1, 4, 4, 4, 4],  # (e)
        7: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # (f)
    }
    net = Network.with_logs(logs, term=7)
    net.campaign(1)
    net.stabilize()

    assert net.state(1) is LEADER
    assert net.term(1) == 8
    leader_log = net.log(1)
    assert [term for _, term in leader_log] == logs[1] + [8]
    for node in logs:
        assert net.log(node) == leader_log, f"follower {node} did not converge"
        assert net.log_entries(node) == net.log_entries(1)
        assert net.commit(node) == 11
    for node in logs:
        rejections = net.messages(frm=node, type=M.APP_RESP)
        assert sum(m.reject for m in rejections) <= 1, f"follower {node} backtracked slowly"


def figure_8_up_to_c() -> Network:
    """Figure 8 (a)-(c), with indexes shifted by one for the bootstrap entry at index 1.

    (a) S1 leads term 2 and replicates its entry 2/2 to S2 only.
    (b) S1 crashes; S5 wins term 3 with votes of S3, S4 and itself and
        appends 3/2, which reaches no one.
    (c) S5 crashes; S1 restarts and wins term 4. It replicates its old entry
        2/2 to a majority, but its term-4 entry 4/3 stays on S1 alone.
    """
    net = Network.bootstrap(
        [1, 2, 3, 4, 5], pre_vote=False, check_quorum=False, max_size_per_msg_bytes=1
    )
    # (a)
    for follower in (3, 4, 5):
        net.drop(frm=1, to=follower, type=M.APP)
    net.elect(1)
    assert net.term(1) == 2
    assert net.log(2)[-1] == (2, 2) and net.log(3)[-1] == (1, 1)
    # (b)
    net.crash(1)
    net.heal()
    net.drop(frm=5, type=M.APP)
    net.elect(5)
    assert net.term(5) == 3 and net.log(5)[-1] == (2, 3)
    net.crash(5)
    net.heal()
    # (c)
    net.restart(1)

    def would_replicate_term_4(m: Message) -> bool:
        # Lose every append that would make a follower accept a term-4 entry;
        # appends it would reject still arrive, so the leader can probe.
        return (
            m.type is M.APP
            and any(e.term == 4 for e in m.entries)
            and net.raft(m.to).log.match_term(m.index, m.log_term)
        )

    net.add_filter(would_replicate_term_4)
    net.campaign(1)  # term 3: S3 and S4 already voted for S5 in term 3
    net.stabilize()
    assert net.state(1) is not LEADER
    net.elect(1)  # term 4
    assert net.term(1) == 4
    net.tick(1, 3)
    assert net.log(1)[1:] == [(2, 2), (3, 4)]
    assert net.log(3)[1:] == [(2, 2)]
    assert net.log(4)[1:] == [(2, 2)]
    return net


def test_figure_8_old_term_entry_on_a_majority_is_not_committed() -> None:
    """§5.4.2, Figure 8 (c)-(d): a leader never commits an older term's entry by counting.

    In (c) the term-2 entry at index 2 is on a majority, yet S1 (term 4)
    must not treat it as committed. Indeed, in (d) S1 crashes and S5 is
    elected with S2-S4's votes and overwrites index 2 with its term-3 entry.
    Nothing that was committed is lost, because index 2 never was.
    """
    net = figure_8_up_to_c()
    raft = net.raft(1)
    assert raft.tracker.committed() >= 2  # a majority holds index 2 ...
    assert net.commit(1) == 1  # ... but it is not committed
    assert all(2 not in net.node(n).commit_history for n in net.nodes)
    assert 2 not in net.applied_everywhere
    net.remove_filter(net.filters[-1])

    # (d)
    net.crash(1)
    net.restart(5)
    net.campaign(5)  # term 4: every voter already voted for S1 in term 4
    net.stabilize()
    net.elect(5)
    assert net.term(5) == 5
    for node in (2, 3, 4, 5):
        assert net.log(node)[1] == (2, 3), "S5's term-3 entry replaced the term-2 entry"
    net.restart(1)
    net.tick(5, 3)
    assert net.log(1) == net.log(5)
    assert net.applied_everywhere[2][0] == 3


def test_figure_8_current_term_entry_commits_the_old_one() -> None:
    """§5.4.2, Figure 8 (e): an entry of the leader's term, once on a majority, commits
    everything before it, and from then on no leader can be elected without it.

    S1's commit index jumps from 1 straight to 3; it is never 2.
    """
    net = figure_8_up_to_c()
    net.remove_filter(net.filters[-1])
    net.tick(1, 3)
    assert net.commit(1) == 3
    assert 2 not in net.node(1).commit_history
    assert net.applied_everywhere[2][0] == 2

    net.crash(1)
    net.restart(5)
    for _ in range(3):
        net.campaign(5)
        net.stabilize()
        assert net.state(5) is not LEADER, "S5 lacks committed entries and must lose"
    net.elect(2)
    net.restart(1)
    net.tick(2, 3)
    for node in net.nodes:
        assert net.log(node)[1:3] == [(2, 2), (3, 4)]


def test_follower_forwards_proposals_to_the_leader() -> None:
    """§5.1: clients may talk to any node; a follower forwards proposals to the leader."""
    net = elected_cluster(3)
    net.propose(2, b"via-follower")
    net.stabilize()
    assert [m.type for m in net.messages(frm=2, to=1, type=M.PROP)] == [M.PROP]
    for node in (1, 2, 3):
        assert net.node(node).applied_data() == [b"via-follower"]


def test_proposal_without_a_leader_is_dropped() -> None:
    """A node that knows no leader cannot append or forward: ProposalDropped."""
    net = Network.bootstrap([1, 2, 3])
    with pytest.raises(ProposalDropped):
        net.propose(1, b"x")
    net.isolate(1)
    net.campaign(1)
    net.stabilize()
    assert net.state(1) is StateType.PRE_CANDIDATE
    with pytest.raises(ProposalDropped):
        net.propose(1, b"x")


def test_uncommitted_size_bound_drops_proposals() -> None:
    """The leader refuses proposals while too many payload bytes are uncommitted.

    The first proposal is always accepted (so one large entry makes progress);
    once entries commit and are applied, the budget is released.
    """
    net = elected_cluster(3, max_uncommitted_entries_bytes=100)
    net.propose(1, b"x" * 60)
    with pytest.raises(ProposalDropped, match="uncommitted"):
        net.propose(1, b"y" * 60)
    net.propose(1, b"z" * 40)  # 60 + 40 fits exactly
    net.stabilize()
    net.propose(1, b"y" * 60)
    net.stabilize()
    assert net.node(3).applied_data() == [b"x" * 60, b"z" * 40, b"y" * 60]


def test_crashed_follower_recovers_from_its_storage() -> None:
    """§5.1/§5.3: a restarted follower keeps its persisted log and term and catches up."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a", b"b")
    net.crash(3)
    propose_and_commit(net, 1, b"c")
    net.restart(3)
    assert net.term(3) == 2
    assert net.node(3).applied_data() == []  # nothing is applied before Ready
    net.tick(1, 2)
    assert net.node(3).applied_data() == [b"a", b"b", b"c"]
    assert net.log(3) == net.log(1)


def test_crashed_leader_is_replaced_and_rejoins_as_follower() -> None:
    """§5.2: followers that stop hearing from the leader elect another; the old leader follows."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a")
    net.crash(1)
    net.tick_until(lambda: net.leader() is not None, limit=4 * ELECTION)
    new_leader = net.leader()
    assert new_leader in (2, 3)
    assert new_leader is not None
    propose_and_commit(net, new_leader, b"b")
    net.restart(1)
    net.tick_all(3)
    assert net.state(1) is FOLLOWER
    assert net.raft(1).lead == new_leader
    assert net.node(1).applied_data() == [b"a", b"b"]


# -- Snapshots (§7) ------------------------------------------------------------


def test_lagging_follower_is_caught_up_with_a_snapshot() -> None:
    """§7: when the entries a follower needs are compacted, the leader sends a snapshot."""
    net = elected_cluster(3)
    net.isolate(3)
    payloads = [f"entry-{i}".encode() for i in range(20)]
    propose_and_commit(net, 1, *payloads)
    net.tick_all(2 * ELECTION)  # the leader notices 3 is inactive meanwhile
    assert net.state(1) is LEADER
    snapshot = net.compact(1)
    assert net.raft(1).log.first_index() == snapshot.metadata.index + 1

    net.heal()
    net.tick(1, 3)
    received = net.node(3).snapshots_received
    assert [s.metadata.index for s in received] == [snapshot.metadata.index]
    assert received[0].metadata.conf_state == ConfState(voters=frozenset({1, 2, 3}))
    assert net.node(3).applied_data() == payloads
    assert net.node(3).applied_index == net.node(1).applied_index

    propose_and_commit(net, 1, b"after-snapshot")
    assert net.node(3).applied_data() == [*payloads, b"after-snapshot"]
    assert net.raft(1).tracker.progress[3].state is ProgressState.REPLICATE


def test_restart_from_a_compacted_storage() -> None:
    """§7: a node restarts from its own snapshot plus the entries after it."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a", b"b")
    net.compact(2)
    propose_and_commit(net, 1, b"c")
    net.crash(2)
    net.restart(2)
    net.stabilize()
    assert net.node(2).applied_data() == [b"a", b"b", b"c"]


# -- Leadership transfer (thesis §3.10) ----------------------------------------


def test_transfer_to_an_up_to_date_follower() -> None:
    """Thesis §3.10: the leader sends TimeoutNow; the transferee wins the next term at once."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a")
    net.transfer_leader(1, 2)
    net.stabilize()
    assert [m.to for m in net.messages(frm=1, type=M.TIMEOUT_NOW)] == [2]
    assert net.state(2) is LEADER
    assert net.term(2) == 3
    assert net.state(1) is FOLLOWER
    propose_and_commit(net, 2, b"b")
    assert net.node(1).applied_data() == [b"a", b"b"]


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    """Thesis §3.10: the leader first brings the transferee's log up to date."""
    net = elected_cluster(3)
    net.isolate(3)
    propose_and_commit(net, 1, b"a", b"b", b"c")
    net.heal()
    mark = len(net.sent)
    net.transfer_leader(1, 3)
    net.stabilize()
    timeout_now = net.messages(frm=1, type=M.TIMEOUT_NOW, since=mark)
    assert len(timeout_now) == 1
    position = net.sent.index(timeout_now[0])
    acks = [m for m in net.sent[mark:position] if m.frm == 3 and m.type is M.APP_RESP]
    assert acks and not acks[-1].reject and acks[-1].index == 5
    assert net.state(3) is LEADER
    assert net.node(3).applied_data() == [b"a", b"b", b"c"]


def test_transfer_requested_on_a_follower_is_forwarded() -> None:
    """An operator may ask any node to move leadership; followers forward the request."""
    net = elected_cluster(3)
    net.transfer_leader(2, 3)
    net.stabilize()
    assert net.state(3) is LEADER
    net.transfer_leader(2, 2)
    net.stabilize()
    assert net.state(2) is LEADER


def test_transfer_to_self_or_a_learner_is_ignored() -> None:
    """Only a voter other than the leader can take over."""
    net = Network.bootstrap([1, 2, 3], learners=[4])
    net.elect(1)
    net.transfer_leader(1, 1)
    net.transfer_leader(1, 4)
    net.stabilize()
    assert net.raft(1).lead_transferee == 0
    assert net.state(1) is LEADER
    assert net.messages(type=M.TIMEOUT_NOW) == []


def test_proposals_are_dropped_while_a_transfer_is_pending_and_it_aborts() -> None:
    """Thesis §3.10: during a transfer the leader stops accepting proposals; if the
    transfer does not finish within an election timeout, the leader aborts it and
    accepts proposals again.
    """
    net = elected_cluster(3)
    net.isolate(3)
    net.transfer_leader(1, 3)
    net.stabilize()
    assert net.raft(1).lead_transferee == 3
    with pytest.raises(ProposalDropped, match="transfer"):
        net.propose(1, b"during-transfer")

    net.tick(1, ELECTION - 1)
    with pytest.raises(ProposalDropped, match="transfer"):
        net.propose(1, b"during-transfer")
    net.tick(1)
    assert net.raft(1).lead_transferee == 0
    assert net.state(1) is LEADER
    net.propose(1, b"after-abort")
    net.stabilize()
    assert net.node(2).applied_data() == [b"after-abort"]


# -- ReadIndex (thesis §6.4) ---------------------------------------------------


def test_read_index_on_the_leader() -> None:
    """Thesis §6.4: the leader confirms leadership with a heartbeat round, then answers
    with its commit index."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a")
    net.read_index(1, b"ctx-1")
    assert net.node(1).read_states == []  # not before a quorum confirms
    net.stabilize()
    assert net.node(1).read_states == [ReadState(index=3, context=b"ctx-1")]
    heartbeats = net.messages(frm=1, type=M.HEARTBEAT)
    assert {m.to for m in heartbeats if m.context == b"ctx-1"} == {2, 3}


def test_read_index_on_a_single_node_is_immediate() -> None:
    """Thesis §6.4: a single voter is its own quorum."""
    net = Network.bootstrap([1])
    net.elect(1)
    net.read_index(1, b"r")
    net.stabilize()
    assert net.node(1).read_states == [ReadState(index=2, context=b"r")]


def test_read_index_forwarded_from_a_follower() -> None:
    """Thesis §6.4: a follower asks the leader for a read index and serves the read itself."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a")
    net.read_index(2, b"from-2")
    net.stabilize()
    assert net.node(2).read_states == [ReadState(index=3, context=b"from-2")]
    assert net.node(1).read_states == []
    assert net.node(2).applied_index >= 3


def test_read_index_across_a_leader_change() -> None:
    """Thesis §6.4: a deposed leader cut off from the majority can never confirm a read,
    while the new leader's read index covers every write it committed.
    """
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"old")
    net.isolate(1)
    net.tick_until(lambda: LEADER in (net.state(2), net.state(3)), limit=4 * ELECTION, nodes=[2, 3])
    new_leader = 2 if net.state(2) is LEADER else 3
    propose_and_commit(net, new_leader, b"new-1", b"new-2")
    write_index = net.raft(new_leader).log.last_index()
    assert net.commit(new_leader) == write_index

    assert net.state(1) is LEADER  # it does not know yet
    net.read_index(1, b"stale")
    net.stabilize()
    assert net.node(1).read_states == []

    net.read_index(new_leader, b"fresh")
    net.stabilize()
    [fresh] = net.node(new_leader).read_states
    assert fresh.context == b"fresh"
    assert fresh.index >= write_index

    net.heal()
    net.tick_all(3)
    assert net.state(1) is FOLLOWER
    assert net.node(1).read_states == []


def test_new_leader_defers_read_index_until_its_term_commits() -> None:
    """Thesis §6.4: until an entry of its own term commits, a new leader's commit index
    may be stale, so it holds ReadIndex requests back."""
    net = Network.bootstrap([1, 2, 3])
    net.drop(to=1, type=M.APP_RESP)
    net.elect(1)
    assert net.commit(1) == 1  # the empty entry of term 2 is not committed
    net.read_index(1, b"early")
    net.stabilize()
    assert net.node(1).read_states == []
    assert not [m for m in net.messages(frm=1, type=M.HEARTBEAT) if m.context == b"early"]

    net.heal()
    net.tick(1)
    assert net.commit(1) == 2
    assert net.node(1).read_states == [ReadState(index=2, context=b"early")]


# -- Membership changes (thesis §4.1, one server at a time) --------------------


def test_add_a_learner_then_promote_it_to_voter() -> None:
    """Thesis §4.2.1: a new server first catches up as a non-voting learner, then is
    promoted; from then on it counts towards the majority."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"a")
    net.add_node(4)
    net.propose_conf_change(1, add_learner(4))
    net.stabilize()

    assert len(net.node(4).snapshots_received) == 1
    assert net.node(4).applied_data() == [b"a"]
    expected = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    for node in (1, 2, 3, 4):
        assert net.raft(node).tracker.conf_state() == expected

    net.propose_conf_change(1, add_voter(4))
    net.stabilize()
    expected = ConfState(voters=frozenset({1, 2, 3, 4}))
    for node in (1, 2, 3, 4):
        assert net.raft(node).tracker.conf_state() == expected

    net.isolate(2)
    propose_and_commit(net, 1, b"needs-4")  # 1, 3 and 4 are 3 of 4 voters
    assert net.node(4).applied_data() == [b"a", b"needs-4"]
    net.isolate(3)
    commit = net.commit(1)
    propose_and_commit(net, 1, b"no-majority")  # 1 and 4 are only 2 of 4
    assert net.commit(1) == commit


def test_remove_a_follower() -> None:
    """Thesis §4.1: after removing a follower the leader stops replicating to it, and
    the removed node (with pre-vote and check-quorum) cannot disrupt the cluster."""
    net = elected_cluster(3)
    net.propose_conf_change(1, remove(3))
    net.stabilize()
    for node in (1, 2):
        assert net.raft(node).tracker.voters == frozenset({1, 2})
    mark = len(net.sent)
    propose_and_commit(net, 1, b"after-removal")
    assert net.node(2).applied_data() == [b"after-removal"]
    assert net.messages(frm=1, to=3, since=mark) == []

    term = net.term(1)
    net.tick_all(5 * ELECTION)
    assert net.state(1) is LEADER
    assert net.term(1) == term


def test_remove_the_leader() -> None:
    """Thesis §4.2.2: a leader removed from the configuration stops leading once the
    change commits, and the remaining voters elect a leader among themselves."""
    net = elected_cluster(3)
    propose_and_commit(net, 1, b"with-1")
    net.propose_conf_change(1, remove(1))
    mark = len(net.sent)
    net.stabilize()
    assert 1 not in net.raft(1).tracker.voters

    def handed_over() -> bool:
        return net.state(1) is not LEADER and LEADER in (net.state(2), net.state(3))

    net.tick_until(handed_over, limit=4 * ELECTION)
    new_leader = 2 if net.state(2) is LEADER else 3
    net.stabilize()
    for node in (2, 3):
        assert net.raft(node).tracker.voters == frozenset({2, 3})
    propose_and_commit(net, new_leader, b"without-1")
    assert net.node(2).applied_data() == net.node(3).applied_data() == [b"with-1", b"without-1"]
    net.tick_all(5 * ELECTION)
    assert net.state(1) is not LEADER  # a removed node never campaigns
    campaigns = [m for m in net.messages(frm=1, since=mark) if m.type in (M.PRE_VOTE, M.VOTE)]
    assert campaigns == []
    assert net.state(new_leader) is LEADER


def test_learners_never_campaign() -> None:
    """Thesis §4.2.1: a learner has no vote and never starts an election."""
    net = Network.bootstrap([1, 2, 3], learners=[4])
    net.tick(4, 10 * ELECTION)
    net.campaign(4)
    net.stabilize()
    assert net.state(4) is FOLLOWER
    assert net.messages(frm=4) == []


def test_learners_do_not_count_towards_quorum() -> None:
    """Thesis §4.2.1: learners receive the log but neither commit entries nor keep a
    leader alive under check-quorum."""
    net = Network.bootstrap([1, 2], learners=[3, 4])
    net.elect(1)
    net.isolate(2)
    commit = net.commit(1)
    propose_and_commit(net, 1, b"x")
    assert net.commit(1) == commit
    for learner in (3, 4):
        assert net.log(learner)[-1] == net.log(1)[-1]  # it holds the entry ...
    # ... but 1 of 2 voters is no majority, so the leader steps down.
    net.tick_until(lambda: net.state(1) is not LEADER, limit=2 * ELECTION, nodes=[1, 3, 4])


def test_conf_change_while_one_is_pending_is_refused() -> None:
    """Thesis §4.1: one change at a time; the next may start once the previous is applied."""
    net = elected_cluster(3)
    net.propose_conf_change(1, add_learner(4))
    with pytest.raises(ProposalDropped, match="pending"):
        net.propose_conf_change(1, add_learner(5))
    net.stabilize()
    net.propose_conf_change(1, add_learner(5))
    net.stabilize()
    assert net.raft(1).tracker.learners == frozenset({4, 5})


def test_new_leader_refuses_conf_change_before_its_term_commits() -> None:
    """Thesis §4.1 (bug fix of 2015): no change until the leader committed an entry of
    its term, so it cannot overlap an uncommitted change of an earlier leader."""
    net = Network.bootstrap([1, 2, 3])
    net.drop(to=1, type=M.APP_RESP)
    net.elect(1)
    with pytest.raises(ProposalDropped):
        net.propose_conf_change(1, add_learner(4))
    net.heal()
    net.tick(1)
    net.propose_conf_change(1, add_learner(4))


def test_removing_the_last_voter_is_refused() -> None:
    """A configuration without voters could never commit anything again."""
    net = Network.bootstrap([1])
    net.elect(1)
    with pytest.raises(ProposalDropped, match="last voter"):
        net.propose_conf_change(1, remove(1))
    assert net.raft(1).tracker.voters == frozenset({1})


def test_a_batch_changing_two_voters_is_refused() -> None:
    """Thesis §4.1: two voters changed at once could produce disjoint majorities."""
    net = elected_cluster(3)
    last = net.raft(1).log.last_index()
    changes = tuple(
        Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=add_voter(node).encode())
        for node in (4, 5)
    )
    with pytest.raises(ProposalDropped, match="one change"):
        net.rawnode(1).step(Message(M.PROP, to=1, frm=1, entries=changes))
    assert net.raft(1).log.last_index() == last


def test_forwarded_invalid_conf_change_becomes_a_no_op() -> None:
    """A refused conf change forwarded by a follower is replaced by an empty entry."""
    net = elected_cluster(3)
    net.propose_conf_change(1, add_learner(4))
    net.propose_conf_change(2, add_learner(5))  # forwarded while 4's is pending
    net.stabilize()
    assert net.raft(1).tracker.learners == frozenset({4})
    last = net.log_entries(1)[-1]
    assert last.type is EntryType.NORMAL and last.data == b""


# -- Flow control --------------------------------------------------------------


def test_inflight_limit_bounds_appends_to_an_unresponsive_follower() -> None:
    """With max_inflight_msgs=2 the leader stops sending appends to a follower that does
    not acknowledge them (it is partitioned, but the leader has not noticed yet)."""
    net = elected_cluster(3, max_inflight_msgs=2)
    propose_and_commit(net, 1, b"warm-up")
    assert net.raft(1).tracker.progress[3].state is ProgressState.REPLICATE
    net.cut(1, 3)
    mark = len(net.sent)
    propose_and_commit(net, 1, *[f"p{i}".encode() for i in range(10)])
    appends = [m for m in net.messages(frm=1, to=3, type=M.APP, since=mark) if m.entries]
    assert len(appends) == 2
    assert net.raft(1).tracker.progress[3].inflights.full()
    assert net.node(2).applied_data()[-1] == b"p9"

    net.heal()
    net.tick(1, 10)
    assert net.node(3).applied_data() == net.node(1).applied_data()


def test_max_size_per_msg_bounds_entries_per_append() -> None:
    """An append carries at most max_size_per_msg_bytes of entries (at least one entry)."""
    payload_bytes = 8
    per_entry = entry_size_bytes(Entry(term=0, index=0, data=b"x" * payload_bytes))
    limit = 3 * per_entry
    net = elected_cluster(3, max_size_per_msg_bytes=limit)
    net.isolate(3)
    propose_and_commit(net, 1, *[f"data{i:04d}".encode() for i in range(10)])
    net.heal()
    mark = len(net.sent)
    net.tick(1, 5)
    appends = [m for m in net.messages(frm=1, to=3, type=M.APP, since=mark) if m.entries]
    assert len(appends) >= 4
    for message in appends:
        assert sum(entry_size_bytes(e) for e in message.entries) <= limit
        assert len(message.entries) <= 3
    assert net.node(3).applied_data() == net.node(1).applied_data()


def test_harness_catches_committing_an_old_term_entry_by_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Figure 8 checks can fail: a leader that commits by counting replicas alone
    (ignoring §5.4.2) commits index 2 in (c), and the harness reports the loss in (d)."""

    def commit_by_counting(self: RaftLog, index: int, term: int) -> bool:
        if index > self.committed:
            self.commit_to(index)
            return True
        return False

    monkeypatch.setattr(RaftLog, "maybe_commit", commit_by_counting)
    net = figure_8_up_to_c()
    assert net.commit(1) == 2  # the unsafe commit
    net.remove_filter(net.filters[-1])
    net.crash(1)
    net.restart(5)
    net.campaign(5)
    net.stabilize()
    with pytest.raises(AssertionError, match="Leader Completeness|State Machine Safety"):
        net.elect(5)
        net.tick(5, 3)


# -- Lost snapshots, reports from the transport, bounded reads -----------------


def leader_with_compacted_log_and_lagging_3() -> Network:
    net = elected_cluster(3)
    net.isolate(3)
    propose_and_commit(net, 1, b"a", b"b", b"c")
    net.compact(1)
    net.heal()
    return net


def test_lost_snapshot_is_resent_after_the_snapshot_timeout() -> None:
    """§7: a snapshot that never arrives is retried once the leader gives up waiting
    (after RAFT_SNAPSHOT_TIMEOUT_ELECTIONS election timeouts); appends stay paused
    meanwhile."""
    net = leader_with_compacted_log_and_lagging_3()
    lose_snapshots = net.drop(type=M.SNAP)
    net.tick(1)
    assert net.raft(1).tracker.progress[3].state is ProgressState.SNAPSHOT
    net.remove_filter(lose_snapshots)

    timeout = limits.RAFT_SNAPSHOT_TIMEOUT_ELECTIONS * ELECTION
    ticks = net.tick_until(
        lambda: bool(net.node(3).snapshots_received), limit=timeout + 2, nodes=[1]
    )
    assert ticks >= timeout - 1
    assert len(net.messages(frm=1, to=3, type=M.SNAP)) == 2
    assert net.node(3).applied_data() == [b"a", b"b", b"c"]


def test_failed_snapshot_report_makes_the_leader_retry() -> None:
    """When the transport reports a failed snapshot, the leader probes again at the
    next heartbeat response instead of waiting for the timeout."""
    net = leader_with_compacted_log_and_lagging_3()
    lose_snapshots = net.drop(type=M.SNAP)
    net.tick(1)
    net.remove_filter(lose_snapshots)
    net.rawnode(1).report_snapshot(3, failed=True)
    progress = net.raft(1).tracker.progress[3]
    assert progress.state is ProgressState.PROBE and progress.probe_sent
    net.tick(1, 2)
    assert len(net.node(3).snapshots_received) == 1
    assert net.node(3).applied_data() == [b"a", b"b", b"c"]


def test_report_unreachable_returns_a_follower_to_probing() -> None:
    """An unreachable follower is probed instead of being sent optimistic appends."""
    net = elected_cluster(3)
    assert net.raft(1).tracker.progress[2].state is ProgressState.REPLICATE
    net.rawnode(1).report_unreachable(2)
    assert net.raft(1).tracker.progress[2].state is ProgressState.PROBE
    propose_and_commit(net, 1, b"x")
    assert net.raft(1).tracker.progress[2].state is ProgressState.REPLICATE
    assert net.node(2).applied_data() == [b"x"]


def test_pending_read_index_requests_are_bounded() -> None:
    """A new leader queues reads until its term commits, but only up to
    max_pending_read_index; beyond that, read_index is refused."""
    net = Network.bootstrap([1, 2, 3], max_pending_read_index=2)
    net.drop(to=1, type=M.APP_RESP)
    net.elect(1)
    net.read_index(1, b"r1")
    net.read_index(1, b"r2")
    with pytest.raises(ReadIndexDropped, match="too many"):
        net.read_index(1, b"r3")
    net.heal()
    net.tick(1)
    assert [s.context for s in net.node(1).read_states] == [b"r1", b"r2"]


def test_stale_voter_learns_commit_from_vote_rejection() -> None:
    """A demoted leader whose log is longer must not hold a stale voter hostage.

    Node 1 leads {1, 2} and demotes itself; the change commits, but node 2 never hears
    so, and node 1 also holds an entry node 2 lacks. Node 2's configuration still
    needs node 1's vote, which node 1 refuses (its log is longer). The refusal carries
    node 1's commit index and term; node 2 holds that entry, commits and applies the
    change, and then wins alone in the new configuration {2}.
    """
    net = elected_cluster(2)
    net.propose_conf_change(1, add_learner(1))
    demotion_index = net.raft(1).log.last_index()
    net.propose(1, b"only-on-1")

    def withhold_from_2(m: Message) -> bool:
        if m.frm != 1 or m.to != 2:
            return False
        late_entries = any(entry.index > demotion_index for entry in m.entries)
        return late_entries or m.commit >= demotion_index or m.type is M.TIMEOUT_NOW

    net.add_filter(withhold_from_2)
    net.stabilize()
    assert 1 not in net.raft(1).tracker.voters  # node 1 applied its demotion
    assert net.commit(2) < demotion_index  # node 2 never learned it committed
    assert net.raft(2).tracker.voters == frozenset({1, 2})
    net.drop(frm=2, to=1)
    net.tick_all(3 * ELECTION)  # check-quorum: node 1 stops leading
    assert net.state(1) is not LEADER
    net.heal()
    net.tick_until(lambda: net.state(2) is LEADER, limit=10 * ELECTION)
    assert net.raft(2).tracker.voters == frozenset({2})


def test_candidate_removed_mid_campaign_cannot_win() -> None:
    """A candidate that applies its own removal abandons the campaign; late grants are void.

    Found by the simulator (seed 10425): the removed candidate won on votes already in
    flight and became a leader that was not in its own configuration.
    """
    net = elected_cluster(3, check_quorum=False, pre_vote=False)
    raft = net.raft(3)
    raft.become_follower(raft.term, 0)
    raft.become_candidate()
    raft.poll(3, True)
    raft.apply_conf_change(remove(3))
    assert raft.state is StateType.FOLLOWER
    for voter in (1, 2):
        raft.step(Message(M.VOTE_RESP, to=3, frm=voter, term=raft.term))
    assert raft.state is StateType.FOLLOWER
