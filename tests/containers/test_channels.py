"""Every channel through the containers, and a channel gateway scaled to two containers.

One stack for the module: a 3-node NATS cluster, the router, the desk, two
Telegram gateway containers, the VK, WhatsApp and e-mail gateways, all on the
host network. The messengers' side is played by the local protocol peers on
127.0.0.1 (the Telegram Bot API, VK API and WhatsApp Cloud API peers, Dovecot for IMAP, aiosmtpd
for SMTP), which the containers reach exactly as a deployment reaches the real
services: through the API base URL / mailbox settings. A client writes on each
channel, the operator answers in the desk, and the answer reaches the client's
messenger once.

Then webhooks flow to both Telegram containers (the test plays Telegram and a
load balancer without health checks: a failed delivery is sent again, to the
next container), one container is killed with SIGKILL mid-flow, and every
update must reach the desk exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from peers import mailservers
from peers.mailservers import Dovecot, SmtpSink, append, client_mail, mailbox_config
from peers.telegram_api import SECRET_HEADER, FakeTelegram, message_update
from peers.vk_api import CallbackSender, FakeVk
from peers.whatsapp_api import FakeWhatsApp, contact, message, notification, text
from support.containers import DEPLOY, BackgroundLoop, Operator, Stack
from support.telegram import BOTS, SALES, SUPPORT
from support.timing import wait_for
from support.vk import ACCOUNT as VK_ACCOUNT
from support.vk import GROUP_ID, SECRET, fake_vk, groups_json
from support.whatsapp import APP, APP_SECRET, CLIENT, SHOP, VERIFY_TOKEN, accounts_json

from openlines import subjects

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test may build the images

MESSENGERS = f"""
[[lines]]
id = "messengers"
name = "Messengers and mail"
channels = [
  {{ channel = "telegram", account = "{SUPPORT["account"]}" }},
  {{ channel = "telegram", account = "{SALES["account"]}" }},
  {{ channel = "vk", account = "{VK_ACCOUNT}" }},
  {{ channel = "whatsapp", account = "{SHOP["account"]}" }},
  {{ channel = "email", account = "support" }},
]
[lines.queue]
operators = ["anna"]
max_chats_per_operator = 50
"""


@dataclass
class Channels:
    stack: Stack
    peers: BackgroundLoop
    telegram: FakeTelegram
    vk: FakeVk
    whatsapp: FakeWhatsApp
    imap: Dovecot | None
    smtp: SmtpSink
    no_email: str = ""  # why the e-mail gateway is not running
    telegram_gateways: list[str] = field(default_factory=lambda: ["telegram-a", "telegram-b"])

    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.stack.ports[name]}{path}"


def dovecot_missing() -> str:
    if not mailservers.DOVECOT or not mailservers.DOVEADM:
        return "dovecot is not installed (apt-get install -y dovecot-imapd); the e-mail gateway needs a real IMAP server"
    return ""


@pytest.fixture(scope="module")
def channels(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channels]:
    tmp = tmp_path_factory.mktemp("channels")
    with ExitStack() as cleanup:
        peers = BackgroundLoop()
        cleanup.callback(peers.close)
        telegram = FakeTelegram()
        for bot in BOTS:
            telegram.add_bot(bot["token"])
        peers.call(telegram.start())
        cleanup.callback(lambda: peers.call(telegram.stop()))
        vk = fake_vk(users={2002: ("Olga", "Smirnova")})
        peers.call(vk.start())
        cleanup.callback(lambda: peers.call(vk.stop()))
        whatsapp = FakeWhatsApp()
        whatsapp.add_number(SHOP["phone_number_id"], SHOP["token"])
        peers.call(whatsapp.start())
        cleanup.callback(lambda: peers.call(whatsapp.stop()))
        smtp = SmtpSink()
        smtp.start()
        cleanup.callback(smtp.stop)
        no_email = dovecot_missing()
        imap = None if no_email else cleanup.enter_context(mailservers.dovecot_server())

        stack = Stack(env=images, tmp=tmp)
        cleanup.callback(stack.remove)
        ch = Channels(stack, peers, telegram, vk, whatsapp, imap, smtp, no_email)
        try:
            asyncio.run(start(ch, tmp))
        except BaseException:
            print(stack.logs())
            raise
        yield ch


async def start(ch: Channels, tmp: Path) -> None:
    s = ch.stack
    await s.start_nats_cluster()
    lines = tmp / "lines.toml"
    lines.write_text((DEPLOY / "lines.example.toml").read_text() + MESSENGERS)
    lines.chmod(0o644)
    await s.apply_lines(lines)
    s.start_service("router", "router")
    s.start_service("desk", "desk")
    telegram = {
        "OPENLINES_TELEGRAM_BOTS": json.dumps(BOTS),
        "OPENLINES_TELEGRAM_API_BASE": ch.telegram.base,
        "OPENLINES_TELEGRAM_BACKOFF": "0.2",
        "OPENLINES_SHUTDOWN_TIMEOUT": "3",
    }
    for name in ch.telegram_gateways:
        s.start_service(name, "gateway-telegram", telegram)
    s.start_service("vk", "gateway-vk", {"OPENLINES_VK_GROUPS": groups_json(), "OPENLINES_VK_API_URL": ch.vk.url})
    wa = {"OPENLINES_WHATSAPP_ACCOUNTS": accounts_json(), "OPENLINES_WHATSAPP_API_BASE": ch.whatsapp.base}
    s.start_service("whatsapp", "gateway-whatsapp", wa)
    ch.whatsapp.configure(ch.url("whatsapp", f"/whatsapp/{APP}"), APP_SECRET, VERIFY_TOKEN)
    if ch.imap is not None:
        mailboxes = json.dumps([mailbox_config(ch.imap, ch.smtp)])
        s.start_service("email", "gateway-email", {"OPENLINES_EMAIL_MAILBOXES": mailboxes, "OPENLINES_SMTP_BACKOFF": "0.2"})
    await s.ready()


async def desk_operator(ch: Channels, http: aiohttp.ClientSession) -> Operator:
    anna = Operator(http)
    await anna.sign_in("anna")
    return anna


def desk_session(ch: Channels) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=ch.url("desk"), cookie_jar=aiohttp.CookieJar(unsafe=True))


async def webhook(http: aiohttp.ClientSession, url: str, bot: dict[str, str], update: dict[str, Any]) -> int:
    """POST one update the way Telegram does (JSON body, the secret token header)."""
    async with http.post(url, json=update, headers={SECRET_HEADER: bot["secret"]}) as r:
        return r.status


async def all_delivered(ch: Channels, consumer: str) -> bool:
    """The gateway's outbound consumer has nothing pending or unacknowledged (nothing could still arrive twice)."""

    nc = await ch.stack.connect_admin()
    try:
        info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, consumer)
        return not info.num_pending and not info.num_ack_pending
    finally:
        await nc.close()


