"""crm-sync with several events in hand (decision 030), against a real nats-server: another client's
event goes ahead of an unacknowledged one, the same client's later event waits until the earlier one is
acknowledged (wherever it is in hand), and an event of a kind crm-sync does not take never holds one up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from nats.js import api as js_api
from support.timing import scaled, wait_for

from crm_sync.order import ClientOrder
from crm_sync.sync import HANDLED_KINDS
from openlines import subjects
from openlines.envelopes import SessionEvent, encode

DURABLE = "crm-order-test"


async def _event(js: Any, kind: str, client: str, session: str) -> int:
    evt = SessionEvent(id=f"{kind}-{session}", kind=kind, at=datetime.now(UTC), session_id=session, client_id=client)
    ack = await js.publish(subjects.event(kind), encode(evt))
    return int(ack.seq)


async def test_a_clients_later_event_waits_for_its_earlier_one_and_other_clients_go_ahead(nc: Any) -> None:
    js = nc.jetstream()
    kinds = [subjects.event(k) for k in HANDLED_KINDS]
    # Not a kind crm-sync takes (never acknowledged by its consumer): it must hold nobody up.
    other_kind = await _event(js, "session_waiting", "c1", "s0")
    c1_opened = await _event(js, "session_opened", "c1", "s1")
    c2_opened = await _event(js, "session_opened", "c2", "s2")
    c1_closed = await _event(js, "session_closed", "c1", "s1")
    await js.add_consumer(
        subjects.STREAM_EVT,
        js_api.ConsumerConfig(
            name=DURABLE,
            durable_name=DURABLE,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=16,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subjects=kinds,
        ),
    )
    psub = await js.pull_subscribe_bind(durable=DURABLE, stream=subjects.STREAM_EVT)
    msgs = await psub.fetch(3, timeout=5)
    by_seq = {m.metadata.sequence.stream: m for m in msgs}
    assert sorted(by_seq) == [c1_opened, c2_opened, c1_closed] and other_kind < c1_opened

    # A replica that was given none of them (another replica holds them): it reads them by sequence.
    order = ClientOrder(js, subjects.STREAM_EVT, DURABLE, set(kinds))
    stop = asyncio.Event()
    assert await asyncio.wait_for(order.wait_turn("c1", c1_opened, stop), timeout=scaled(30))  # the earlier kind is not ours
    assert await asyncio.wait_for(order.wait_turn("c2", c2_opened, stop), timeout=scaled(30))  # c1's opening not acked: c2 goes
    closing = asyncio.create_task(order.wait_turn("c1", c1_closed, stop))
    await asyncio.sleep(0.5)  # several looks at the ack floor
    assert not closing.done(), "c1's close went ahead of its unacknowledged opening"
    await by_seq[c2_opened].ack_sync()  # another client's event acknowledged: still waits
    await asyncio.sleep(0.5)
    assert not closing.done()
    await by_seq[c1_opened].ack_sync()  # acknowledged (by the other replica): its turn
    assert await wait_for(lambda: closing.done() and closing.result(), timeout=10, what="c1's close let through")


async def test_an_event_waiting_for_its_clients_earlier_one_gives_up_when_stopped(nc: Any) -> None:
    js = nc.jetstream()
    kinds = [subjects.event(k) for k in HANDLED_KINDS]
    first = await _event(js, "session_opened", "c3", "s3")
    later = await _event(js, "session_closed", "c3", "s3")
    await js.add_consumer(
        subjects.STREAM_EVT,
        js_api.ConsumerConfig(name=DURABLE, durable_name=DURABLE, ack_policy=js_api.AckPolicy.EXPLICIT, filter_subjects=kinds),
    )
    order = ClientOrder(js, subjects.STREAM_EVT, DURABLE, set(kinds))
    order.saw(first, "c3")
    stop = asyncio.Event()
    waiting = asyncio.create_task(order.wait_turn("c3", later, stop))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    stop.set()
    await wait_for(waiting.done, what="the waiting event giving up")
    assert waiting.result() is False
