"""Statistics kept as events arrive (docs/decisions/019-statistics-aggregates.md).

One durable consumer on ``OL_EVT`` (``desk-stats``), shared by every desk replica and
holding one event in flight at a time, folds each session event into two KV buckets:

- ``ol-desk-stats-trace``: per session, what the later events need to know (when and on
  which line and channel it opened, whether it was answered, closed, rated);
- ``ol-desk-stats``: per line and UTC day, one :class:`Day` of per-hour cells, the line's
  and each operator's.

Every figure lands in the hour the session was *opened* (as before: a session counts
for the range its opening falls in). Both writes are compare-and-set and remember the
stream sequence of the last event folded in, so an event delivered twice (a replica
died before its ack) is counted once: the day is written first, the trace second, and
an event the trace already holds is skipped whole.

:func:`fold` and :func:`summarise` are pure; :class:`Aggregator` and :func:`report` are
the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import bus, subjects
from openlines.bus import kv_get, kv_update
from openlines.consume import Durable
from openlines.envelopes import SessionEvent

log = logging.getLogger("desk.stats")

SPAM_REASON = "marked as spam"
NO_ANSWER = "no answer"  # offer_declined's reason when the operator let the offer time out
TRACE_DAYS = 90  # a session's trace is kept this long: events of a session open longer are not counted
# SLA: a session with an ``sla_breached`` event (the router's SLA clocks, docs/lines.md
# "[lines.sla]") missed a first- or next-response target; counted once per session. A line
# without targets never breaches and its "SLA met" column reads 100 %.
SLA_BREACHED = "sla_breached"
KINDS = ("session_opened", "session_answered", "offer_declined", "session_closed", "session_rated", SLA_BREACHED)

FOLDED = Counter("openlines_desk_stats_events_total", "Session events folded into the statistics", ["result"])

_decoder = msgspec.json.Decoder(SessionEvent)


# -- the stored shapes ---------------------------------------------------------------------------


class Cell(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The figures of the sessions opened in one hour: a line's, or one operator's on that line."""

    chats: dict[str, int] = {}  # channel -> sessions opened (an operator's: the sessions they answered first)
    answered: int = 0
    missed: int = 0  # closed before any answer, spam excepted
    spam: int = 0  # closed as spam before any answer
    first_response: dict[str, int] = {}  # whole seconds -> how many sessions
    resolution: dict[str, int] = {}  # whole seconds from opening to closing, answered sessions
    ratings: dict[str, int] = {}  # "1".."5" -> how many
    offers_missed: int = 0  # offers that ran out of time (no answer within wait_seconds)
    offers_passed: int = 0  # offers passed on: skipped, or the operator went away
    sla_breached: int = 0  # sessions with an sla_breached event


class Day(msgspec.Struct, kw_only=True, omit_defaults=True):
    line_id: str
    day: str  # YYYY-MM-DD, UTC
    seq: int = 0  # the last OL_EVT sequence folded in
    hours: dict[str, Cell] = {}  # "00".."23" (UTC) -> the line's cell
    operators: dict[str, dict[str, Cell]] = {}  # operator -> hour -> their cell


class Trace(msgspec.Struct, kw_only=True, omit_defaults=True):
    line_id: str
    opened: datetime
    channel: str = ""
    seq: int = 0  # the last OL_EVT sequence folded in
    answered_by: str = ""
    answered: bool = False
    closed: bool = False
    rated: bool = False
    breached: bool = False


# (operator or "" for the line, Cell field, key of a counted dict or "") - each one adds 1
Inc = tuple[str, str, str]


def _is_token(value: str) -> bool:
    try:
        subjects.token(value, "id")
    except subjects.BadToken:
        return False
    return True


def day_key(line_id: str, day: str) -> str:
    return f"{line_id}.{day.replace('-', '')}"


