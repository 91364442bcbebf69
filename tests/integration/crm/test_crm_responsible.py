"""Known customers reach their manager on first contact (mode ``crm_responsible``).

A customer whose phone or e-mail address is on a CRM contact with a
responsible manager writes for the first time - over Telegram (sharing their
number, or writing their address), e-mail (the sender's address, a number in
the signature) or the website chat (written in the message): the chat is
offered to that manager, not to the fallback, on the very first message.
Envelopes are made by each gateway's own normaliser from the channel's own
payload; the router and crm-sync run for real, against the built-in CRM and
the Bitrix24 peer.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from support import apply_lines, publish, running_router
from support.crm import OPS, assigned, crm_under_test, running_crm_sync
from support.timing import scaled, wait_for

from crm_sync.responsible import MAX_ASKING
from gateway_email.normalise import parse_mail
from gateway_email.normalise import to_inbound as mail_inbound
from gateway_telegram.normalise import normalise as telegram_normalise
from gateway_telegram.normalise import parse_update
from gateway_webchat.normalise import parse_frame
from gateway_webchat.normalise import to_inbound as webchat_inbound
from openlines import bus, subjects
from openlines.commands import SetStatus, call
from openlines.envelopes import ClientProfile, Inbound
from openlines.state import ClientRecord, client_key

LINE = (
    OPS
    + """
