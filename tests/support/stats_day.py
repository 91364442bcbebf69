"""A scripted day of session events (2026-03-02, UTC) with its figures worked out by hand.

Published into OL_EVT as the router publishes them (subject ``ol.evt.<kind>``, the event id as
``Nats-Msg-Id``); the desk's statistics must come to exactly these answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS

from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, SessionEvent, encode

DAY = "2026-03-02"


def _at(hhmmss: str, day: str = DAY) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmmss}+00:00").astimezone(UTC)


# (session, kind, time, line, channel, operator, reason)
SCRIPT: list[tuple[str, str, str, str, str, str, str]] = [
    # the evening before: opened outside the range, answered inside it -> counts nowhere in the range
    ("s8", "session_opened", "2026-03-01T23:59:00", "support", "webchat", "", ""),
    ("s8", "session_answered", "00:00:30", "support", "webchat", "anna", ""),
    # s1: boris lets the offer run out, anna answers after 40 s, closes after 600 s, rated 5
    ("s1", "session_opened", "09:00:00", "support", "webchat", "", ""),
    ("s1", "session_assigned", "09:00:00", "support", "webchat", "boris", ""),
    ("s1", "offer_declined", "09:00:30", "support", "webchat", "boris", "no answer"),
    ("s1", "session_answered", "09:00:40", "support", "webchat", "anna", ""),
    ("s1", "session_closed", "09:10:00", "support", "webchat", "anna", "closed by its operator"),
    ("s1", "session_rated", "09:10:20", "support", "webchat", "anna", "5"),
    # s2: telegram, anna answers after 10 s, closes after 300 s, rated 4
    ("s2", "session_opened", "09:20:00", "support", "telegram", "", ""),
    ("s2", "session_answered", "09:20:10", "support", "telegram", "anna", ""),
    ("s2", "session_closed", "09:25:00", "support", "telegram", "anna", "closed by its operator"),
    ("s2", "session_rated", "09:26:00", "support", "telegram", "anna", "4"),
    # s3: anna skips it, boris answers after 20 s, closes 1800 s after it opened, rated 2
    ("s3", "session_opened", "10:05:00", "support", "webchat", "", ""),
    ("s3", "offer_declined", "10:05:05", "support", "webchat", "anna", "skipped"),
    ("s3", "session_answered", "10:05:20", "support", "webchat", "boris", ""),
    ("s3", "session_closed", "10:35:00", "support", "webchat", "boris", "closed by its operator"),
    ("s3", "session_rated", "10:36:00", "support", "webchat", "boris", "2"),
    # s4: VK, nobody answers, closed after no activity -> missed
    ("s4", "session_opened", "10:30:00", "support", "vk", "", ""),
    ("s4", "session_closed", "10:40:00", "support", "vk", "", "closed after no activity"),
    # s5: breaches its first-response target, boris answers after 90 s, closes after 690 s
    ("s5", "session_opened", "14:00:00", "support", "webchat", "", ""),
    ("s5", "sla_breached", "14:01:00", "support", "webchat", "boris", "first response"),
    ("s5", "session_answered", "14:01:30", "support", "webchat", "boris", ""),
    ("s5", "session_closed", "14:11:30", "support", "webchat", "boris", "closed by its operator"),
    # s6: spam, closed unanswered -> not missed
    ("s6", "session_opened", "14:30:00", "support", "webchat", "", ""),
    ("s6", "session_closed", "14:31:00", "support", "webchat", "", "marked as spam"),
    # s7: late, still waiting at the end of the day
    ("s7", "session_opened", "23:50:00", "support", "telegram", "", ""),
    # s9 on sales: boris answers after 5 s, closes 120 s after it opened
    ("s9", "session_opened", "11:00:00", "sales", "webchat", "", ""),
    ("s9", "session_answered", "11:00:05", "sales", "webchat", "boris", ""),
    ("s9", "session_closed", "11:02:00", "sales", "webchat", "boris", "closed by its operator"),
]

# Figures worked out by hand from SCRIPT for the range DAY..DAY.
EXPECTED_SUPPORT: dict[str, Any] = {
    "sessions": 7,  # s1-s7
    "answered": 4,  # s1 s2 s3 s5
    "missed": 1,  # s4 (s6 is spam)
    "open_unanswered": 1,  # s7
    "by_channel": {"telegram": 2, "vk": 1, "webchat": 4},
    "by_hour": {9: 2, 10: 2, 14: 2, 23: 1},
    # first responses 40 10 20 90 -> sorted 10 20 40 90: median 30, p90 (4th of 4) 90
    "first_response": (30.0, 90.0),
    # resolutions 600 300 1800 690 -> sorted 300 600 690 1800: median 645, p90 1800
    "resolution": (645.0, 1800.0),
    "ratings": {"2": 1, "4": 1, "5": 1},
    "rating_avg": 3.667,
    "offers_missed": 1,
    "offers_passed": 1,
    "sla_breached": 1,
    "sla_met_percent": 83.3,  # 5 of the 6 chats (s6 is spam) passed no target: s5 did
}
EXPECTED_OPERATORS: dict[str, dict[str, Any]] = {
    # anna: s1 (webchat, 40 s, 600 s, 5) and s2 (telegram, 10 s, 300 s, 4); skipped s3
    "anna": {
        "sessions": 2,
        "by_channel": {"telegram": 1, "webchat": 1},
        "first_response": (25.0, 40.0),
        "resolution": (450.0, 600.0),
        "rating_avg": 4.5,
        "offers_missed": 0,
        "offers_passed": 1,
        "sla_met_percent": 100.0,
    },
    # boris: s3 (20 s, 1800 s, 2) and s5 (90 s, 690 s, breached); let s1 run out
    "boris": {
        "sessions": 2,
        "by_channel": {"webchat": 2},
        "first_response": (55.0, 90.0),
        "resolution": (1245.0, 1800.0),
        "rating_avg": 2.0,
        "offers_missed": 1,
        "offers_passed": 0,
        "sla_met_percent": 50.0,
    },
}
EXPECTED_SALES: dict[str, Any] = {"sessions": 1, "answered": 1, "first_response": (5.0, 5.0), "resolution": (120.0, 120.0)}


def events() -> list[SessionEvent]:
    out = []
    for i, (sid, kind, at, line, channel, op, reason) in enumerate(SCRIPT):
        when = _at(at) if "T" not in at else datetime.fromisoformat(at + "+00:00")
        out.append(
            SessionEvent(
                id=f"day-{i}-{kind}-{sid}",
                kind=kind,
                at=when,
                session_id=f"day{sid}",
                line_id=line,
                client_id=f"c-{sid}",
                operator_id=op,
                channel=channel,
                account="demo",
                reason=reason,
            )
        )
    return out


async def publish_day(nc: NATS) -> None:
    js = nc.jetstream()
    for e in events():
        await js.publish(subjects.event(e.kind), encode(e), headers={MSG_ID_HEADER: e.id})
    # The same answer again under another id (as after the dedup window): the first answer still counts once.
    again = next(e for e in events() if e.kind == "session_answered" and e.session_id == "days1")
    await js.publish(subjects.event(again.kind), encode(again), headers={MSG_ID_HEADER: again.id + "-again"})


def check_figures(f: dict[str, Any], want: dict[str, Any]) -> None:
    """Every figure of ``want`` in the API's answer ``f`` (a line's or an operator's)."""
    for key, value in want.items():
        if key in ("first_response", "resolution"):
            got = (f[key]["median_seconds"], f[key]["p90_seconds"])
        elif key == "by_hour":
            got = {h: n for h, n in enumerate(f["by_hour"]) if n}
        else:
            got = f[key]
        assert got == value, f"{key}: {got!r} != {value!r}"
