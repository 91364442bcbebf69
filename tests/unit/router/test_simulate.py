"""The pure simulation of the line rules: every branch of what a new message meets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support import line_block, operators_block

from openlines.lines import LinesFile, parse
from router.core.simulate import OperatorSim, Outcome, simulate

OPS = operators_block("anna", "boris", "vera")

WEEKDAYS_9_18 = (
    'weekly = { mon = ["09:00-18:00"], tue = ["09:00-18:00"], wed = ["09:00-18:00"], '
    'thu = ["09:00-18:00"], fri = ["09:00-18:00"] }'
)
TUE_EVENING = datetime.fromisoformat("2026-11-24T21:30+02:00")  # Riga: closed
TUE_NOON = datetime.fromisoformat("2026-11-24T12:00+02:00")  # Riga: open
WED_9_RIGA = datetime.fromisoformat("2026-11-25T07:00+00:00")


def line(
    queue: str = "",
    *,
    line_id: str = "support",
    account: str = "demo",
    ops: str = '"anna", "boris", "vera"',
    hours: str = "",
    replies: str = "",
    session: str = "",
) -> str:
    riga_hours = f'enabled = true\ntimezone = "Europe/Riga"\n{WEEKDAYS_9_18}\n{hours}' if hours else ""
    return line_block(line_id, account=account, operators=ops, queue=queue, hours=riga_hours, replies=replies, session=session)


def cfg(*lines: str) -> LinesFile:
    return parse(OPS + "".join(lines))


def ops(*specs: str) -> list[OperatorSim]:
    out = []
    for spec in specs:
        f = spec.split(":")
        out.append(
            OperatorSim(
                id=f[0],
                status=f[1] if len(f) > 1 else "online",  # type: ignore[arg-type]
                open_chats=int(f[2]) if len(f) > 2 else 0,
                unanswered_chats=int(f[3]) if len(f) > 3 else 0,
                last_assigned_at=float(f[4]) if len(f) > 4 else 0.0,
            )
        )
    return out


ALL_ONLINE = ops("anna", "boris", "vera")


def run(c: LinesFile, *, at: datetime = TUE_NOON, operators: list[OperatorSim] | None = None, **kw: object) -> Outcome:
    return simulate(
        c,
        at=at,
        channel=str(kw.pop("channel", "webchat")),
        account=str(kw.pop("account", "demo")),
        operators=ALL_ONLINE if operators is None else operators,
        **kw,  # type: ignore[arg-type]
    )


def kinds(o: Outcome) -> list[str]:
    return [s.kind for s in o.steps]


def reason(o: Outcome, op: str) -> str:
    return next(s.reason for s in o.skipped if s.operator == op)


# ------------------------------------------------------------------ the line


def test_unbound_channel_is_a_dead_letter_and_nothing_else() -> None:
    o = run(cfg(line()), account="other")
    assert o.dead_letter and o.line == "" and not o.offered_to
    assert kinds(o) == ["dead_letter"]
    assert "webchat/other feeds no line: dead letter" in o.steps[0].text


def test_bound_channel_names_its_line_and_hours_off_means_always_open() -> None:
    o = run(cfg(line()))
    assert (o.entry_line, o.line, o.open) == ("support", "support", True)
    assert o.steps[0].text == "webchat/demo feeds line support (Line support)"
    assert "always open" in o.steps[1].text


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError):
        run(cfg(line()), at=datetime(2026, 11, 24, 12))


# ------------------------------------------------------------------- hours


def test_open_line_says_inside_business_hours_in_its_time_zone() -> None:
    o = run(cfg(line(hours='outside = "queue"')))
    assert o.open and o.outside == "" and not o.held
    assert o.steps[1].text == "Tue 2026-11-24 12:00 Europe/Riga: inside business hours"


def test_closed_with_queue_sends_outside_hours_text_and_still_offers() -> None:
    c = cfg(line(hours='outside = "queue"', replies='outside_hours = "Closed, {client_name}."\nwelcome = "Hi"'))
    o = run(c, at=TUE_EVENING, client_name="Ivan")
    assert not o.open and o.outside == "queue" and not o.held
    assert o.steps[1].text == "Tue 2026-11-24 21:30 Europe/Riga: outside business hours (opens Wed 09:00)"
    assert o.next_opening == WED_9_RIGA
    assert o.auto_replies == ["Closed, Ivan."]
    assert o.offered_to == ["anna"] and not o.waits


def test_closed_with_hold_until_open_holds_and_offers_at_the_opening() -> None:
    c = cfg(line(hours='outside = "hold_until_open"', replies='outside_hours = "Closed."'))
    o = run(c, at=TUE_EVENING, operators=ops("anna:away", "boris", "vera"))
    assert o.held and o.waits and o.position == 1 and o.outside == "hold_until_open"
    assert o.next_opening == WED_9_RIGA
    assert o.offered_to == ["boris"]  # when it opens
    texts = [s.text for s in o.steps]
    assert "offered to nobody until Wed 2026-11-25 09:00 Europe/Riga" in texts[2]
    dist = next(s.text for s in o.steps if s.kind == "distribution")
    assert dist.startswith("when it opens (Wed 2026-11-25 09:00 Europe/Riga)") and "anna skipped (away)" in dist


def test_closed_with_a_schedule_that_never_opens_holds_forever() -> None:
    c = cfg(line(hours='outside = "hold_until_open"\ndays_off = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'))
    o = run(c, at=TUE_NOON)
    assert o.held and o.next_opening is None and o.offered_to == []
    assert "never opens" in o.steps[1].text and "distribution" not in kinds(o)


def test_closed_with_redirect_goes_to_the_target_with_the_entry_lines_outside_text() -> None:
    c = cfg(
        line(hours='outside = "redirect"\nredirect_line = "night"', replies='outside_hours = "Night shift takes over."'),
        line(line_id="night", account="night", ops='"vera"', replies='welcome = "Night welcome"'),
    )
    o = run(c, at=TUE_EVENING)
    assert o.redirected and (o.entry_line, o.line, o.outside) == ("support", "night", "redirect")
    assert o.auto_replies == ["Night shift takes over."]
    assert o.offered_to == ["vera"]
    assert "outside = redirect: the chat goes to line night (Line night)" in [s.text for s in o.steps]


def test_redirect_target_without_outside_text_anywhere_sends_its_welcome() -> None:
    c = cfg(
        line(hours='outside = "redirect"\nredirect_line = "night"'),
        line(line_id="night", account="night", ops='"vera"', replies='welcome = "Night welcome"'),
    )
    assert run(c, at=TUE_EVENING).auto_replies == ["Night welcome"]


def test_redirect_is_one_hop_a_closed_target_that_redirects_again_queues_its_chat() -> None:
    c = cfg(
        line(hours='outside = "redirect"\nredirect_line = "night"'),
        line(
            line_id="night",
            account="night",
            ops='"vera"',
            hours='outside = "redirect"\nredirect_line = "support"',
            replies='outside_hours = "Night is closed too."',
        ),
    )
    o = run(c, at=TUE_EVENING)
    assert o.line == "night" and o.offered_to == ["vera"] and not o.held
    assert o.auto_replies == ["Night is closed too."]
    assert any("one hop only" in s.text for s in o.steps)


def test_redirect_target_that_holds_holds_the_chat() -> None:
    c = cfg(
        line(hours='outside = "redirect"\nredirect_line = "night"'),
        line(line_id="night", account="night", ops='"vera"', hours='outside = "hold_until_open"'),
    )
    o = run(c, at=TUE_EVENING)
    assert o.line == "night" and o.held and o.waits and o.offered_to == ["vera"]


# -------------------------------------------------------------- auto-replies


def test_welcome_goes_to_a_first_contact_only_by_default() -> None:
    c = cfg(line(replies='welcome = "Hello {client_name}, this is {line_name}."'))
    assert run(c, client_name="Ivan").auto_replies == ["Hello Ivan, this is Line support."]
    assert run(c).auto_replies == ["Hello there, this is Line support."]
    returning = run(c, first_contact=False)
    assert returning.auto_replies == []
    assert "welcome_each_session" in next(s.text for s in returning.steps if s.kind == "auto_reply")


def test_welcome_each_session_greets_a_returning_client_too() -> None:
    c = cfg(line(replies='welcome = "Hello"\nwelcome_each_session = true'))
    assert run(c, first_contact=False).auto_replies == ["Hello"]


def test_closed_line_without_outside_text_falls_back_to_the_welcome() -> None:
    c = cfg(line(hours='outside = "queue"', replies='welcome = "Hello"'))
    assert run(c, at=TUE_EVENING).auto_replies == ["Hello"]


# ------------------------------------------------------------- distribution


def test_round_robin_offers_to_the_operator_assigned_longest_ago_and_says_why_others_were_skipped() -> None:
    o = run(cfg(line()), operators=ops("anna:online:0:0:300", "boris:away", "vera:online:0:0:100"))
    assert o.offered_to == ["vera"]
    assert reason(o, "boris") == "away"
    assert reason(o, "anna") == "free, but vera was assigned a chat longer ago"
    dist = next(s.text for s in o.steps if s.kind == "distribution")
    assert dist.startswith("round_robin: ") and dist.endswith("vera gets the offer (assigned longest ago)")


def test_strict_offers_to_the_first_free_operator_in_queue_order() -> None:
    o = run(cfg(line('mode = "strict"', ops='"boris", "anna", "vera"')), operators=ops("anna", "boris:offline", "vera"))
    assert o.offered_to == ["anna"]
    assert reason(o, "boris") == "offline" and "comes first in the queue order" in reason(o, "vera")


def test_all_offers_to_every_free_operator_at_once() -> None:
    o = run(cfg(line('mode = "all"')), operators=ops("anna", "boris:away", "vera"))
    assert o.offered_to == ["anna", "vera"] and reason(o, "boris") == "away"
    assert "offered to anna, vera at once" in next(s.text for s in o.steps if s.kind == "distribution")
    assert "a new round: offered to anna, vera again" in next(s.text for s in o.steps if s.kind == "no_answer")


def test_crm_responsible_gets_the_chat_when_free() -> None:
    o = run(cfg(line('mode = "crm_responsible"')), responsible="vera")
    assert o.offered_to == ["vera"]
    assert reason(o, "anna") == "free, but vera is the client's responsible manager"


def test_crm_responsible_who_cannot_take_it_falls_back_and_says_why() -> None:
    c = cfg(line('mode = "crm_responsible"\nfallback_mode = "strict"'))
    o = run(c, responsible="vera", operators=ops("anna", "boris", "vera:away"))
    assert o.offered_to == ["anna"]
    dist = next(s.text for s in o.steps if s.kind == "distribution")
    assert "the responsible manager vera cannot take it (away), fallback_mode = strict" in dist


def test_crm_responsible_unknown_uses_the_fallback_mode() -> None:
    o = run(cfg(line('mode = "crm_responsible"\nfallback_mode = "all"')))
    assert o.offered_to == ["anna", "boris", "vera"]
    assert "no responsible manager known, fallback_mode = all" in next(s.text for s in o.steps if s.kind == "distribution")


def test_responsible_is_ignored_outside_crm_responsible_mode() -> None:
    assert run(cfg(line('mode = "strict"')), responsible="vera").offered_to == ["anna"]


def test_full_operators_are_skipped_per_count_open() -> None:
    o = run(cfg(line("max_chats_per_operator = 2")), operators=ops("anna:online:2:0", "boris:online:2:2", "vera:online:1:1"))
    assert o.offered_to == ["vera"]
    assert reason(o, "anna").startswith("full: 2 open chat(s), max_chats_per_operator = 2, count = open")


def test_count_unanswered_lets_an_operator_with_answered_chats_take_more() -> None:
    c = cfg(line('max_chats_per_operator = 2\ncount = "unanswered"\nmode = "strict"'))
    o = run(c, operators=ops("anna:online:2:0", "boris:online:2:2", "vera"))
    assert o.offered_to == ["anna"]
    o = run(c, operators=ops("anna:online:5:2", "boris:online:2:2", "vera"))
    assert o.offered_to == ["vera"] and "2 unanswered chat(s)" in reason(o, "boris")


def test_skip_offline_off_offers_to_an_away_operator() -> None:
    assert run(cfg(line('mode = "strict"\nskip_offline = false')), operators=ops("anna:away")).offered_to == ["anna"]


def test_operators_without_state_or_outside_the_queue_are_named() -> None:
    o = run(cfg(line(ops='"anna", "boris"')), operators=ops("boris", "vera"))
    assert o.offered_to == ["boris"]
    assert "never signed in" in reason(o, "anna")
    assert reason(o, "vera") == "not in this line's queue"


def test_no_answer_passes_on_to_the_next_free_operator() -> None:
    o = run(cfg(line(queue="wait_seconds = 30")), operators=ops("anna", "boris", "vera:away"))
    assert o.offered_to == ["anna"] and o.wait_seconds == 30 and o.next_on_no_answer == ["boris"]
    assert next(s.text for s in o.steps if s.kind == "no_answer") == "no answer in 30 s → passed on to boris"


def test_no_answer_with_nobody_else_free_starts_a_new_round_with_the_same_operator() -> None:
    o = run(cfg(line()), operators=ops("anna", "boris:away"))
    assert o.next_on_no_answer == ["anna"]


# ------------------------------------------------------------------ the queue


def test_nobody_free_the_chat_waits_behind_the_waiting_ones_and_is_told_its_place() -> None:
    c = cfg(line("tell_position = true", replies='queue_position = "You are number {position}."'))
    o = run(c, operators=ops("anna:away", "boris:offline", "vera:online:4"), waiting=3)
    assert o.waits and o.position == 4 and o.offered_to == []
    assert o.auto_replies == ["You are number 4."]
    assert "nobody can take the chat now" in next(s.text for s in o.steps if s.kind == "distribution")
    assert "3 older chats wait in the queue" in next(s.text for s in o.steps if s.kind == "ahead")


def test_waiting_chats_take_the_free_places_first() -> None:
    c = cfg(line("max_chats_per_operator = 1\ntell_position = true", replies='queue_position = "No. {position}"'))
    o = run(c, operators=ops("anna", "boris", "vera:away"), waiting=3)
    # anna and boris take the two oldest; the third stays ahead of this one.
    assert o.waits and o.position == 2 and o.auto_replies == ["No. 2"]
    assert "#1 -> anna; #2 -> boris (1 left waiting)" in next(s.text for s in o.steps if s.kind == "ahead")
    o = run(c, operators=ops("anna", "boris", "vera"), waiting=2)
    assert o.offered_to == ["vera"] and not o.waits


def test_tell_position_without_a_text_sends_nothing() -> None:
    o = run(cfg(line("tell_position = true")), operators=[])
    assert o.auto_replies == [] and "nothing is sent" in next(s.text for s in o.steps if s.kind == "queue")


# --------------------------------------------------------------- auto-close


def test_auto_close_is_reported_with_the_closing_text() -> None:
    c = cfg(line(session="auto_close_minutes = 90", replies='closing = "Bye {client_name}"'))
    o = run(c, client_name="Ivan")
    assert o.auto_close_minutes == 90
    assert o.steps[-1].text == 'auto-close after 90 min without a message (closing auto-reply: "Bye Ivan")'
    assert run(cfg(line())).steps[-1].text == "no auto-close (session.auto_close_minutes = 0)"


def test_at_in_utc_is_shown_in_the_line_time_zone() -> None:
    o = run(cfg(line(hours='outside = "queue"')), at=datetime(2026, 11, 24, 19, 30, tzinfo=UTC))
    assert o.steps[1].text.startswith("Tue 2026-11-24 21:30 Europe/Riga: outside business hours")
