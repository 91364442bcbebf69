"""SLA alerts by e-mail: the real router and desk, a real SMTP server (aiosmtpd). Each address of the
line's ``sla.notify_emails`` gets the alert once; one that refuses for a while gets it on a retry."""

from __future__ import annotations

from typing import Any

import pytest
from support import apply_lines, client_writes, events, running_router
from support.desk import running_desk
from support.timing import wait_for

from desk.settings import Settings
from openlines.commands import SetStatus, call

LINES = """
[operators.anna]
name = "Anna Petrova"
[[lines]]
id = "support"
name = "Support"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
operators = ["anna"]
wait_seconds = 60
[lines.sla]
first_response_seconds = 2
notify_emails = ["lead@example.test", "ops@example.test"]
"""


async def test_a_breach_is_mailed_once_to_each_address_and_a_refusing_one_gets_it_on_retry(
    nc: Any, nats_server: Any, smtp: Any
) -> None:
    smtp.answers["lead@example.test"] = ["451 4.7.1 Greylisted, try again later"]
    await apply_lines(nc, LINES)
    mail = {
        "sla_smtp_host": smtp.host,
        "sla_smtp_port": smtp.port,
        "sla_smtp_tls": "none",
        "sla_mail_from": "openlines@example.test",
        "sla_mail_retry_seconds": 0.5,
    }
    async with running_router(nats_server.url), running_desk(nats_server.url, **mail):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await client_writes(nc, "maria", "m1", "hello?", name="Maria\r\nBcc: evil@example.test")
        await wait_for(lambda: events(nc, "sla_breached"), timeout=30, what="the breach")
        await wait_for(lambda: smtp.to("lead@example.test"), timeout=30, what="the alert mailed on retry to lead@")
        await wait_for(lambda: smtp.to("ops@example.test"), what="the alert mailed to ops@")
    assert smtp.attempts["lead@example.test"] == 2  # refused once, then taken
    assert len(smtp.to("ops@example.test")) == 1  # not mailed again when lead@ was retried
    lead, ops = smtp.to("lead@example.test")[0].message, smtp.to("ops@example.test")[0].message
    assert lead["Message-ID"] == ops["Message-ID"]
    assert lead["Subject"].startswith("SLA: Maria")
    assert "on Support - first response target 2 s passed by" in lead["Subject"]
    assert lead["Auto-Submitted"] == "auto-generated"
    body = lead.get_content()
    assert "Operator: Anna Petrova" in body and "first response target 2 s passed by" in body
    # the client's name cannot add a recipient
    assert all(r.rcpt_tos in (["lead@example.test"], ["ops@example.test"]) for r in smtp.received)
    assert lead["Bcc"] is None


def test_plain_smtp_to_another_machine_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="OPENLINES_SLA_SMTP_TLS=none"):
        Settings(
            cookie_secret="sla-mail-test-cookie-secret-0123-Kq7Zt9Wm3xRv",
            sla_smtp_host="mail.example.com",
            sla_smtp_tls="none",
            sla_mail_from="openlines@example.com",
        )
    with pytest.raises(ValueError, match="OPENLINES_SLA_MAIL_FROM"):
        Settings(cookie_secret="sla-mail-test-cookie-secret-0123-Kq7Zt9Wm3xRv", sla_smtp_host="mail.example.com")
