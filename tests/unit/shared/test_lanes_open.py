"""What every channel's sender does first with a held message (openlines.lanes.LaneSender._open)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from prometheus_client import Gauge

from openlines.envelopes import Outbound, utcnow
from openlines.lanes import Held, LaneSender, PartsSent, SentLog

HELD = Gauge("test_lanes_open_held", "held messages")


class Record(PartsSent, kw_only=True, omit_defaults=True):
    pass


class Log(SentLog[Record]):
    def __init__(self, records: dict[str, Record]) -> None:
        self.records = records

    async def get(self, outbound_id: str) -> Record:
        return self.records.get(outbound_id, Record(id=outbound_id))


class Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done: list[str] = []

    async def term(self) -> None:
        self.done.append("term")

    async def ack_sync(self) -> None:
        self.done.append("ack")


def opened(data: bytes, records: dict[str, Record]) -> tuple[Any, list[str]]:
    sender = LaneSender(None, "telegram", "c", in_flight=1, ack_wait=30, retry_delay=1, shutdown_timeout=1, held_gauge=HELD)  # type: ignore[arg-type]
    msg = Msg(data)
    result = asyncio.run(sender._open(Held(msg=msg, seq=7, account="sales"), Log(records)))  # type: ignore[arg-type]
    return result, msg.done


OUT = Outbound(id="out:s1:r1", session_id="s1", channel="telegram", account="sales", chat_id="42", created_at=utcnow(), text="hi")


def test_a_new_message_is_opened_with_a_fresh_record_and_left_unacked() -> None:
    result, done = opened(msgspec.json.encode(OUT), {})
    assert result == (OUT, Record(id=OUT.id)) and done == []


def test_a_message_half_sent_before_a_crash_is_opened_with_its_record() -> None:
    half = Record(id=OUT.id, parts=1, attempting=2)
    result, done = opened(msgspec.json.encode(OUT), {OUT.id: half})
    assert result == (OUT, half) and done == []


def test_a_redelivery_of_a_delivered_or_given_up_message_is_acked_without_a_send() -> None:
    for rec in (Record(id=OUT.id, parts=1, done=True), Record(id=OUT.id, done=True, failed="blocked")):
        result, done = opened(msgspec.json.encode(OUT), {OUT.id: rec})
        assert result is None and done == ["ack"]


def test_an_undecodable_message_is_dropped_for_good() -> None:
    for data in (b"{not json", b'{"id": "x"}'):
        result, done = opened(data, {})
        assert result is None and done == ["term"]
