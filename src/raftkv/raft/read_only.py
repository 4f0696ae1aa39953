"""The leader's queue of ReadIndex requests waiting for a quorum heartbeat (Raft thesis §6.4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv.raft.messages import Index, Message, NodeId


@dataclass(slots=True)
class ReadIndexStatus:
    request: Message
    index: Index
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    """Requests in arrival order, keyed by their (caller-unique) context.

    A heartbeat ack for a context also confirms every earlier request: the
    leader was leader when the later one was sent, hence for the earlier ones.
    """

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self.queue)

    def add_request(self, index: Index, request: Message) -> bool:
        """Queue a request for commit index `index`; False if its context is already queued."""
        context = request.context
        if context in self.pending:
            return False
        self.pending[context] = ReadIndexStatus(request=request, index=index)
        self.queue.append(context)
        return True

    def recv_ack(self, node: NodeId, context: bytes) -> set[NodeId] | None:
        status = self.pending.get(context)
        if status is None:
            return None
        status.acks.add(node)
        return status.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release every request up to and including the one for context."""
        if context not in self.pending:
            return []
        position = self.queue.index(context)
        released = [self.pending.pop(ctx) for ctx in self.queue[: position + 1]]
        del self.queue[: position + 1]
        return released

    def last_pending_context(self) -> bytes:
        return self.queue[-1] if self.queue else b""

    def reset(self) -> None:
        self.pending.clear()
        self.queue.clear()
