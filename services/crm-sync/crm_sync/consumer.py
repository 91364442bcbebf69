"""The event consumer: OL_EVT session events applied one at a time, in stream
order, acked only after the CRM and the links bucket reflect them.

Like the router's inbound consumer: one unacknowledged event at a time, and
an event that fails is retried *in place* - forever while the CRM or NATS is
unreachable or rate-limiting us (the events wait, in order, nothing lost), a
few times for a refusal before it is dead-lettered with the reason.

An event stays ours for as long as we work on it, however long the CRM makes
us wait: a heartbeat sends an in-progress ack every third of ``ack_wait`` and
renews our claim on the client (crm_sync.claims). If the event reaches
another replica all the same (this one was cut off from NATS), that replica
waits for the claim; if it takes the claim over, this one stops before its
next create (decision 015).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from prometheus_client import Counter, Gauge

from crm_sync.backends.base import CrmUnavailable
from crm_sync.claims import Claim, ClaimLost, Claims
from crm_sync.sync import HANDLED_KINDS, Syncer
from openlines import subjects
from openlines.consume import Durable, dead_letter, keep_alive
from openlines.crashpoints import crash_point
from openlines.envelopes import SessionEvent

log = logging.getLogger("crm_sync.consumer")

HANDLED = Counter("openlines_crm_events_total", "Session events handled by crm-sync", ["result"])
WAITING = Gauge("openlines_crm_waiting", "1 while an event waits for the CRM to come back")

TRANSIENT = (
    CrmUnavailable,
    NatsTimeout,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionClosedError,
    TimeoutError,
)
MAX_OTHER_FAILURES = 5
MAX_DELAY = 10.0

_decode = msgspec.json.Decoder(SessionEvent)


class EventConsumer:
    def __init__(self, js: JetStreamContext, syncer: Syncer, durable: str, ack_wait: float, claims: Claims) -> None:
        self.js = js
        self.syncer = syncer
        self.durable = durable
        self.ack_wait = ack_wait
        self.claims = claims
        self.stop_event = asyncio.Event()
        self.waiting_reason = ""

    async def run(self) -> None:
        config = js_api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=1,  # strict order: a client's close never overtakes its opening
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subjects=[subjects.event(k) for k in HANDLED_KINDS],
        )
        await Durable(self.js, subjects.STREAM_EVT, config).run(self._handle, self.stop_event)

    async def stop(self) -> None:
        self.stop_event.set()

    async def _handle(self, m: Msg) -> None:
        try:
            evt = _decode.decode(m.data)
        except msgspec.ValidationError as exc:
            await self._dead_letter(m, f"malformed session event on {m.subject}: {exc}")
            return
        held: list[Claim] = []  # the claim once we have it (the heartbeat renews it)
        try:
            # The in-progress ack and the claim renewal in one beat, the ack first: a redelivery
            # elsewhere then proves our renewals stopped too (what lets that replica take over sooner).
            async with keep_alive(m, self.ack_wait / 3, also=lambda: self._renew(held)):
                await self._apply(m, evt, held)
        finally:
            if held:
                await held[0].release()

    async def _renew(self, held: list[Claim]) -> bool:
        """Renew our claim on the event's client, if we hold one; False once it is lost (the beats stop)."""
        if held:
            try:
                await held[0].renew()
            except ClaimLost:
                return False  # the next fence stops the work
            except Exception as exc:  # NATS away: try again at the next beat
                log.info("claim not renewed", extra={"error": repr(exc)[:200]})
        return True

    async def _apply(self, m: Msg, evt: SessionEvent, held: list[Claim]) -> None:
        failures = 0
        delay = 0.2
        while True:
            wait = delay
            try:
                if not held:
                    unit = await self.syncer.unit(evt)
                    if unit is not None:
                        meta = m.metadata
                        claim = await self.claims.acquire(
                            unit, str(meta.sequence.stream), self.stop_event, redelivered=meta.num_delivered > 1
                        )
                        if claim is None:
                            return  # stopping: not acked, redelivered before anything newer
                        held.append(claim)
                await self.syncer.handle(evt, held[0].renew if held else None)
                crash_point("crm.event.handled")
                await m.ack_sync()
                crash_point("crm.event.acked")
                HANDLED.labels("ok").inc()
                if self.waiting_reason:
                    log.info("crm reachable again", extra={"session": evt.session_id})
                self.waiting_reason = ""
                WAITING.set(0)
                return
            except ClaimLost:
                # Another replica took the client over (we were cut off too long): it applies
                # the event; we leave it unacknowledged and create nothing more.
                log.warning("event left to the replica that took its client over", extra={"session": evt.session_id})
                HANDLED.labels("handed_over").inc()
                self.waiting_reason = ""
                WAITING.set(0)
                return
            except Exception as exc:
                transient = isinstance(exc, TRANSIENT)
                failures += 0 if transient else 1
                if isinstance(exc, CrmUnavailable) and exc.retry_after:
                    wait = min(max(delay, exc.retry_after), MAX_DELAY)
                HANDLED.labels("retry").inc()
                self.waiting_reason = str(exc)[:200]
                WAITING.set(1)
                log.warning(
                    "crm sync failed, retrying in place",
                    extra={
                        "session": evt.session_id,
                        "kind": evt.kind,
                        "error": repr(exc)[:300],
                        "transient": transient,
                        "retry_in_s": wait,
                    },
                )
                if failures >= MAX_OTHER_FAILURES:
                    await self._dead_letter(m, f"crm-sync could not apply {evt.kind} of {evt.session_id}: {exc!r}"[:1000])
                    self.waiting_reason = ""
                    WAITING.set(0)
                    return
            if self.stop_event.is_set():
                return  # not acked: redelivered before anything newer
            try:  # back-off between attempts at the CRM, cut short by a stop
                await asyncio.wait_for(self.stop_event.wait(), timeout=wait)
                return
            except TimeoutError:
                pass
            delay = min(delay * 2, MAX_DELAY)

    async def _dead_letter(self, m: Msg, reason: str) -> None:
        await dead_letter(self.js, m, reason, prefix="crm-dead")
        HANDLED.labels("dead_letter").inc()
        log.error("session event dead-lettered", extra={"reason": reason[:300]})
