"""Per-line statistics for a date range, computed from the session events (``OL_EVT``).

Definitions (docs/admin.md, "Statistics"):

- a session counts for the range when its ``session_opened`` event falls in
  ``[start, end)``, and for the line it was opened on;
- first-response time: from ``session_opened`` to the first
  ``session_answered`` (the operator accepted the chat or replied);
- missed: closed without any ``session_answered`` (closed or auto-closed
  while waiting in the queue or while offered), spam closes excepted;
- rating: the client's last ``session_rated`` mark (1-5) of the session.

:func:`compute` is pure; :func:`read_events` is the I/O that feeds it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from openlines import subjects
from openlines.bus import close_reader
from openlines.envelopes import SessionEvent

KINDS = ("session_opened", "session_answered", "session_closed", "session_rated")
SPAM_REASON = "marked as spam"
MAX_EVENTS = 500_000  # one request reads at most this many events; the answer says when it stopped early

_decoder = msgspec.json.Decoder(SessionEvent)


class LineStats(msgspec.Struct, kw_only=True):
    line_id: str
    sessions: int = 0  # opened in the range
    answered: int = 0  # of them, answered by an operator at least once
    missed: int = 0  # closed without an operator's answer (spam excepted)
    open_unanswered: int = 0  # still open, nobody answered yet
    first_response_avg_seconds: float | None = None
    first_response_p50_seconds: float | None = None
    rated: int = 0
    rating_avg: float | None = None


@dataclass(slots=True)
class _Trace:
    line_id: str
    opened: datetime
    answered: datetime | None = None
    closed: bool = False
    spam: bool = False
    rating: int = 0


@dataclass(slots=True)
class Report:
    lines: dict[str, LineStats] = field(default_factory=dict)
    events: int = 0
    complete: bool = True  # False when MAX_EVENTS stopped the read


def compute(events: Iterable[SessionEvent], start: datetime, end: datetime, line_ids: Iterable[str] = ()) -> dict[str, LineStats]:
    """Stats per line for sessions opened in ``[start, end)``; every id in ``line_ids`` appears, even with no sessions."""
    traces: dict[str, _Trace] = {}
    for e in events:
        if e.kind == "session_opened":
            if e.session_id not in traces and start <= e.at < end:
                traces[e.session_id] = _Trace(line_id=e.line_id, opened=e.at)
            continue
        t = traces.get(e.session_id)
        if t is None:
            continue
        if e.kind == "session_answered":
            if t.answered is None or e.at < t.answered:
                t.answered = e.at
        elif e.kind == "session_closed":
            t.closed = True
            t.spam = e.reason == SPAM_REASON
        elif e.kind == "session_rated" and e.reason.isdigit() and 1 <= int(e.reason) <= 5:
            t.rating = int(e.reason)
    out = {line_id: LineStats(line_id=line_id) for line_id in line_ids}
    waits: dict[str, list[float]] = {}
    ratings: dict[str, list[int]] = {}
    for t in traces.values():
        s = out.setdefault(t.line_id, LineStats(line_id=t.line_id))
        s.sessions += 1
        if t.answered is not None:
            s.answered += 1
            waits.setdefault(t.line_id, []).append(max(0.0, (t.answered - t.opened).total_seconds()))
        elif t.closed and not t.spam:
            s.missed += 1
        elif not t.closed:
            s.open_unanswered += 1
        if t.rating:
            ratings.setdefault(t.line_id, []).append(t.rating)
    for line_id, values in waits.items():
        out[line_id].first_response_avg_seconds = round(statistics.fmean(values), 3)
        out[line_id].first_response_p50_seconds = round(statistics.median(values), 3)
    for line_id, marks in ratings.items():
        out[line_id].rated = len(marks)
        out[line_id].rating_avg = round(statistics.fmean(marks), 3)
    return dict(sorted(out.items()))


async def read_events(js: JetStreamContext, start: datetime, *, limit: int = MAX_EVENTS) -> tuple[list[SessionEvent], bool]:
    """The session events stored at or after ``start`` up to the stream's end now; (events, complete)."""
    try:
        info = await js.stream_info(subjects.STREAM_EVT)
    except NotFoundError:
        return [], True
    last = info.state.last_seq or 0
    if not info.state.messages or last == 0:
        return [], True
    cfg = js_api.ConsumerConfig(
        filter_subjects=[subjects.event(kind) for kind in KINDS],
        deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    psub = await js.pull_subscribe("", stream=subjects.STREAM_EVT, config=cfg)
    out: list[SessionEvent] = []
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        while pending > 0 and len(out) < limit:
            msgs = await psub.fetch(batch=min(512, limit - len(out)), timeout=5.0)
            for m in msgs:
                try:
                    out.append(_decoder.decode(m.data))
                except msgspec.DecodeError:
                    pass  # one bad event must not hide the rest
                pending = m.metadata.num_pending or 0
                if m.metadata.sequence.stream >= last:
                    pending = 0
                    break
    finally:
        await close_reader(js, psub)
    return out, pending == 0


async def line_stats(js: JetStreamContext, start: datetime, end: datetime, line_ids: Iterable[str] = ()) -> Report:
    events, complete = await read_events(js, start)
    return Report(lines=compute(events, start, end, line_ids), events=len(events), complete=complete)
