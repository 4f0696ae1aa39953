"""Simple tokens: format, sliding expiry, invalidation, the bound on live tokens."""

from __future__ import annotations

import pytest

from raftkv import limits
from raftkv.server.auth.tokens import (
    SimpleTokens,
    make_token,
    new_secret,
    parse_token,
    token_digest,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def registered(tokens: SimpleTokens, username: str, index: int) -> str:
    secret = new_secret()
    tokens.register(token_digest(secret), username, index)
    return make_token(secret, index)


def test_a_token_names_its_owner_and_only_its_digest_is_registered() -> None:
    tokens = SimpleTokens(10)
    token = registered(tokens, "alice", 7)
    assert tokens.user_of(token) == "alice"
    secret, _, index = token.rpartition(".")
    assert index == "7" and len(secret) >= 32
    assert parse_token(token) == (token_digest(secret), 7)
    # The same secret with another index is the same registration (the index only says
    # which entry registered it); another secret is not.
    assert tokens.user_of(make_token(secret, 8)) == "alice"
    assert tokens.user_of(make_token(new_secret(), 7)) is None


def test_malformed_tokens_are_unknown() -> None:
    tokens = SimpleTokens(10)
    for token in ("", "abc", ".5", "abc.", "abc.x", "abc.-1", "a" * 300 + ".1", "abc.١"):
        assert tokens.user_of(token) is None
        assert not tokens.may_be_pending(token)


def test_an_unused_token_expires_and_each_use_renews_it() -> None:
    clock = FakeClock()
    tokens = SimpleTokens(10, clock)
    token = registered(tokens, "alice", 1)
    clock.now_s += 9
    assert tokens.user_of(token) == "alice"  # renewed: 10 s from now
    clock.now_s += 9
    assert tokens.user_of(token) == "alice"
    clock.now_s += 10.5
    assert tokens.user_of(token) is None
    assert len(tokens) == 0


def test_invalidating_a_user_drops_its_tokens_only() -> None:
    tokens = SimpleTokens(10)
    alice = [registered(tokens, "alice", index) for index in (1, 2)]
    bob = registered(tokens, "bob", 3)
    tokens.invalidate_user("alice")
    assert [tokens.user_of(token) for token in alice] == [None, None]
    assert tokens.user_of(bob) == "bob"
    tokens.clear()
    assert tokens.user_of(bob) is None


def test_tokens_of_entries_not_applied_yet_may_be_pending() -> None:
    tokens = SimpleTokens(10)
    registered(tokens, "alice", 5)
    assert tokens.may_be_pending(make_token(new_secret(), 6))
    assert not tokens.may_be_pending(make_token(new_secret(), 5))


def test_past_the_bound_the_least_recently_used_token_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "AUTH_MAX_SIMPLE_TOKENS", 3)
    clock = FakeClock()
    tokens = SimpleTokens(100, clock)
    first, second, third = (registered(tokens, "u", index) for index in (1, 2, 3))
    clock.now_s += 1
    assert tokens.user_of(first) == "u"  # now the most recently used
    fourth = registered(tokens, "u", 4)
    assert len(tokens) == 3
    assert tokens.user_of(second) is None
    assert all(tokens.user_of(token) == "u" for token in (first, third, fourth))
