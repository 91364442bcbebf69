"""The e-mail gateway with the real router: the lines both run on, starting them, and what to read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from peers.mailservers import Dovecot, SmtpSink, mailbox_config, running_gateway

from openlines import bus, subjects
from openlines.envelopes import Outbound
from openlines.state import Session
from support import apply_lines, line_block, running_router, session_of

WELCOME = "Thank you for writing, we answer within a day."
# A mail client's chat as session_of finds it: the "support" mailbox feeds line "mail".
MAIL = {"channel": "email", "account": "support", "line": "mail"}


def mail_lines(*, welcome: str = WELCOME, password_hash: str = "") -> str:
    """Anna (who may sign in to the desk when given a ``password_hash``) answers the ``support`` mailbox on line ``mail``."""
    anna = '[operators.anna]\nname = "Anna"\n' + (f'password_hash = "{password_hash}"\n' if password_hash else "")
    channels = '[{ channel = "email", account = "support" }]'
    return anna + line_block("mail", channels=channels, operators='"anna"', replies=f'welcome = "{welcome}"' if welcome else "")


@asynccontextmanager
async def mail_flow(
    nc: Any,
    nats_url: str,
    imap: Dovecot,
    smtp: SmtpSink,
    lines: str | None = None,
    *,
    mailboxes: list[dict[str, Any]] | None = None,
    **gateway: Any,
) -> AsyncIterator[Any]:
    """``lines`` (default :func:`mail_lines`) applied, then the router and the e-mail gateway running; the gateway."""
    await apply_lines(nc, lines if lines is not None else mail_lines())
    async with running_router(nats_url), running_gateway(nats_url, mailboxes or [mailbox_config(imap, smtp)], **gateway) as gw:
        yield gw


async def assigned_session(nc: Any, address: str) -> Session | None:
    """The client's session once it is offered to an operator (only then may they reply)."""
    s = await session_of(nc, address, **MAIL)
    return s if s is not None and s.status in ("assigned", "answered") and s.operator_id else None


async def inbound_mails(nc: Any, account: str = "support") -> list[dict[str, Any]]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("email", account))
    return [msgspec.json.decode(data) for _, data in rows]


async def outbound_to(nc: Any, address: str, account: str = "support") -> list[Outbound]:
    subject = subjects.outbound("email", account, subjects.chat_key("email", account, address))
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_OUT, subject)
    return [msgspec.json.decode(data, type=Outbound) for _, data in rows]


async def consumer_done(nc: Any, name: str = "gateway-email") -> bool:
    """The gateway's outbound consumer has handled everything in OL_OUT for e-mail."""
    info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, name)
    return info.num_pending == 0 and info.num_ack_pending == 0
