"""Majority-quorum arithmetic as pure functions of (voters, acknowledgements).

raftkv changes one voter at a time (docs/raft.md), so a configuration is a
single majority set; there is no joint quorum.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from raftkv.raft.messages import Index, NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither a win nor a loss is decided yet
    WON = "won"
    LOST = "lost"


def majority_size(voter_count: int) -> int:
    return voter_count // 2 + 1


def committed_index(voters: Collection[NodeId], match_index: Mapping[NodeId, Index]) -> Index:
    """The largest index acknowledged by a majority of voters (0 with no voters).

    Sort the voters' acknowledged indexes in descending order; the entry at
    position majority-1 is held by at least a majority.
    """
    if not voters:
        return 0
    acked = sorted((match_index.get(node, 0) for node in voters), reverse=True)
    return acked[majority_size(len(voters)) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority granted; LOST once a majority can no longer be reached."""
    if not voters:
        return VoteResult.WON  # by convention, like an empty AND
    granted = 0
    rejected = 0
    for node in voters:
        vote = votes.get(node)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    needed = majority_size(len(voters))
    if granted >= needed:
        return VoteResult.WON
    missing = len(voters) - granted - rejected
    if granted + missing >= needed:
        return VoteResult.PENDING
    return VoteResult.LOST