async def test_a_telegram_client_is_answered_from_the_desk_through_the_containers(channels: Channels) -> None:
    ch = channels
    async with desk_session(ch) as http, aiohttp.ClientSession() as tg:
        anna = await desk_operator(ch, http)
        hook = ch.url("telegram-a", f"/telegram/{SUPPORT['account']}")
        update = message_update(ch.telegram.next_update_id(), 777, "Where is my parcel? (telegram)")
        assert await webhook(tg, hook, SUPPORT, update) == 200
        assert await webhook(tg, ch.url("telegram-b", f"/telegram/{SUPPORT['account']}"), SUPPORT, update) == 200  # resent
        sid = await anna.chat_with("telegram", "Where is my parcel? (telegram)")
        await anna.accept(sid)
        await anna.reply(sid, "It left the warehouse today.")
        await wait_for(lambda: ch.telegram.sent(777, "sendMessage"), timeout=60, what="the reply at the Bot API")
        await wait_for(lambda: all_delivered(ch, "gateway-telegram"), timeout=60, what="the Telegram gateways done delivering")
        assert [c.params["text"] for c in ch.telegram.sent(777, "sendMessage")] == ["It left the warehouse today."]
        assert await anna.transcript(sid) == ["Where is my parcel? (telegram)"]


async def test_a_vk_client_is_answered_from_the_desk_through_the_containers(channels: Channels) -> None:
    ch = channels
    async with desk_session(ch) as http, aiohttp.ClientSession() as callbacks:
        anna = await desk_operator(ch, http)
        cb = CallbackSender(callbacks, ch.url("vk", f"/vk/{VK_ACCOUNT}"), GROUP_ID, SECRET)
        event = cb.message_new("Is the shop open on Sunday? (vk)", from_id=2002, event_id="ev-container-1")
        assert await cb.post(event) == (200, "ok")
        assert await cb.post(event, retry=1) == (200, "ok")  # VK resends
        sid = await anna.chat_with("vk", "Is the shop open on Sunday? (vk)")
        await anna.accept(sid)
        await anna.reply(sid, "Yes, 10 to 16.")
        await wait_for(lambda: ch.vk.sent_to(2002), timeout=60, what="the reply at the VK API")
        await wait_for(lambda: all_delivered(ch, "gateway-vk"), timeout=60, what="the VK gateway done delivering")
        assert [s.message for s in ch.vk.sent_to(2002)] == ["Yes, 10 to 16."]
        assert await anna.transcript(sid) == ["Is the shop open on Sunday? (vk)"]


