"""A From display name that decodes to CR/LF (header injection bait) is delivered with a cleaned name.

Before, such a mail was dead-lettered: the customer's message never reached an
operator. Through the real gateway, a real Dovecot and the router.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from peers.mailservers import Dovecot, SmtpSink, append
from support.email import mail_flow, mail_lines
from support.timing import wait_for

from openlines import bus, subjects

pytestmark = pytest.mark.mail


def mail(sender: str, msg_id: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: support@example.test\r\nSubject: Order 42\r\nMessage-ID: <{msg_id}@client.example.test>\r\n"
        "Date: Thu, 03 Dec 2026 09:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWhere is my order?\r\n"
    ).encode()


async def test_an_encoded_cr_lf_in_the_display_name_is_cleaned_not_dead_lettered(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp, mail_lines(welcome="")):
        await append(imap, mail("=?utf-8?q?Evil=0D=0ABcc=3A_victim=40example=2Etest?= <a@client.example.test>", "q1"))
        await append(imap, mail("=?utf-8?b?TWFyw61hDQpYLUluamVjdGVkOiAx?= <b@client.example.test>", "b1"))

        async def published() -> dict[str, str] | None:
            rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("email", "support"))
            names = {m["chat_id"]: m.get("profile", {}).get("name", "") for m in (msgspec.json.decode(d) for _, d in rows)}
            return names if len(names) == 2 else None

        names = await wait_for(published, timeout=30, what="both mails published, none dead-lettered")
        assert names == {"a@client.example.test": "Evil Bcc: victim@example.test", "b@client.example.test": "María X-Injected: 1"}
        assert not any("\r" in n or "\n" in n for n in names.values())
