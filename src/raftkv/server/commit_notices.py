"""A leader's commit notices, held back briefly so that the next append carries them.

When a leader commits, its core tells every follower the new commit index at once, with an
empty MsgApp (as etcd's raft does); each follower answers it. For one client writing in a
loop that is a second message, a second Ready round and a second answer per write on every
follower, and two more messages in on the leader (with the apply during the WAL sync, this
took the members' CPU per single put from about 1.8 to 1.44 ms: docs/performance.md, change
12). Raft itself needs none of it: every MsgApp
carries the leader's commit index, and the next write's MsgApp comes within a millisecond.

So an empty MsgApp is held for up to ``hold_s``. A later MsgApp to the same member in the
same term carries a commit index at least as high (a leader's commit only grows within its
term), and makes the held one moot: it is dropped. Whatever is still held when ``hold_s``
has passed is sent then, so a follower learns a commit at most ``hold_s`` later than it
would have; it only delays what a follower applies, never what is acknowledged (commit
needs a quorum's acknowledgements, which these messages are not). Raft tolerates a lost or
late message of any kind, and these are both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from raftkv.raft.messages import Message, MessageType


class CommitNoticeHold:
    def __init__(self, send: Callable[[list[Message]], None], hold_s: float) -> None:
        assert hold_s >= 0, hold_s
        self._send = send
        self._hold_s = hold_s
        self._held: dict[int, Message] = {}  # member id -> its held empty MsgApp
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._held)

    def filter(self, messages: list[Message]) -> list[Message]:
        """The messages to send now. Empty MsgApps are held instead (a newer one replaces
        an older one to the same member); a MsgApp with entries drops the held one it
        supersedes."""
        if not self._held and not any(_is_notice(message) for message in messages):
            return messages
        to_send: list[Message] = []
        for message in messages:
            if _is_notice(message):
                self._held[message.to] = message
                continue
            if message.type is MessageType.APP:
                held = self._held.get(message.to)
                if held is not None and _supersedes(message, held):
                    del self._held[message.to]
            to_send.append(message)
        self._arm()
        return to_send

    def flush(self) -> None:
        """Send everything held now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = list(self._held.values())
        self._held.clear()
        if held:
            self._send(held)

    def close(self) -> None:
        """Drop what is held (the member stops: nothing more is sent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()

    def _arm(self) -> None:
        if self._held and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._hold_s, self.flush)
        elif not self._held and self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _is_notice(message: Message) -> bool:
    return message.type is MessageType.APP and not message.entries


def _supersedes(message: Message, held: Message) -> bool:
    return message.term == held.term and message.commit >= held.commit
