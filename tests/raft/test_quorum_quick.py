"""Property tests: quorum arithmetic against naive, obviously-correct versions.

Documented conventions for an empty voter set: ``committed_index`` is 0 and
``vote_result`` is WON (like an empty AND).
"""

from __future__ import annotations

from itertools import product

from hypothesis import given
from hypothesis import strategies as st

from raftkv.raft import quorum
from raftkv.raft.quorum import VoteResult

node_ids = st.integers(min_value=1, max_value=9)
voter_sets = st.frozensets(node_ids, max_size=7)
# Acknowledgements may mention non-voters (learners), and may omit voters.
match_maps = st.dictionaries(node_ids, st.integers(min_value=0, max_value=20), max_size=9)
vote_maps = st.dictionaries(node_ids, st.booleans(), max_size=9)


def naive_committed_index(voters: frozenset[int], match: dict[int, int]) -> int:
    """The largest index i such that a strict majority of voters have match >= i."""
    if not voters:
        return 0
    candidates = {0} | {match.get(node, 0) for node in voters}
    return max(
        i
        for i in candidates
        if 2 * sum(1 for node in voters if match.get(node, 0) >= i) > len(voters)
    )


def naive_vote_result(voters: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    """Enumerate every way the missing voters could still vote.

    WON if every completion wins, LOST if none does, PENDING otherwise.
    """
    if not voters:
        return VoteResult.WON
    missing = sorted(node for node in voters if node not in votes)
    outcomes = set()
    for completion in product([True, False], repeat=len(missing)):
        final = {node: votes[node] for node in voters if node in votes}
        final.update(zip(missing, completion, strict=True))
        granted = sum(1 for node in voters if final[node])
        outcomes.add(2 * granted > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(voter_sets, match_maps)
def test_committed_index_matches_naive(voters: frozenset[int], match: dict[int, int]) -> None:
    assert quorum.committed_index(voters, match) == naive_committed_index(voters, match)


@given(voter_sets, vote_maps)
def test_vote_result_matches_naive(voters: frozenset[int], votes: dict[int, bool]) -> None:
    assert quorum.vote_result(voters, votes) == naive_vote_result(voters, votes)


@given(voter_sets, match_maps, node_ids, st.integers(min_value=0, max_value=20))
def test_committed_index_is_monotone_in_acks(
    voters: frozenset[int], match: dict[int, int], node: int, extra: int
) -> None:
    """Raising one node's acknowledgement never lowers the committed index."""
    raised = dict(match)
    raised[node] = match.get(node, 0) + extra
    assert quorum.committed_index(voters, raised) >= quorum.committed_index(voters, match)


@given(voter_sets, vote_maps, node_ids)
def test_granting_a_vote_never_hurts(
    voters: frozenset[int], votes: dict[int, bool], node: int
) -> None:
    """Turning a missing or rejected vote into a grant never moves the result away from WON."""
    order = {VoteResult.LOST: 0, VoteResult.PENDING: 1, VoteResult.WON: 2}
    granted = dict(votes)
    granted[node] = True
    assert order[quorum.vote_result(voters, granted)] >= order[quorum.vote_result(voters, votes)]


def test_empty_configuration_conventions() -> None:
    assert quorum.committed_index(frozenset(), {1: 5}) == 0
    assert quorum.vote_result(frozenset(), {}) is VoteResult.WON
    assert quorum.vote_result(frozenset(), {1: False}) is VoteResult.WON


def test_majority_sizes() -> None:
    assert [quorum.majority_size(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_examples() -> None:
    voters = frozenset({1, 2, 3, 4, 5})
    assert quorum.committed_index(voters, {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}) == 3
    assert quorum.committed_index(voters, {1: 5, 2: 5, 9: 5, 10: 5}) == 0  # 9, 10 not voters
    assert quorum.vote_result(voters, {1: True, 2: True}) is VoteResult.PENDING
    assert quorum.vote_result(voters, {1: True, 2: True, 3: True}) is VoteResult.WON
    assert quorum.vote_result(voters, {1: False, 2: False, 3: False}) is VoteResult.LOST
    assert quorum.vote_result(frozenset({1, 2}), {1: True, 2: False}) is VoteResult.LOST
