"""A leader's held commit notices (server/commit_notices.py), on a real event loop."""

from __future__ import annotations

import asyncio

from raftkv.raft.messages import Entry, Message, MessageType
from raftkv.server.commit_notices import CommitNoticeHold

HOLD_S = 0.05


def _notice(to: int, commit: int, term: int = 2) -> Message:
    return Message(MessageType.APP, to=to, frm=1, term=term, index=commit, commit=commit)


def _append(to: int, index: int, commit: int, term: int = 2) -> Message:
    entry = Entry(term=term, index=index + 1, data=b"x")
    return Message(
        MessageType.APP, to=to, frm=1, term=term, index=index, entries=(entry,), commit=commit
    )


def _hold() -> tuple[CommitNoticeHold, list[list[Message]]]:
    sent: list[list[Message]] = []
    return CommitNoticeHold(sent.append, HOLD_S), sent


def test_a_notice_is_held_then_sent_once_the_hold_passes() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        heartbeat = Message(MessageType.HEARTBEAT, to=3, frm=1, term=2)
        assert hold.filter([_notice(2, 5), heartbeat]) == [heartbeat]
        assert sent == [] and len(hold) == 1
        await asyncio.sleep(HOLD_S / 2)
        assert sent == []
        await asyncio.sleep(HOLD_S)
        assert sent == [[_notice(2, 5)]] and len(hold) == 0

    asyncio.run(scenario())


def test_a_later_append_carrying_the_commit_drops_the_held_notice() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        hold.filter([_notice(2, 5), _notice(3, 5)])
        append = _append(2, 5, 5)
        assert hold.filter([append]) == [append]
        assert len(hold) == 1  # member 3's notice is still held
        await asyncio.sleep(HOLD_S * 2)
        assert sent == [[_notice(3, 5)]]

    asyncio.run(scenario())


def test_the_last_notice_replaces_older_ones_and_the_timer_stops_when_none_is_held() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        hold.filter([_notice(2, 5)])
        hold.filter([_notice(2, 6)])
        assert len(hold) == 1
        hold.filter([_append(2, 6, 6)])
        assert len(hold) == 0
        await asyncio.sleep(HOLD_S * 2)
        assert sent == []
        hold.filter([_notice(2, 7)])
        await asyncio.sleep(HOLD_S * 2)
        assert sent == [[_notice(2, 7)]]

    asyncio.run(scenario())


def test_an_append_that_does_not_carry_the_commit_leaves_the_notice_held() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        hold.filter([_notice(2, 5, term=2)])
        hold.filter([_append(2, 5, 4, term=2)])  # a lower commit (not from one leader)
        hold.filter([_append(2, 5, 9, term=3)])  # another term
        assert len(hold) == 1
        await asyncio.sleep(HOLD_S * 2)
        assert sent == [[_notice(2, 5, term=2)]]

    asyncio.run(scenario())


def test_flush_sends_at_once_and_close_drops() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        hold.filter([_notice(2, 5)])
        hold.flush()
        assert sent == [[_notice(2, 5)]]
        hold.filter([_notice(3, 6)])
        hold.close()
        await asyncio.sleep(HOLD_S * 2)
        assert sent == [[_notice(2, 5)]] and len(hold) == 0

    asyncio.run(scenario())


def test_messages_without_notices_pass_through_in_order() -> None:
    async def scenario() -> None:
        hold, sent = _hold()
        messages = [
            _append(2, 5, 5),
            Message(MessageType.HEARTBEAT, to=3, frm=1, term=2),
            Message(MessageType.APP_RESP, to=3, frm=1, term=2, index=7),
            _append(3, 5, 5),
        ]
        assert hold.filter(messages) == messages
        assert len(hold) == 0 and sent == []

    asyncio.run(scenario())
