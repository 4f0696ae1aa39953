"""Membership changes, one voter at a time (docs/raft.md explains why this is safe).

``apply_change`` is pure: it computes the next configuration from the
current one, checks the invariants, and returns it. The caller installs it.
"""

from __future__ import annotations

from raftkv.raft.errors import ConfChangeInvalid
from raftkv.raft.messages import NO_NODE, ConfChange, ConfChangeType, ConfState


def apply_change(current: ConfState, change: ConfChange) -> ConfState:
    """The configuration after change; raises ConfChangeInvalid if it is not allowed."""
    node = change.node_id
    if node == NO_NODE:
        raise ConfChangeInvalid("node id 0 is reserved")
    voters = set(current.voters)
    learners = set(current.learners)
    if change.type is ConfChangeType.ADD_NODE:
        learners.discard(node)
        voters.add(node)
    elif change.type is ConfChangeType.ADD_LEARNER:
        voters.discard(node)
        learners.add(node)
    else:
        assert change.type is ConfChangeType.REMOVE_NODE
        voters.discard(node)
        learners.discard(node)
    result = ConfState(voters=frozenset(voters), learners=frozenset(learners))
    check_invariants(current, result)
    return result


def check_invariants(before: ConfState, after: ConfState) -> None:
    if not after.voters:
        raise ConfChangeInvalid("removing the last voter would leave no quorum")
    changed_voters = before.voters ^ after.voters
    if len(changed_voters) > 1:
        # With at most one voter added or removed, every majority of the old
        # set intersects every majority of the new one.
        raise ConfChangeInvalid(f"more than one voter changes at once: {sorted(changed_voters)}")
    if after.voters & after.learners:
        raise ConfChangeInvalid("a node cannot be voter and learner at once")
