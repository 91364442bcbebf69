"""Pure parts of the Telegram gateway: the plan of a send (text cut to Telegram's limit, then files)."""

from __future__ import annotations

from gateway_telegram.deliver import MAX_TEXT, plan
from openlines.envelopes import Outbound, utcnow
from openlines.split import utf16_len


def out(text: str) -> Outbound:
    return Outbound(
        id="out:s1:r1", session_id="s1", channel="telegram", account="sales", chat_id="42", created_at=utcnow(), text=text
    )


def test_text_is_cut_at_4096_utf16_units_as_telegram_counts_them() -> None:
    assert MAX_TEXT == 4096
    assert [len(p.text) for p in plan(out("x" * 5000))] == [4096, 904]
    emoji = [p.text for p in plan(out("😀" * 2049))]  # 4098 units
    assert [len(t) for t in emoji] == [2048, 1] and all(utf16_len(t) <= 4096 for t in emoji)


def test_blank_text_is_no_message() -> None:
    assert plan(out("  \n\t ")) == []