def fold(trace: Trace | None, e: SessionEvent, seq: int) -> tuple[Trace | None, list[Inc]]:
    """What one event changes: the session's new trace (None: nothing) and the increments to its opening hour."""
    if e.kind == "session_opened":
        if trace is not None or not e.line_id:
            return None, []
        return Trace(line_id=e.line_id, opened=e.at, channel=e.channel, seq=seq), [("", "chats", e.channel or "unknown")]
    if trace is None or seq <= trace.seq:
        return None, []
    t = msgspec.structs.replace(trace, seq=seq)
    incs: list[Inc] = []
    if e.kind == "session_answered":
        if trace.answered:
            return t, []
        t.answered, t.answered_by = True, e.operator_id
        secs = _seconds(trace.opened, e.at)
        incs = [("", "answered", ""), ("", "first_response", secs)]
        if e.operator_id:
            op = e.operator_id
            incs += [(op, "chats", trace.channel or "unknown"), (op, "answered", ""), (op, "first_response", secs)]
    elif e.kind == "offer_declined":
        field = "offers_missed" if e.reason == NO_ANSWER else "offers_passed"
        incs = [("", field, "")] + ([(e.operator_id, field, "")] if e.operator_id else [])
    elif e.kind == "session_closed":
        if trace.closed:
            return t, []
        t.closed = True
        if trace.answered:
            secs = _seconds(trace.opened, e.at)
            op = e.operator_id or trace.answered_by
            incs = [("", "resolution", secs)] + ([(op, "resolution", secs)] if op else [])
        else:
            incs = [("", "spam" if e.reason == SPAM_REASON else "missed", "")]
    elif e.kind == "session_rated":
        if trace.rated or e.reason not in ("1", "2", "3", "4", "5"):
            return t, []
        t.rated = True
        op = e.operator_id or trace.answered_by
        incs = [("", "ratings", e.reason)] + ([(op, "ratings", e.reason)] if op else [])
    elif e.kind == SLA_BREACHED:
        if trace.breached:
            return t, []
        t.breached = True
        op = e.operator_id or trace.answered_by
        incs = [("", "sla_breached", "")] + ([(op, "sla_breached", "")] if op else [])
    return t, incs


def _met(chats: int, breached: int) -> float | None:
    return round(100 * max(0, chats - breached) / chats, 1) if chats > 0 else None


def _seconds(start: datetime, end: datetime) -> str:
    return str(max(0, int((end - start).total_seconds())))


def apply(day: Day | None, line_id: str, opened: datetime, incs: list[Inc], seq: int) -> Day | None:
    """``day`` with the increments added to the hour of ``opened``; None when it already holds event ``seq``."""
    opened = opened.astimezone(UTC)
    d = day or Day(line_id=line_id, day=opened.date().isoformat())
    if seq <= d.seq:
        return None
    d = msgspec.structs.replace(d, seq=seq, hours=dict(d.hours), operators=dict(d.operators))
    hour = f"{opened.hour:02d}"
    for who, field, key in incs:
        if who:
            per_op = d.operators[who] = dict(d.operators.get(who, {}))
            cell = per_op[hour] = _copy(per_op.get(hour))
        else:
            cell = d.hours[hour] = _copy(d.hours.get(hour))
        if key:
            counts: dict[str, int] = dict(getattr(cell, field))
            counts[key] = counts.get(key, 0) + 1
            setattr(cell, field, counts)
        else:
            setattr(cell, field, getattr(cell, field) + 1)
    return d


def _copy(cell: Cell | None) -> Cell:
    return msgspec.structs.replace(cell) if cell is not None else Cell()


# -- reading: days -> figures ----------------------------------------------------------------------


class Spread(msgspec.Struct, kw_only=True):
    count: int = 0
    median_seconds: float | None = None
    p90_seconds: float | None = None
    avg_seconds: float | None = None


class Figures(msgspec.Struct, kw_only=True):
    """A line's (or an operator's) figures for a range. Docs: docs/admin.md, "Statistics"."""

    sessions: int = 0  # a line's: opened; an operator's: answered first by them
    answered: int = 0
    missed: int = 0
    open_unanswered: int = 0
    by_channel: dict[str, int] = {}
    by_hour: list[int] = msgspec.field(default_factory=lambda: [0] * 24)  # hour of day of the opening, in the asked zone
    by_day: dict[str, int] = {}  # day (in the asked zone) -> sessions
    first_response: Spread = msgspec.field(default_factory=Spread)
    resolution: Spread = msgspec.field(default_factory=Spread)
    ratings: dict[str, int] = {}
    rated: int = 0
    rating_avg: float | None = None
    offers_missed: int = 0
    offers_passed: int = 0
    sla_breached: int = 0
    sla_met_percent: float | None = None  # chats (spam aside) without an sla_breached event, of all chats


class OperatorFigures(Figures, kw_only=True):
    operator_id: str
    name: str = ""


class LineFigures(Figures, kw_only=True):
    line_id: str
    name: str = ""
    # kept for the API's earlier readers
    first_response_avg_seconds: float | None = None
    first_response_p50_seconds: float | None = None
    operators: list[OperatorFigures] = []


