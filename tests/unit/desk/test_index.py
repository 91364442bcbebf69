"""The conversation index on its own: what it keeps within its bounds, and who sees what (no NATS needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec

from desk.index import ConversationIndex, Query, Viewer
from openlines.envelopes import ClientProfile, HistoryEntry
from openlines.state import ClientRecord, Session

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def session(sid: str, line: str, status: str = "waiting", closed_minutes: int = 0, operator: str = "") -> bytes:
    s = Session(
        id=sid,
        line_id=line,
        client_id=f"c-{sid}",
        channel="webchat",
        account="demo",
        chat_id=sid,
        chat_key=sid,
        client_name=f"Client {sid}",
        status=status,  # type: ignore[arg-type]
        operator_id=operator,
        opened_at=T0,
        closed_at=T0 + timedelta(minutes=closed_minutes) if status == "closed" else None,
    )
    return msgspec.json.encode(s)


def client(sid: str, **profile: str) -> bytes:
    return msgspec.json.encode(
        ClientRecord(client_id=f"c-{sid}", channel="webchat", account="demo", chat_id=sid, profile=ClientProfile(**profile))
    )


def message(sid: str, n: int, text: str) -> bytes:
    return msgspec.json.encode(HistoryEntry(id=f"{sid}-{n}", session_id=sid, direction="in", text=text, at=T0))


def index(**bounds: int) -> ConversationIndex:
    return ConversationIndex(cast(Any, None), max_messages=bounds.get("messages", 100), max_sessions=bounds.get("sessions", 100))


def ids(idx: ConversationIndex, viewer: Viewer, **query: Any) -> list[str]:
    return sorted(f.session["id"] for f in idx._find(viewer, Query(**query)))


EVERYONE = Viewer("anna", None)


def test_only_the_newest_messages_are_kept_and_searchable() -> None:
    idx = index(messages=3)
    idx._apply([("sessions", 1, session("s1", "support"), "s1")])
    idx._apply([("history", i, message("s1", i, f"word{i} parcel"), "") for i in range(1, 6)])
    assert idx.db.execute("SELECT count(*) FROM msg").fetchone()[0] == 3
    assert ids(idx, EVERYONE, text="word1") == [] and ids(idx, EVERYONE, text="word2") == []
    assert ids(idx, EVERYONE, text="word5") == ["s1"]


def test_the_messages_reported_held_are_the_messages_held_before_and_after_the_bound() -> None:
    idx = index(messages=4)
    assert idx._apply([("sessions", 1, session("s1", "support"), "s1")]) == (1, 0)
    for n, batch in ((2, 2), (4, 2), (4, 3), (4, 1)):  # filling up, at the bound, past it in a batch and one at a time
        start = idx.db.execute("SELECT coalesce(max(rowid), 0) FROM msg").fetchone()[0] + 1
        _, held = idx._apply([("history", i, message("s1", i, f"w{i}"), "") for i in range(start, start + batch)])
        assert held == n == idx.db.execute("SELECT count(*) FROM msg").fetchone()[0]


def test_beyond_the_bound_the_conversations_closed_longest_ago_leave_and_open_ones_stay() -> None:
    idx = index(sessions=3)
    idx._apply(
        [
            ("sessions", 1, session("old", "support", "closed", closed_minutes=1), "old"),
            ("sessions", 2, session("newer", "support", "closed", closed_minutes=5), "newer"),
            ("sessions", 3, session("open1", "support"), "open1"),
            ("sessions", 4, session("open2", "support", "answered", operator="boris"), "open2"),
        ]
    )
    assert ids(idx, EVERYONE, view="all") == ["newer", "open1", "open2"]


def test_an_operator_finds_only_conversations_of_their_lines_or_their_own() -> None:
    idx = index()
    idx._apply(
        [
            ("sessions", 1, session("mine", "support"), "mine"),
            ("sessions", 2, session("theirs", "vip"), "theirs"),
            ("sessions", 3, session("held", "vip", "answered", operator="boris"), "held"),
            ("clients", 4, client("mine", name="Maria", phone="+371 2000 0001"), "k1"),
            ("clients", 5, client("theirs", name="Maria Secret", email="m@example.com"), "k2"),
            ("history", 6, message("theirs", 1, "the merger"), ""),
        ]
    )
    boris = Viewer("boris", frozenset({"support"}))
    assert ids(idx, boris, text="maria") == ["mine"]
    assert ids(idx, boris, text="merger") == [] and ids(idx, EVERYONE, text="merger") == ["theirs"]
    assert ids(idx, boris, view="lines") == ["held", "mine"]  # a chat he holds on another line, too
    assert ids(idx, boris, view="queue") == ["mine"]
    assert ids(idx, boris, text="20000001") == ["mine"] and ids(idx, EVERYONE, text="example.com") == ["theirs"]
    # A deleted record leaves the index.
    idx._apply([("sessions", 7, b"", "\x00mine")])
    assert ids(idx, boris, text="maria") == []


def test_odd_searches_find_nothing_rather_than_fail() -> None:
    idx = index()
    idx._apply([("sessions", 1, session("s1", "support"), "s1"), ("history", 2, message("s1", 1, "hello"), "")])
    for text in ('"', "AND", "NOT OR", "(x", "*", "h", "he*llo", "NEAR(a b)", "^x"):
        idx._find(EVERYONE, Query(text=text))
