"""Builders for the unit tests of the line rules: lines, sessions and operators as plain records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from openlines.lines import AutoReplies, HoursConfig, LineConfig, QueueConfig, SessionConfig
from openlines.state import OperatorState, Session

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday
WEEKDAYS_9_18 = {d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}


def line(
    line_id: str = "support",
    *,
    queue: dict[str, Any] | None = None,
    hours: dict[str, Any] | None = None,
    replies: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
) -> LineConfig:
    return LineConfig(
        id=line_id,
        name=f"Line {line_id}",
        queue=QueueConfig(**{"operators": ["anna", "boris", "vera"], **(queue or {})}),
        hours=HoursConfig(**hours) if hours is not None else HoursConfig(),
        auto_replies=AutoReplies(**(replies or {})),
        session=SessionConfig(**(session or {})),
    )


def office_hours(**extra: Any) -> dict[str, Any]:
    """Open 09:00-18:00 UTC on weekdays."""
    return {"enabled": True, "timezone": "UTC", "weekly": WEEKDAYS_9_18, **extra}


def chat(**fields: Any) -> Session:
    base: dict[str, Any] = {
        "id": "s1",
        "line_id": "support",
        "entry_line_id": "support",
        "client_id": "c1",
        "channel": "webchat",
        "account": "demo",
        "chat_id": "v1",
        "chat_key": "v1",
        "opened_at": NOW,
    }
    return Session(**{**base, **fields})


def operator(op_id: str, **fields: Any) -> OperatorState:
    return OperatorState(**{"id": op_id, "status": "online", **fields})


def replace(obj: Any, **fields: Any) -> Any:
    return msgspec.structs.replace(obj, **fields)