[[lines]]
id = "sales"
name = "Sales"
channels = [
  { channel = "telegram", account = "shopbot" },
  { channel = "email", account = "support" },
  { channel = "webchat", account = "demo" },
]
[lines.queue]
operators = ["boris", "anna"]
mode = "crm_responsible"
fallback_mode = "strict"
[lines.crm]
enabled = true
"""
)
PHONE = "+37126000001"
EMAIL = "mail.known@example.com"
BOT_ID = 4242
ACCOUNTS = {"telegram": "shopbot", "email": "support", "webchat": "demo"}


def first_message(channel: str, who: str, known_by: str) -> Inbound:
    """The first message of a client known to the CRM by ``known_by`` (phone | email | none), as its gateway publishes it."""
    now = datetime.now(UTC)
    phone_text = "Call me back: +371 2600 0001" if known_by == "phone" else ""
    email_text = f"my e-mail is {EMAIL.upper()}" if known_by == "email" else ""
    if channel == "telegram":
        user = {"id": 7000 + sum(map(ord, who)), "is_bot": False, "first_name": who.title()}
        message: dict[str, Any] = {"message_id": 1, "date": int(time.time()), "chat": {"id": user["id"], "type": "private"}}
        if known_by == "phone":  # the client taps "share my number"
            message["contact"] = {"phone_number": PHONE.lstrip("+"), "first_name": user["first_name"], "user_id": user["id"]}
        else:
            message["text"] = email_text or "hello"
        update = {"update_id": 1000 + user["id"], "message": {**message, "from": user}}
        out = telegram_normalise("shopbot", BOT_ID, parse_update(msgspec.json.encode(update)), now).inbound
        assert out is not None
        return out
    if channel == "email":
        sender = EMAIL if known_by == "email" else f"{who}@example.org"
        body = f"Hello, a question about my order. {phone_text}\n\n-- \n{who.title()}\n"
        raw = (
            f"From: {who.title()} <{sender}>\r\nTo: support@shop.example\r\nSubject: Order\r\n"
            f"Message-ID: <{who}-1@example.org>\r\nDate: {now.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body.replace("\n", "\r\n")
        ).encode()
        mail = parse_mail(raw, max_attachment_bytes=1_000_000, languages=["en"])
        return mail_inbound("support", mail, [], now)
    frame = msgspec.json.encode({"type": "message", "id": "m1", "text": phone_text or email_text or "hello", "name": who.title()})
    return webchat_inbound("demo", f"visitor-{who}", parse_frame(frame.decode(), max_text=4000, max_frame=16000), now)


@pytest.mark.parametrize("backend", ["builtin", "bitrix24"])
@pytest.mark.parametrize("channel", ["telegram", "email", "webchat"])
async def test_a_customer_known_by_phone_or_email_reaches_their_manager_on_the_first_message(
    nc: Any, nats_server: Any, channel: str, backend: str
) -> None:
    await apply_lines(nc, LINE)
    async with (
        crm_under_test(backend, nc) as crm,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, **crm.settings()),
    ):
        await crm.add_contact("Phone Known", manager="anna", phone=PHONE)
        await crm.add_contact("Mail Known", manager="anna", email=EMAIL)
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        for who, known_by, manager in (("pavel", "phone", "anna"), ("marta", "email", "anna"), ("sam", "none", "boris")):
            env = first_message(channel, who, known_by)
            await publish(nc, env)
            s = await assigned(nc, channel, env.account, env.chat_id)
            # Known customers go to their manager; a stranger to the fallback (strict: Boris first).
            assert s.operator_id == manager, f"{who} ({known_by}) on {channel}"


async def _profile(nc: Any, client_id: str, address: str, email: str) -> None:
    """The router's record of a mail client, as it stands after the client's first message."""
    b = await bus.Buckets(nc.jetstream()).open()
    record = ClientRecord(
        client_id=client_id, channel="email", account="support", chat_id=address, profile=ClientProfile(email=email)
    )
    await b.clients.put(
        client_key("email", "support", subjects.chat_key("email", "support", address)), msgspec.json.encode(record)
    )


async def test_the_responsible_lookup_answers_within_the_routers_budget_and_remembers_the_answer(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, LINE)
    async with crm_under_test("bitrix24", nc) as crm, running_crm_sync(nats_server.url, **crm.settings()):
        peer = crm.peer
        assert peer is not None
        await crm.add_contact("Mail Known", manager="anna", email=EMAIL)

        async def responsible(client_id: str, address: str) -> str:
            ask = {"client_id": client_id, "channel": "email", "account": "support", "chat_id": address}
            # The router waits 0.5 s: well within this, however slow the CRM (or the machine).
            reply = await nc.request(subjects.CRM_RESPONSIBLE, msgspec.json.encode(ask), timeout=scaled(2))
            return str(msgspec.json.decode(reply.data)["operator_id"])

        await _profile(nc, "cmail", EMAIL, EMAIL)
        assert await responsible("cmail", EMAIL) == "anna"
        asked = len(peer.calls)
        assert await responsible("cmail", EMAIL) == "anna"  # remembered: the CRM is not asked again
        assert len(peer.calls) == asked

        # A CRM slower than the budget: the router gets an empty answer in time (it uses its fallback) ...
        peer.hold = "batch"
        await _profile(nc, "cslow", "slow@example.com", EMAIL.upper())  # another chat, the same person
        assert await responsible("cslow", "slow@example.com") == ""
        await wait_for(peer.held.is_set, what="the CRM working on the look-up")
        # ... and the answer, when it comes, is kept for the next ask (a reassignment, the next message).
        peer.hold = ""
        peer.release.set()
        assert await wait_for(lambda: responsible("cslow", "slow@example.com"), what="the late answer remembered") == "anna"


async def test_a_burst_of_new_clients_while_the_crm_is_slow_never_queues_more_than_a_few_look_ups(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, LINE)
    async with crm_under_test("bitrix24", nc) as crm, running_crm_sync(nats_server.url, **crm.settings()):
        peer = crm.peer
        assert peer is not None
        peer.hold = "batch"  # every look-up hangs at the CRM

        async def responsible(chat: str) -> str:
            ask = {"client_id": f"c{chat}", "channel": "webchat", "account": "demo", "chat_id": chat}
            reply = await nc.request(subjects.CRM_RESPONSIBLE, msgspec.json.encode(ask), timeout=scaled(5))
            return str(msgspec.json.decode(reply.data)["operator_id"])

        answers = await asyncio.gather(*(responsible(f"v{i}") for i in range(MAX_ASKING + 10)))
        assert answers == [""] * (MAX_ASKING + 10)  # every one in time, none known
        await wait_for(lambda: peer.methods().count("batch") == MAX_ASKING, what="the look-ups that were let through")
        assert await responsible("one-more") == ""
        assert peer.methods().count("batch") == MAX_ASKING  # the rest were not queued behind them
        # Once the CRM answers, look-ups are let through again.
        peer.hold = ""
        peer.release.set()
        tries = iter(range(1000))

        async def let_through() -> bool:
            before = peer.methods().count("batch")
            await responsible(f"later{next(tries)}")
            return peer.methods().count("batch") > before

        await wait_for(let_through, what="look-ups let through again once the CRM answers")
