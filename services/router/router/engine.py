"""The router: one object the transports call, dispatching each trigger to the part of the shell that handles it.

Triggers are a client's message (``handle_inbound``), an operator's command,
a timer firing (``fire``) and the periodic sweeps. The line rules themselves
are pure functions in ``router.core``; the parts in ``router.shell`` read the
state they need, ask the core, and apply what it decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from openlines.commands import TemplateChoice
from openlines.envelopes import Attachment, Inbound, utcnow
from openlines.lines import LineConfig
from openlines.state import OperatorState, OperatorStatus, Session
from router.shell.answers import Answers
from router.shell.base import Refused, Shared, client_id_for, session_id_for
from router.shell.capacity import Capacity
from router.shell.chats import Chats
from router.shell.clients import Clients
from router.shell.closing import Closing
from router.shell.firing import Firing
from router.shell.inbound_flow import InboundFlow
from router.shell.offering import Offering
from router.shell.operators import Operators
from router.shell.picking import Picking
from router.shell.transfer import Transfers
from router.timers import Timer

__all__ = ["Engine", "Refused", "client_id_for", "session_id_for"]


class Engine:
    def __init__(self, shared: Shared) -> None:
        self.js = shared.js
        self.lines = shared.lines
        self.operators = shared.operators
        self.fx = shared.fx
        self.capacity = Capacity(shared)
        self.offering = Offering(shared, self.capacity)
        self.answers = Answers(shared, self.offering, self.capacity)
        self.closing = Closing(shared, self.offering)
        self.inbound = InboundFlow(shared, self.offering)
        self.status = Operators(shared, self.offering, self.answers)
        self.chats = Chats(shared, self.offering, self.closing, self.answers)
        self.transfers = Transfers(shared, self.capacity, self.offering, self.answers)
        self.picking = Picking(shared, self.capacity)
        self.clients = Clients(shared)
        self.timers = Firing(shared, self.offering, self.answers, self.closing, self.status)

    # a client's message
    async def handle_inbound(self, msg: Inbound) -> None:
        await self.inbound.handle(msg)

    # timers and sweeps
    async def fire(self, timer: Timer) -> None:
        await self.timers.fire(timer)

    async def drain(self, line: LineConfig) -> None:
        await self.offering.drain(line)

    async def sweep_stale_claims(self) -> int:
        """Drop every operator's stale claims (run now and then) and offer what that frees; returns how many."""
        now = utcnow()
        dropped = await self.capacity.sweep(now)
        for op_id in dropped:
            for line in self.lines.lines_of(op_id):
                await self.offering.drain(line, now)
        return sum(dropped.values())

    # operators' status and desks
    async def set_status(self, operator_id: str, status: OperatorStatus) -> OperatorState:
        return await self.status.set_status(operator_id, status)

    async def presence(self, operator_id: str, connected: bool, desk: str) -> None:
        await self.status.presence(operator_id, connected, desk)

    async def desk_gone(self, operator_id: str, desk: str, *, still_there: Callable[[], Awaitable[bool]] | None = None) -> bool:
        return await self.status.desk_gone(operator_id, desk, still_there=still_there)

    def presence_grace(self, operator_id: str) -> float:
        return self.status.presence_grace(operator_id)

    # operators' commands on chats
    async def accept(self, operator_id: str, session_id: str) -> Session:
        return await self.chats.accept(operator_id, session_id)

    async def reply(
        self,
        operator_id: str,
        session_id: str,
        text: str,
        client_msg_id: str,
        attachments: list[Attachment] | None = None,
        template: TemplateChoice | None = None,
    ) -> tuple[Session, str]:
        return await self.chats.reply(operator_id, session_id, text, client_msg_id, attachments, template)

    async def skip(self, operator_id: str, session_id: str) -> None:
        await self.chats.skip(operator_id, session_id)

    async def pin(self, operator_id: str, session_id: str, pinned: bool) -> Session:
        return await self.chats.pin(operator_id, session_id, pinned)

    async def spam(self, operator_id: str, session_id: str) -> Session:
        return await self.chats.spam(operator_id, session_id)

    async def close(self, operator_id: str, session_id: str) -> Session:
        return await self.chats.close(operator_id, session_id)

    async def transfer(self, operator_id: str, session_id: str, to_operator: str, to_line: str, comment: str = "") -> Session:
        return await self.transfers.transfer(operator_id, session_id, to_operator, to_line, comment)

    async def take(self, operator_id: str, session_id: str) -> Session:
        return await self.picking.take(operator_id, session_id)

    async def tag(self, operator_id: str, session_id: str, add: list[str], remove: list[str]) -> Session:
        return await self.picking.tag(operator_id, session_id, add, remove)

    async def note(self, operator_id: str, session_id: str, text: str, client_msg_id: str) -> Session:
        return await self.picking.note(operator_id, session_id, text, client_msg_id)

    async def intercept(self, operator_id: str, session_id: str) -> Session:
        return await self.transfers.intercept(operator_id, session_id)

    # operators' changes to clients (decision 024)
    async def edit_client(
        self, operator_id: str, session_id: str, name: str | None, phone: str | None, email: str | None
    ) -> Session:
        return await self.clients.edit(operator_id, session_id, name, phone, email)

    async def merge_clients(self, operator_id: str, session_id: str, other_session_id: str) -> Session:
        return await self.clients.merge(operator_id, session_id, other_session_id)