async def test_a_whatsapp_client_with_a_photo_is_answered_from_the_desk_through_the_container(channels: Channels) -> None:
    ch = channels
    wa = ch.whatsapp
    phone = SHOP["phone_number_id"]
    photo = wa.add_client_media(phone, b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image/jpeg")
    msgs = [
        text(CLIENT, "Is my order ready? (whatsapp)"),
        message(CLIENT, "image", image={"id": photo, "mime_type": "image/jpeg", "caption": "the receipt"}),
    ]
    body = json.dumps(notification(phone, msgs, contacts=[contact(CLIENT, "Sheena")])).encode()
    wa.age_window(phone, CLIENT, hours=0)  # the client just wrote: the window is open
    hook = ch.url("whatsapp", f"/whatsapp/{APP}")
    async with desk_session(ch) as http, aiohttp.ClientSession() as meta:
        # Meta's checks first: the handshake, a forged notification refused.
        async with meta.get(hook, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}) as r:
            assert (r.status, await r.text()) == (200, "42")
        forged = {"Content-Type": "application/json", "X-Hub-Signature-256": wa.sign(body, secret="0" * 32)}
        async with meta.post(hook, data=body, headers=forged) as r:
            assert r.status == 401
        signed = {"Content-Type": "application/json", "X-Hub-Signature-256": wa.sign(body)}
        for _ in range(2):  # WhatsApp sends it again when unsure: stored once
            async with meta.post(hook, data=body, headers=signed) as r:
                assert r.status == 200, await r.text()
        anna = await desk_operator(ch, http)
        sid = await anna.chat_with("whatsapp", "Is my order ready? (whatsapp)")
        await anna.accept(sid)
        await anna.reply(sid, "Yes, it ships today.")
        await wait_for(lambda: wa.sent_to(CLIENT), timeout=60, what="the reply at the Cloud API")
        await wait_for(lambda: all_delivered(ch, "gateway-whatsapp"), timeout=60, what="the WhatsApp gateway done delivering")
        assert [m.text for m in wa.sent_to(CLIENT)] == ["Yes, it ships today."]

        async def both() -> list[str] | None:
            got = await anna.transcript(sid)
            return got if len(got) >= 2 else None

        assert await wait_for(both, timeout=30, what="both messages") == ["Is my order ready? (whatsapp)", "the receipt"]
        history = await (await http.get(f"/api/sessions/{sid}/history")).json()
        (att,) = [a for e in history["entries"] for a in e.get("attachments", [])]
        assert att["ref"].startswith("ol-wa-files:shop_wa/"), "the photo was fetched and kept by the container"

        async def delivered() -> bool:
            marks = (await (await http.get(f"/api/sessions/{sid}/history")).json())["marks"]
            return any(m["status"] == "delivered" for m in marks.values())

        await wait_for(delivered, timeout=60, what="the delivered mark from the status callbacks")


async def test_an_email_client_is_answered_from_the_desk_through_the_containers(channels: Channels) -> None:
    ch = channels
    if ch.imap is None:
        pytest.skip(ch.no_email)
    client = "olga@client.example.test"
    await append(ch.imap, client_mail(f"Olga <{client}>", "My order 42 has not arrived. (email)"))
    async with desk_session(ch) as http:
        anna = await desk_operator(ch, http)
        sid = await anna.chat_with("email", "My order 42 has not arrived. (email)", timeout=90)
        await anna.accept(sid)
        await anna.reply(sid, "It ships today.")

        def replies() -> list[Any]:
            return [r for r in ch.smtp.to(client) if "It ships today." in plain_text(r.message)]

        sent = await wait_for(replies, timeout=60, what="the reply at the SMTP server")
        await wait_for(lambda: all_delivered(ch, "gateway-email"), timeout=60, what="the e-mail gateway done delivering")
        assert len(replies()) == 1
        assert sent[0].message["In-Reply-To"], "threaded onto the client's mail"


