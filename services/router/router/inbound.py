"""The inbound consumer: OL_IN messages handled one at a time, in order, acked
only after their effects are durable."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import FetchTimeoutError
from prometheus_client import Counter, Histogram

from openlines import subjects
from openlines.envelopes import Inbound
from router.engine import Engine

log = logging.getLogger("router.inbound")

HANDLED = Counter("openlines_router_inbound_total", "Inbound messages handled", ["result"])
LATENCY = Histogram("openlines_router_inbound_seconds", "Time to handle one inbound message")

_decode = msgspec.json.Decoder(Inbound)


async def consume(js: JetStreamContext, engine: Engine, durable: str, batch: int, ack_wait: float, stop: asyncio.Event) -> None:
    config = js_api.ConsumerConfig(
        durable_name=durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=1000,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    psub = await js.pull_subscribe(subjects.inbound_all(), durable=durable, stream=subjects.STREAM_IN, config=config)
    log.info("consuming inbound", extra={"consumer": durable})
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(batch=batch, timeout=1.0)
            except (FetchTimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # disconnected: the client reconnects by itself
                log.warning("fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                await _handle(engine, m)
    finally:
        # unsubscribe, not drain: a late fetch answer would hold a drain forever
        await psub.unsubscribe()


async def _handle(engine: Engine, m: object) -> None:
    from nats.aio.msg import Msg

    assert isinstance(m, Msg)
    try:
        envelope = _decode.decode(m.data)
    except msgspec.ValidationError as exc:
        await engine.fx.event(
            f"dead:{m.metadata.stream}:{m.metadata.sequence.stream}",
            "dead_letter",
            reason=f"malformed inbound envelope on {m.subject}: {exc}",
        )
        await m.term()
        HANDLED.labels("dead_letter").inc()
        return
    with LATENCY.time():
        try:
            await engine.handle_inbound(envelope)
        except Exception as exc:
            delay = min(30.0, 0.5 * (2 ** min(m.metadata.num_delivered, 6)))
            log.warning("inbound failed, will retry", extra={"msg_id": envelope.id, "error": repr(exc), "retry_in_s": delay})
            HANDLED.labels("retry").inc()
            try:
                await m.nak(delay=delay)
            except Exception:
                pass  # not acked: redelivered after ack_wait anyway
            return
    await m.ack_sync()
    HANDLED.labels("ok").inc()
