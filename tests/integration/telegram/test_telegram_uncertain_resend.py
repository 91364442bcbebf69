"""A Telegram gateway killed mid-send: the part is sent again, and the resend is counted.

The Bot API has no idempotency key, so after a crash between Telegram
accepting a part and the gateway recording it, nobody knows whether the
client got it. The gateway must not lose the reply: it sends the part again
and records the resend (``uncertain``) so the possible double is never silent.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from support.telegram import fake_telegram, running_gateway
from support.timing import wait_for

from gateway_telegram.sent import SentRecord, open_bucket
from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, Outbound, encode, utcnow
from openlines.lanes import sent_key

ACCOUNT = "support_bot"


def reply(out_id: str, chat: int, text: str) -> Outbound:
    return Outbound(
        id=out_id, session_id="s1", channel="telegram", account=ACCOUNT, chat_id=str(chat), text=text, created_at=utcnow()
    )


async def publish(nc: Any, out: Outbound) -> None:
    subject = subjects.outbound("telegram", ACCOUNT, subjects.chat_key("telegram", ACCOUNT, out.chat_id))
    await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: out.id})


async def record(nc: Any, out_id: str) -> SentRecord | None:
    kv = await open_bucket(nc.jetstream(), ttl=0, replicas=1)
    try:
        entry = await kv.get(sent_key(out_id))
    except Exception:
        return None
    return msgspec.json.decode(entry.value, type=SentRecord) if entry.value else None


async def test_a_part_whose_send_was_cut_short_is_sent_again_and_counted(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as tg, running_gateway(nats_server.url, tg) as gateway:
        before = await _resends(gateway.metrics_port)
        # A clean delivery records the attempt and the result, and no resend.
        await publish(nc, reply("o-clean", 501, "First"))
        clean = await wait_for(lambda: _done(nc, "o-clean"), timeout=15, what="the clean reply recorded")
        assert clean.uncertain == 0 and clean.parts == 1 and clean.attempting == 1
        assert [c.params["text"] for c in tg.sent(501, "sendMessage")] == ["First"]

        # What a gateway killed right after starting the send leaves behind: the attempt, no result.
        kv = await open_bucket(nc.jetstream(), ttl=0, replicas=1)
        await kv.put(sent_key("o-cut"), msgspec.json.encode(SentRecord(id="o-cut", attempting=1)))
        await publish(nc, reply("o-cut", 502, "Second"))
        cut = await wait_for(lambda: _done(nc, "o-cut"), timeout=15, what="the cut-short reply finished")
        assert cut.uncertain == 1 and cut.parts == 1
        assert [c.params["text"] for c in tg.sent(502, "sendMessage")] == ["Second"]  # never lost
        assert await _resends(gateway.metrics_port) == before + 1


async def _done(nc: Any, out_id: str) -> SentRecord | None:
    rec = await record(nc, out_id)
    return rec if rec is not None and rec.done else None


async def _resends(port: int) -> float:
    """The gateway's ``openlines_telegram_uncertain_resends_total`` for the account, from its /metrics (internal port)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("openlines_telegram_uncertain_resends_total{") and f'account="{ACCOUNT}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
