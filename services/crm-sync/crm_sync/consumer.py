"""The event consumer: OL_EVT session events, each client's in stream order,
acked only after the CRM and the links bucket reflect them.

Up to ``concurrency`` events are in hand at once over all replicas (the
consumer's ``max_ack_pending``); an event starts only when every earlier event
of its client is acknowledged (crm_sync.order, decision 030), so one client's
close never overtakes its opening while other clients move on. An event that
fails is retried *in place* - forever while the CRM or NATS is unreachable or
rate-limiting us (that client's later events wait, nothing lost), a few times
for a refusal before it is dead-lettered with the reason.

An event stays ours for as long as we work on it, however long the CRM makes
us wait: a heartbeat sends an in-progress ack every third of ``ack_wait`` and
renews our claim on the client (crm_sync.claims). If the event reaches
another replica all the same (this one was cut off from NATS), that replica
waits for the claim; if it takes the claim over, this one stops before its
next create (decision 015).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter, Gauge

from crm_sync.backends.base import CrmUnavailable
from crm_sync.claims import Claim, ClaimLost, Claims
from crm_sync.order import ClientOrder
from crm_sync.sync import HANDLED_KINDS, Syncer
from openlines import bus, subjects
from openlines.consume import Durable, dead_letter, keep_alive
from openlines.crashpoints import crash_point
from openlines.envelopes import SessionEvent

log = logging.getLogger("crm_sync.consumer")

HANDLED = Counter("openlines_crm_events_total", "Session events handled by crm-sync", ["result"])
CUT_OFF = Counter(
    "openlines_crm_attempts_cut_off_total", "Attempts at an event cut off after OPENLINES_CRM_ATTEMPT_TIMEOUT (retried)"
)
WAITING = Gauge("openlines_crm_waiting", "1 while an event waits for the CRM to come back")

TRANSIENT: tuple[type[Exception], ...] = (CrmUnavailable, *bus.UNAVAILABLE)
MAX_OTHER_FAILURES = 5
MAX_DELAY = 10.0

_decode = msgspec.json.Decoder(SessionEvent)


class EventConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        syncer: Syncer,
        durable: str,
        ack_wait: float,
        claims: Claims,
        concurrency: int = 1,
        attempt_timeout: float = 300.0,
    ) -> None:
        self.js = js
        self.syncer = syncer
        self.durable = durable
        self.ack_wait = ack_wait
        self.claims = claims
        self.concurrency = concurrency
        self.attempt_timeout = attempt_timeout
        self.stop_event = asyncio.Event()
        self._waiting: dict[int, str] = {}  # stream sequence -> why that event waits for the CRM
        kinds = [subjects.event(k) for k in HANDLED_KINDS]
        self.order = ClientOrder(js, subjects.STREAM_EVT, durable, set(kinds))
        self._kinds = kinds
        self._in_hand: set[asyncio.Task[None]] = set()
        self._durable: Durable | None = None

    async def run(self) -> None:
        config = js_api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            # Events in hand at once, all replicas together; each client's stay in order (crm_sync.order).
            max_ack_pending=self.concurrency,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subjects=self._kinds,
        )
        self._durable = Durable(self.js, subjects.STREAM_EVT, config, batch=self._room)
        try:
            await self._durable.run(self._start, self.stop_event)
        finally:
            # Stopping: what is in hand ends unacknowledged (redelivered, in order) or finishes its step.
            await asyncio.gather(*self._in_hand, return_exceptions=True)

    def _room(self) -> int:
        return self.concurrency - len(self._in_hand)

    async def _start(self, m: Msg) -> None:
        """Take the event on in its own task: the next one is fetched while it is applied."""
        task = asyncio.create_task(self._handle_or_nak(m))
        self._in_hand.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        if self._durable is not None:
            self._durable.room_freed()

    async def _handle_or_nak(self, m: Msg) -> None:
        try:
            await self._handle(m)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event not handled, it comes again", extra={"error": repr(exc)[:300]})
            with contextlib.suppress(Exception):  # NATS away: ack_wait redelivers it
                await m.nak(delay=1.0)
        finally:
            self._wait_reason(m.metadata.sequence.stream, "")  # no longer in hand here

    async def stop(self) -> None:
        self.stop_event.set()

    @property
    def waiting_reason(self) -> str:
        """Why an event in hand waits for the CRM ("" when none does): readiness says it."""
        return next(iter(self._waiting.values()), "")

    def _wait_reason(self, seq: int, reason: str) -> None:
        if reason:
            self._waiting[seq] = reason
        else:
            self._waiting.pop(seq, None)
        WAITING.set(1 if self._waiting else 0)

    async def _handle(self, m: Msg) -> None:
        try:
            evt = _decode.decode(m.data)
        except msgspec.ValidationError as exc:
            await self._dead_letter(m, f"malformed session event on {m.subject}: {exc}")
            return
        seq = m.metadata.sequence.stream
        self.order.saw(seq, evt.client_id)
        # Keep alive while waiting too: an earlier event of the client may take long (the CRM throttling).
        async with keep_alive(m, self.ack_wait / 3):
            while evt.client_id:
                try:
                    if not await self.order.wait_turn(evt.client_id, seq, self.stop_event):
                        return  # stopping: not acked, redelivered in order
                    break
                except Exception as exc:  # NATS away: look again shortly
                    log.info("event order not read", extra={"error": repr(exc)[:200]})
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), timeout=0.5)
                        return
                    except TimeoutError:
                        pass
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
        seq = m.metadata.sequence.stream
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
                            unit,
                            str(meta.sequence.stream),
                            self.stop_event,
                            redelivered=meta.num_delivered > 1,
                            acked=self.order.acked,
                        )
                        if claim is None:
                            return  # stopping: not acked, redelivered before anything newer
                        held.append(claim)
                # One attempt is bounded: an await that never ends (a reply lost in a NATS fault) would
                # otherwise hold the event, its client's claim and a place in hand for ever.
                deadline = asyncio.timeout(self.attempt_timeout)
                try:
                    async with deadline:
                        await self.syncer.handle(evt, held[0].renew if held else None)
                        crash_point("crm.event.handled")
                        await m.ack_sync()
                except TimeoutError:
                    if deadline.expired():
                        CUT_OFF.inc()
                    raise
                crash_point("crm.event.acked")
                HANDLED.labels("ok").inc()
                if seq in self._waiting:
                    log.info("crm reachable again", extra={"session": evt.session_id})
                self._wait_reason(seq, "")
                return
            except ClaimLost:
                # Another replica took the client over (we were cut off too long): it applies
                # the event; we leave it unacknowledged and create nothing more.
                log.warning("event left to the replica that took its client over", extra={"session": evt.session_id})
                HANDLED.labels("handed_over").inc()
                self._wait_reason(seq, "")
                return
            except Exception as exc:
                transient = isinstance(exc, TRANSIENT) or bus.storing_already(exc)
                failures += 0 if transient else 1
                if isinstance(exc, CrmUnavailable) and exc.retry_after:
                    wait = min(max(delay, exc.retry_after), MAX_DELAY)
                HANDLED.labels("retry").inc()
                self._wait_reason(seq, str(exc)[:200])
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
                    self._wait_reason(seq, "")
                    return
            if self.stop_event.is_set():
                self._wait_reason(seq, "")
                return  # not acked: redelivered before anything newer
            if await self.order.acked(seq):
                # Our ack reached the server and its answer did not, or another replica applied the
                # event after taking its client over: done, nothing to retry.
                log.info("event acknowledged already", extra={"session": evt.session_id, "seq": seq})
                HANDLED.labels("ok").inc()
                self._wait_reason(seq, "")
                return
            try:  # back-off between attempts at the CRM, cut short by a stop
                await asyncio.wait_for(self.stop_event.wait(), timeout=wait)
                self._wait_reason(seq, "")
                return
            except TimeoutError:
                pass
            delay = min(delay * 2, MAX_DELAY)

    async def _dead_letter(self, m: Msg, reason: str) -> None:
        await dead_letter(self.js, m, reason, prefix="crm-dead")
        HANDLED.labels("dead_letter").inc()
        log.error("session event dead-lettered", extra={"reason": reason[:300]})
