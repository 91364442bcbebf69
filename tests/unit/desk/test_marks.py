"""The mark shown under an operator's message: the strongest the channel reported, whatever the order."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from desk.reads import best_marks
from openlines.envelopes import MARK_STATUSES, DeliveryMark

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def mark(status: str, message: str = "out:1", reason: str = "") -> DeliveryMark:
    return DeliveryMark(id=f"{message}:0:{status}", session_id="s1", message_id=message, status=status, at=AT, reason=reason)  # type: ignore[arg-type]


def test_every_order_of_reports_shows_the_strongest_and_failed_above_all() -> None:
    for order in itertools.permutations(MARK_STATUSES):
        assert best_marks([mark(s) for s in order])["out:1"]["status"] == "failed"
    for order in itertools.permutations(("sent", "delayed", "delivered")):
        assert best_marks([mark(s) for s in order])["out:1"]["status"] == "delivered"


def test_a_delay_notice_shows_with_its_reason_until_the_mail_is_delivered() -> None:
    shown = best_marks([mark("sent"), mark("delayed", reason="452 4.2.2 Mailbox full")])["out:1"]
    assert (shown["status"], shown["reason"]) == ("delayed", "452 4.2.2 Mailbox full")
    assert best_marks([mark("delayed"), mark("read"), mark("sent", message="out:2")]) == {
        "out:1": {"status": "read", "reason": "", "at": AT.isoformat()},
        "out:2": {"status": "sent", "reason": "", "at": AT.isoformat()},
    }
