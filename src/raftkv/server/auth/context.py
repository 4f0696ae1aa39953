"""Who is asking: the credentials of the client request being served.

``AuthInfo`` is etcd's: a user name and the auth store revision at which the user's
token was checked. The API layer sets ``request_auth`` for the duration of each RPC
(``raftkv.api.authz``); the member reads it when it proposes a write, so every proposal
of that RPC, however deep in the API code it is made, carries the credentials to the
apply step (asyncio tasks copy the context they are created in, so cleanups spawned by
the RPC carry them too).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuthInfo:
    username: str
    revision: int  # 0: no credentials (etcd's empty AuthInfo)
    # Live credentials stand for the user at the store's revision of each use, as etcd's
    # simple tokens do when looked up again: for the long Lock and Election calls, whose
    # steps must not fail because of an unrelated auth change made while they wait.
    live: bool = False

    def revision_now(self, store_revision: int) -> int:
        """The revision a use of these credentials is checked at."""
        return store_revision if self.live and self.revision else self.revision


NO_CREDENTIALS = AuthInfo("", 0)

request_auth: ContextVar[AuthInfo] = ContextVar("raftkv_request_auth", default=NO_CREDENTIALS)