def spread(counts: dict[str, int]) -> Spread:
    """Median (the middle value, or the mean of the two middle ones) and p90 (nearest rank: the smallest
    value with at least 90 % of the values at or below it) of whole seconds."""
    values = sorted(v for k, n in counts.items() for v in [int(k)] * n)
    if not values:
        return Spread()
    rank = -(-9 * len(values) // 10)  # ceil(0.9 n), 1-based
    return Spread(
        count=len(values),
        median_seconds=float(statistics.median(values)),
        p90_seconds=float(values[rank - 1]),
        avg_seconds=round(statistics.fmean(values), 3),
    )


class _Acc:
    def __init__(self) -> None:
        self.cell: dict[str, Any] = {}
        self.by_hour = [0] * 24
        self.by_day: dict[str, int] = {}

    def add(self, local: datetime, c: Cell) -> None:
        n = sum(c.chats.values())
        self.by_hour[local.hour] += n
        day = local.date().isoformat()
        self.by_day[day] = self.by_day.get(day, 0) + n
        for f in Cell.__struct_fields__:
            v = getattr(c, f)
            if isinstance(v, dict):
                have = self.cell.setdefault(f, {})
                for k, x in v.items():
                    have[k] = have.get(k, 0) + x
            else:
                self.cell[f] = self.cell.get(f, 0) + v

    def figures(self, typ: type[Figures], **extra: Any) -> Any:
        c = msgspec.convert(self.cell, Cell)
        sessions = sum(c.chats.values())
        rated = sum(c.ratings.values())
        out = typ(
            sessions=sessions,
            answered=c.answered,
            missed=c.missed,
            open_unanswered=max(0, sessions - c.answered - c.missed - c.spam),
            by_channel=dict(sorted(c.chats.items())),
            by_hour=self.by_hour,
            by_day=dict(sorted(self.by_day.items())),
            first_response=spread(c.first_response),
            resolution=spread(c.resolution),
            ratings={k: c.ratings[k] for k in sorted(c.ratings)},
            rated=rated,
            rating_avg=round(sum(int(k) * n for k, n in c.ratings.items()) / rated, 3) if rated else None,
            offers_missed=c.offers_missed,
            offers_passed=c.offers_passed,
            sla_breached=c.sla_breached,
            # Of the chats (spam aside), the share that never passed a target: a chat left unanswered past
            # its target failed it too, so the breached ones are counted against all, not only the answered.
            sla_met_percent=_met(sessions - c.spam, c.sla_breached),
            **extra,
        )
        return out


def summarise(
    days: Iterable[Day],
    start: datetime,
    end: datetime,
    line_ids: Iterable[str],
    line_names: dict[str, str] | None = None,
    operator_names: dict[str, str] | None = None,
    tz: tzinfo = UTC,
) -> list[LineFigures]:
    """Per line, the figures of the sessions opened in the whole UTC hours of ``[start, end)``; by hour
    and by day in ``tz`` (a zone whose offset is not whole hours puts each UTC hour at its local start)."""
    line_names, operator_names = line_names or {}, operator_names or {}
    lines = {line_id: _Acc() for line_id in line_ids}
    ops: dict[str, dict[str, _Acc]] = {line_id: {} for line_id in lines}
    for d in days:
        if d.line_id not in lines:
            continue
        base = datetime.combine(date.fromisoformat(d.day), datetime.min.time(), tzinfo=UTC)
        for hour, cell in d.hours.items():
            at = base + timedelta(hours=int(hour))
            if start <= at < end:
                lines[d.line_id].add(at.astimezone(tz), cell)
        for op, hours in d.operators.items():
            for hour, cell in hours.items():
                at = base + timedelta(hours=int(hour))
                if start <= at < end:
                    ops[d.line_id].setdefault(op, _Acc()).add(at.astimezone(tz), cell)
    out = []
    for line_id, acc in lines.items():
        operators = [
            a.figures(OperatorFigures, operator_id=op, name=operator_names.get(op, op)) for op, a in sorted(ops[line_id].items())
        ]
        f: LineFigures = acc.figures(LineFigures, line_id=line_id, name=line_names.get(line_id, line_id), operators=operators)
        f.first_response_avg_seconds = f.first_response.avg_seconds
        f.first_response_p50_seconds = f.first_response.median_seconds
        out.append(f)
    return out


def days_between(start: datetime, end: datetime) -> list[str]:
    """The UTC days that ``[start, end)`` touches."""
    first, last = start.astimezone(UTC).date(), (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


# -- the shell -------------------------------------------------------------------------------------


async def _bucket(js: JetStreamContext, name: str, replicas: int, max_age: float | None = None) -> KeyValue:
    return await bus.own_bucket(js, name, replicas=replicas, ttl=max_age)


class Aggregator:
    """Folds OL_EVT into the statistics buckets; every desk replica runs one, they share the consumer."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self.days: KeyValue | None = None
        self.traces: KeyValue | None = None
        self.consumer: Durable | None = None
        self._stop = asyncio.Event()

    async def open(self) -> None:
        self.days = await _bucket(self.js, subjects.KV_DESK_STATS, self.replicas)
        self.traces = await _bucket(self.js, subjects.KV_DESK_STATS_TRACE, self.replicas, TRACE_DAYS * 86400.0)
        cfg = js_api.ConsumerConfig(
            durable_name=subjects.DESK_STATS_CONSUMER,
            filter_subjects=[subjects.event(kind) for kind in KINDS],
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            # One event in flight across every replica: events of a session are folded in stream order.
            max_ack_pending=1,
            ack_wait=30.0,
            max_deliver=-1,
            num_replicas=self.replicas,
        )
        self.consumer = Durable(self.js, subjects.STREAM_EVT, cfg, fetch_timeout=5.0, retry_delay=2.0)
        await self.consumer.create()

    async def run(self) -> None:
        if self.consumer is None:
            await self.open()
        assert self.consumer is not None
        # A fold that fails is not acked: the event comes again (folding it twice counts it once).
        await self.consumer.run(self._fold_and_ack, self._stop)

    async def _fold_and_ack(self, m: Msg) -> None:
        await self.fold_one(m.data, m.metadata.sequence.stream)
        await m.ack()

    async def fold_one(self, data: bytes, seq: int) -> None:
        assert self.days is not None and self.traces is not None
        try:
            e = _decoder.decode(data)
        except msgspec.DecodeError:
            # The event stays in OL_EVT (nothing is lost); it only counts nowhere.
            log.warning("an undecodable session event is left out of the statistics", extra={"seq": seq})
            FOLDED.labels("undecodable").inc()
            return
        if not e.session_id or not _is_token(e.session_id):
            FOLDED.labels("ignored").inc()
            return
        trace, _ = await kv_get(self.traces, e.session_id, Trace)
        new, incs = fold(trace, e, seq)
        if new is None:
            FOLDED.labels("ignored").inc()
            return
        if incs and _is_token(new.line_id):
            key = day_key(new.line_id, new.opened.astimezone(UTC).date().isoformat())
            await kv_update(self.days, key, Day, lambda d: apply(d, new.line_id, new.opened, incs, seq))
        await kv_update(self.traces, e.session_id, Trace, lambda t: new if t is None or t.seq < seq else None)
        FOLDED.labels("folded").inc()

    async def behind(self) -> int:
        """Events stored in OL_EVT and not folded in yet (0 when the figures are up to date)."""
        try:
            info = await self.js.consumer_info(subjects.STREAM_EVT, subjects.DESK_STATS_CONSUMER)
        except NotFoundError:
            return 0
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        self._stop.set()


async def report(
    agg: Aggregator,
    line_ids: list[str],
    start: datetime,
    end: datetime,
    line_names: dict[str, str] | None = None,
    operator_names: dict[str, str] | None = None,
    tz: tzinfo = UTC,
) -> tuple[list[LineFigures], int]:
    """The figures of these lines for ``[start, end)``, and how many events are not folded in yet."""
    assert agg.days is not None
    days = await read_days(agg.days, line_ids, start, end)
    return summarise(days, start, end, line_ids, line_names, operator_names, tz), await agg.behind()


async def read_days(kv: KeyValue, line_ids: Iterable[str], start: datetime, end: datetime) -> list[Day]:
    """The stored days of these lines that ``[start, end)`` touches."""
    keys = [day_key(line_id, d) for line_id in line_ids if _is_token(line_id) for d in days_between(start, end)]
    found: list[Day] = []
    for chunk in range(0, len(keys), 64):
        got = await asyncio.gather(*(kv_get(kv, k, Day) for k in keys[chunk : chunk + 64]))
        found += [d for d, _ in got if d is not None]
    return found
