"""Simple tokens (etcd's ``--auth-token simple``): random, opaque, with a sliding TTL.

A token is ``<secret>.<index>``: a random secret the authenticating member draws, and
the Raft index of the Authenticate entry that registered it. The entry carries only the
secret's SHA-256 digest, so neither the WAL nor a snapshot holds a usable token; every
member applies the entry and registers the digest, so the token works on every member,
as etcd's do. Registrations are in memory only: a restarted member forgets its tokens
and clients authenticate again, as with etcd.

Each member keeps its own expiry: a token unused for ``ttl_s`` on a member expires
there (etcd's ``--auth-token-ttl``, default 300 s); every use renews it. Deleting a user,
changing its password and disabling auth drop tokens at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from raftkv import limits

TOKEN_SEPARATOR = "."


@dataclass(slots=True)
class _Registration:
    username: str
    expires_at_s: float


def token_digest(secret: str) -> bytes:
    """What the Authenticate entry carries instead of the secret."""
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    """A fresh secret: URL-safe base64, so it never contains the separator."""
    secret = secrets.token_urlsafe(limits.AUTH_SIMPLE_TOKEN_SECRET_BYTES)
    assert TOKEN_SEPARATOR not in secret
    return secret


def make_token(secret: str, index: int) -> str:
    return f"{secret}{TOKEN_SEPARATOR}{index}"


def parse_token(token: str) -> tuple[bytes, int] | None:
    """(digest of the secret, index), or None if ``token`` is not one of ours."""
    if len(token) > limits.AUTH_MAX_TOKEN_CHARS:
        return None
    secret, separator, index_text = token.rpartition(TOKEN_SEPARATOR)
    if not separator or not secret or not index_text.isdigit() or not index_text.isascii():
        return None
    return token_digest(secret), int(index_text)


class SimpleTokens:
    """One member's registered tokens, oldest use first (that order is also the order
    in which they expire, since every use moves a token to the end)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert ttl_s > 0, "a token must live a while"
        self.ttl_s = ttl_s
        self._clock = clock
        self._tokens: OrderedDict[bytes, _Registration] = OrderedDict()
        # The index of the last Authenticate entry applied here: a token with a higher
        # index may be one this member has not applied yet.
        self.highest_index = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def register(self, digest: bytes, username: str, index: int) -> None:
        """An applied Authenticate entry: ``username`` now owns the token."""
        self._expire()
        self._tokens.pop(digest, None)  # secrets are random: a repeat is a replayed entry
        while len(self._tokens) >= limits.AUTH_MAX_SIMPLE_TOKENS:
            self._tokens.popitem(last=False)  # the least recently used goes first
        self._tokens[digest] = _Registration(username, self._clock() + self.ttl_s)
        self.highest_index = max(self.highest_index, index)

    def user_of(self, token: str) -> str | None:
        """The owner of a live token (its TTL renewed), or None."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        self._expire()
        now_s = self._clock()
        registration = self._tokens.get(parsed[0])
        if registration is None:
            return None
        if registration.expires_at_s <= now_s:  # whatever the order of the others
            del self._tokens[parsed[0]]
            return None
        registration.expires_at_s = now_s + self.ttl_s
        self._tokens.move_to_end(parsed[0])
        return registration.username

    def may_be_pending(self, token: str) -> bool:
        """Whether ``token`` names an Authenticate entry this member has not applied yet
        (it is then worth waiting for this member to catch up before refusing it)."""
        parsed = parse_token(token)
        return parsed is not None and parsed[1] > self.highest_index

    def invalidate_user(self, username: str) -> None:
        stale = [d for d, reg in self._tokens.items() if reg.username == username]
        for digest in stale:
            del self._tokens[digest]

    def clear(self) -> None:
        self._tokens.clear()

    def _expire(self) -> None:
        now_s = self._clock()
        while self._tokens:
            digest, registration = next(iter(self._tokens.items()))
            if registration.expires_at_s > now_s:
                return
            del self._tokens[digest]