def plain_text(msg: Any) -> str:
    body = msg.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


async def test_two_telegram_containers_share_the_webhooks_and_none_is_lost_when_one_is_killed(channels: Channels) -> None:
    ch = channels
    s = ch.stack
    hooks = {name: ch.url(name, f"/telegram/{SALES['account']}") for name in ch.telegram_gateways}
    users = [7101, 7102, 7103, 7104]
    sent: dict[int, list[str]] = {u: [] for u in users}  # texts accepted (200) by a container, per user
    served: Counter[str] = Counter()  # 200 answers per container
    served_before_kill: Counter[str] = Counter()
    failed: Counter[str] = Counter()  # deliveries that did not get a 200 (then sent again to the next container)
    rotation = itertools.cycle(ch.telegram_gateways)
    killing, killed = asyncio.Event(), asyncio.Event()

    async def deliver(http: aiohttp.ClientSession, update: dict[str, Any]) -> None:
        """Like Telegram: send until a 200; the balancer picks the next container for every attempt."""

        async def attempt() -> bool:
            name = next(rotation)
            try:
                status = await webhook(http, hooks[name], SALES, update)
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 200:
                served[name] += 1
                if not killing.is_set():
                    served_before_kill[name] += 1
                return True
            failed[name] += 1
            return False

        await wait_for(attempt, timeout=90, interval=0.1, what=f"update {update['update_id']} accepted")

    async def client(http: aiohttp.ClientSession, user: int) -> None:
        """Writes without pause - before, during and after the kill - until 6 more updates got through after it."""
        after = 0
        while after < 6:
            i = len(sent[user])
            assert i < 2000, "the kill did not complete"
            text = f"sales question {i} from {user}"
            await deliver(http, message_update(ch.telegram.next_update_id(), user, text, message_id=i + 1))
            sent[user].append(text)
            after += killed.is_set()

    async def killer() -> None:
        await wait_for(lambda: sum(served.values()) >= 16 and all(served[n] for n in hooks), timeout=90, what="both serving")
        killing.set()
        await asyncio.to_thread(s.podman, "kill", "-s", "KILL", s.name("telegram-a"))
        killed.set()

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(killer(), *(client(http, u) for u in users))

    expected = [t for u in users for t in sent[u]]
    print(f"{len(expected)} updates; 200s {dict(served)}, before the kill {dict(served_before_kill)}; failed {dict(failed)}")
    assert served_before_kill["telegram-a"] > 0 and served_before_kill["telegram-b"] > 0, served_before_kill
    assert sum(served.values()) == len(expected)
    assert served["telegram-b"] > served_before_kill["telegram-b"], "the survivor took over"
    assert failed["telegram-a"] > 0, "deliveries to the killed container failed and were sent again"

    async with desk_session(ch) as http:
        anna = await desk_operator(ch, http)

        async def everything_in_the_desk() -> Counter[str] | None:
            seen: Counter[str] = Counter()
            for chat in await anna.chats("telegram"):
                seen.update(t for t in await anna.transcript(chat["id"]) if t.startswith("sales question"))
            return seen if set(expected) <= set(seen) else None

        seen = await wait_for(everything_in_the_desk, timeout=120, interval=1, what="every update in the desk")
        assert all(seen[t] == 1 for t in expected), {t: n for t, n in seen.items() if n != 1}
        assert sorted(seen) == sorted(expected)

        # and replies still go out, through the surviving container, once
        sid = await anna.chat_with("telegram", f"sales question 0 from {users[0]}")
        await anna.accept(sid)
        await anna.reply(sid, "Our sales team answers: yes.")
        await wait_for(lambda: ch.telegram.sent(users[0], "sendMessage"), timeout=60, what="the reply after the kill")
        await wait_for(lambda: all_delivered(ch, "gateway-telegram"), timeout=90, what="the Telegram gateway done delivering")
        assert [c.params["text"] for c in ch.telegram.sent(users[0], "sendMessage")] == ["Our sales team answers: yes."]

    nc = await s.connect_admin()
    try:
        info = await nc.jetstream().stream_info(
            subjects.STREAM_IN, subjects_filter=subjects.inbound_account("telegram", SALES["account"])
        )
        assert sum((info.state.subjects or {}).values()) == len(expected), "each update published once"
    finally:
        await nc.close()
