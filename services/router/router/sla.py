"""SLA clocks: the line's first-response and next-response targets, watched per chat.

A durable consumer of its own on OL_HIST (``router-sla``) reads every transcript entry in
order, folds it into the session's clock (``router.core.sla``) in the ``ol-sla`` bucket and
sets a durable ``sla`` timer on OL_TIMER for the moment the running clock runs out. When the
timer falls due and its clock still runs (no operator answered, the chat is open), the
breach is published as an ``sla_breached`` event: the desk tells the line's supervisors, the
statistics count it. Session handling (router/engine.py) knows nothing of this.

Why a consumer of the transcript and not hooks in the engine: the transcript is where a
client message and an operator answer are both recorded, once each, whoever wrote them
(router, supervisor, API); docs/decisions/021-sla-clocks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import bus, subjects
from openlines.bus import Buckets, kv_get, kv_update
from openlines.consume import Durable
from openlines.envelopes import HistoryEntry
from openlines.lines import SlaConfig
from openlines.state import Session
from router.core import sla as rule
from router.effects import Effects
from router.lines_cache import LinesCache
from router.timers import NotDue, Timer, schedule

log = logging.getLogger("router.sla")

BREACHES = Counter("openlines_router_sla_breaches_total", "SLA targets passed", ["target"])
DURABLE = subjects.ROUTER_SLA_CONSUMER
SLA_HISTORY = 1  # revisions kept per clock: only the current one matters

_entry = msgspec.json.Decoder(HistoryEntry)


def _has_targets(sla: SlaConfig) -> bool:
    return bool(sla.first_response_seconds or sla.next_response_seconds)


class SlaWatch:
    def __init__(self, js: JetStreamContext, buckets: Buckets, lines: LinesCache, fx: Effects, *, replicas: int = 1) -> None:
        self.js = js
        self.b = buckets
        self.lines = lines
        self.fx = fx
        self.replicas = replicas
        self.kv: KeyValue
        self._targets_of = (-1, False)  # (lines version, whether any line has targets)

    def _any_targets(self) -> bool:
        version, any_targets = self._targets_of
        if version != self.lines.version:
            any_targets = any(_has_targets(line.sla) for line in self.lines.lines.values())
            self._targets_of = (self.lines.version, any_targets)
        return any_targets

    async def open(self) -> SlaWatch:
        self.kv = await bus.own_bucket(self.js, subjects.KV_SLA, history=SLA_HISTORY, replicas=self.replicas)
        return self

    # -- the transcript side ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fold transcript entries into clocks until ``stop``; a NATS outage only pauses it."""
        config = js_api.ConsumerConfig(
            name=DURABLE,
            durable_name=DURABLE,
            filter_subject=subjects.history_all(),
            # From its creation on: a router upgraded to SLA clocks does not replay every old transcript.
            deliver_policy=js_api.DeliverPolicy.NEW,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,
        )
        # keep_order: a chat's entries stay in order - the rest of a batch comes back after a failed one.
        consumer = Durable(self.js, subjects.STREAM_HIST, config, batch=64, retry_delay=1.0, keep_order=True)
        await consumer.run(self._one, stop)

    async def _one(self, m: Msg) -> None:
        await self.entry(m.data, m.metadata.sequence.stream)
        # Not waited for: an entry taken twice changes nothing (a clock keeps the sequence of the last entry it took,
        # an older one is ignored; a timer is set again under the same id), so an ack lost on the way only brings
        # its entry back after ack_wait. Waiting for each answer made the watch fall behind busy transcripts.
        await m.ack()

    async def entry(self, data: bytes, seq: int) -> None:
        if not self._any_targets():
            return  # no line has targets: no read per transcript entry
        try:
            entry = _entry.decode(data)
        except msgspec.DecodeError:
            return  # not ours to judge: the desk shows what it can of it
        session, _ = await kv_get(self.b.sessions, entry.session_id, Session)
        if session is None:
            return
        if not session.is_open:
            # A closed session stops its clock (its closing text and note come after the close).
            with contextlib.suppress(Exception):
                await self.kv.delete(session.id)
            return
        line = self.lines.lines.get(session.line_id)
        if line is None:
            return
        kind = rule.entry_kind(entry.direction, entry.author_id)
        if kind == "other":
            return
        targets = line.sla
        if not _has_targets(targets):
            return  # no targets on this line: nothing to watch (and no write per message)
        at = entry.at.timestamp()
        clock = await kv_update(
            self.kv,
            session.id,
            rule.Clock,
            lambda c: rule.apply(c, session_id=session.id, line_id=session.line_id, kind=kind, at=at, seq=seq, sla=targets),
        )
        if kind == "client" and clock is not None and clock.target is not None and not clock.breached:
            # Set again on every client message while the clock runs: a crash between the clock's
            # write and this leaves no clock without its timer (the same timer id: deduplicated).
            await schedule(self.js, Timer(kind="sla", target=session.id, due=clock.due, token=clock.token))

    # -- the timer side -------------------------------------------------------------------------

    async def fire(self, timer: Timer) -> None:
        clock, _ = await kv_get(self.kv, timer.target, rule.Clock)
        outcome = rule.check(clock, timer.token, time.time())
        if outcome is None or clock is None:
            return
        if isinstance(outcome, float):
            raise NotDue(outcome)
        session, _ = await kv_get(self.b.sessions, timer.target, Session)
        if session is None or not session.is_open:
            with contextlib.suppress(Exception):
                await self.kv.delete(timer.target)
            return
        # The event first, under an id of this clock: a crash before the clock is marked publishes it
        # again under the same id, which the stream's duplicate window drops.
        await self.fx.event(f"sla:{session.id}:{clock.token}", "sla_breached", session, reason=outcome.reason)
        BREACHES.labels(outcome.target).inc()
        log.info("sla target passed", extra={"session": session.id, "line": session.line_id, "target": outcome.target})
        await kv_update(
            self.kv,
            session.id,
            rule.Clock,
            lambda c: msgspec.structs.replace(c, breached=True) if c is not None and c.token == clock.token else None,
        )
