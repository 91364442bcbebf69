"""What the router would do with a client's first message: a dry run of the line rules.

Pure: (lines file, instant, channel, operators) -> :class:`Outcome`, a
step-by-step explanation. Every decision is taken by the same core functions
the router's shell calls: ``opening`` (which line, which auto-reply, held or
not), ``capacity`` (what counts toward an operator's load), ``offer`` (who
now, who next; the strategy says whether to all at once), the waiting
``queue``. Only the drain loop is walked here on the given states instead of
KV; the consistency test in tests/integration/router/test_simulate_cli.py runs the
real router against it.

Assumptions: the message opens a new session (the client has no open one on
the line), the client is not marked as spam, the channel does not flag the
message as "no auto-reply", and operator states stay as given while the chat
is offered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from openlines import hours
from openlines.lines import LineConfig, LinesFile, binding_index
from openlines.state import QueuedChat
from router.core import autoreply, capacity, distribution, offer
from router.core import opening as opening_rule
from router.core.distribution import NOBODY, Choice, OperatorView
from router.core.queue import WaitingLine

OperatorStatus = Literal["online", "away", "offline"]
THIS_CHAT = "this"  # the simulated chat's id in the waiting queue


class OperatorSim(msgspec.Struct, frozen=True, kw_only=True):
    """One operator's state at the simulated instant."""

    id: str
    status: OperatorStatus = "online"
    open_chats: int = 0  # every open chat the operator holds
    unanswered_chats: int = 0  # of those, the ones not answered yet (count = "unanswered")
    last_assigned_at: float = 0.0  # epoch seconds of their latest assignment; 0 = never


class Step(msgspec.Struct, frozen=True, kw_only=True):
    # line | dead_letter | hours | redirect | outside | auto_reply | ahead | distribution | queue | no_answer | auto_close
    kind: str
    text: str


class Skip(msgspec.Struct, frozen=True, kw_only=True):
    operator: str
    reason: str


class Outcome(msgspec.Struct, kw_only=True):
    channel: str
    account: str
    at: datetime
    dead_letter: bool = False  # no line is bound to channel/account
    entry_line: str = ""  # the line the channel account feeds
    line: str = ""  # the line that takes the chat (the redirect target when redirected)
    open: bool = True  # the entry line is open at ``at``
    next_opening: datetime | None = None  # of the line that takes the chat, when it is closed
    outside: str = ""  # the outside-hours action applied: queue | hold_until_open | redirect; "" = open
    redirected: bool = False
    held: bool = False  # waits for the opening, not offered before
    auto_replies: list[str] = []  # texts sent to the client, in order
    offered_to: list[str] = []  # who gets the offer (now, or at the opening when held)
    skipped: list[Skip] = []  # every other operator and why
    waits: bool = False  # the chat waits in the queue
    position: int = 0  # its 1-based place in the queue when it waits
    wait_seconds: int = 0  # the no-answer timer of an offer
    next_on_no_answer: list[str] = []  # who the offer passes to when nobody answers in time
    auto_close_minutes: float = 0
    steps: list[Step] = []


def simulate(
    cfg: LinesFile,
    *,
    at: datetime,
    channel: str,
    account: str,
    operators: list[OperatorSim],
    first_contact: bool = True,
    client_name: str = "",
    responsible: str | None = None,
    waiting: int = 0,
) -> Outcome:
    """What happens to the first message of a new conversation arriving at ``at`` (aware) on channel/account.

    ``responsible`` is what crm-sync would answer (mode crm_responsible only);
    ``waiting`` is how many older chats already wait in the line's queue.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware")
    out = Outcome(channel=channel, account=account, at=at)
    steps = out.steps
    entry = binding_index(cfg.lines).get((channel, account))
    if entry is None:
        out.dead_letter = True
        steps.append(
            Step(
                kind="dead_letter",
                text=f"{channel}/{account} feeds no line: dead letter (a dead_letter event, the message goes nowhere)",
            )
        )
        return out
    out.entry_line = out.line = entry.id
    steps.append(Step(kind="line", text=f"{channel}/{account} feeds line {entry.id} ({entry.name})"))
    out.open = hours.is_open(entry.hours, at)
    steps.append(Step(kind="hours", text=_hours_text(entry, at, out.open)))

    # One hop to the redirect target when the entry line is closed.
    line = opening_rule.route(entry, {ln.id: ln for ln in cfg.lines}, at)
    h = entry.hours
    if h.enabled and h.outside == "redirect" and not out.open:
        out.outside = "redirect"
        if line.id != entry.id:
            target = line
            out.redirected = True
            out.line = target.id
            steps.append(Step(kind="redirect", text=f"outside = redirect: the chat goes to line {target.id} ({target.name})"))
            target_open = hours.is_open(target.hours, at)
            steps.append(Step(kind="hours", text=f"line {target.id}: " + _hours_text(target, at, target_open)))
        else:
            steps.append(Step(kind="redirect", text=f"outside = redirect, but line {h.redirect_line!r} does not exist: it stays"))

    # What the session gets on the line that takes it.
    started = opening_rule.open_session(line, entry, at, first_contact=first_contact, client_name=client_name)
    closed, held = started.closed, started.held
    opening = hours.next_opening(line.hours, at) if closed else None
    out.next_opening = opening
    if not out.open:
        out.outside = entry.hours.outside
    if closed:
        steps.append(Step(kind="outside", text=_outside_text(line, out.redirected, opening)))
    out.held = held

    text, why = started.reply.text, started.reply.why
    if text:
        out.auto_replies.append(text)
        steps.append(Step(kind="auto_reply", text=f'auto-reply ({why}): "{text}"'))
    else:
        steps.append(Step(kind="auto_reply", text=f"no auto-reply: {why}"))

    # Queued, then the drain offers the waiting chats oldest first (and the client may be told their place).
    tz = _zone(line)
    views = _views(line, operators)
    queue = _waiting_queue(waiting)
    preferred = responsible if distribution.asks_responsible(line.queue) else None
    when = opening if held else at
    if held and opening is None:
        result = _Drain(queue=queue, views=views, offers={}, turn_views=views)
    else:
        result = _drain(line, views, queue, preferred, (when or at).timestamp())
    mine = result.offers.get(THIS_CHAT, NOBODY)
    out.offered_to = list(mine.operators)
    explained, out.skipped = _explain(line, operators, result.turn_views, mine, responsible)
    ahead = [Step(kind="ahead", text=_ahead_text(waiting, result, held))] if waiting else []
    queued: list[Step] = []
    if held or not mine.operators:
        out.waits = True
        # Held: until the opening it waits behind every chat ahead of it.
        out.position = (_waiting_queue(waiting) if held else result.queue).position(THIS_CHAT)
        msg = f"the chat waits in the queue at position {out.position}"
        told = autoreply.position_reply(line, client_name, out.position)
        if told:
            out.auto_replies.append(told)
            msg += f'; the client is told: "{told}"'
        elif line.queue.tell_position:
            msg += " (tell_position is on but auto_replies.queue_position is empty: nothing is sent)"
        queued.append(Step(kind="queue", text=msg))
    if held:
        steps += queued + ahead
        if opening is not None:
            text = f"when it opens ({_local(opening, tz)}), with these operators: {explained}"
            steps.append(Step(kind="distribution", text=text))
    else:
        steps += [*ahead, Step(kind="distribution", text=explained), *queued]

    if mine.operators:
        out.wait_seconds = line.queue.wait_seconds
        then = (when or at).timestamp()
        following = offer.next_on_no_answer(line.queue, result.turn_views, mine, preferred=preferred, now=then)
        out.next_on_no_answer = following.operators
        steps.append(Step(kind="no_answer", text=_no_answer_text(line, mine, out.next_on_no_answer)))

    out.auto_close_minutes = line.session.auto_close_minutes
    steps.append(Step(kind="auto_close", text=_auto_close_text(line, client_name)))
    return out


# ----------------------------------------------------------------- the steps


def _hours_text(line: LineConfig, at: datetime, is_open: bool) -> str:
    h = line.hours
    if not h.enabled:
        return "business hours not enabled: the line is always open"
    tz = _zone(line)
    when = _local(at, tz, with_date=True)
    if is_open:
        return f"{when}: inside business hours"
    opening = hours.next_opening(h, at)
    if opening is None:
        return f"{when}: outside business hours (the schedule never opens)"
    return f"{when}: outside business hours (opens {_local(opening, tz, near=at)})"


def _outside_text(line: LineConfig, redirected: bool, opening: datetime | None) -> str:
    action = line.hours.outside
    if redirected:
        here = f"line {line.id} is closed too"
        if action == "redirect":
            return f"{here}; its own redirect is not followed (one hop only): the chat joins its queue and is offered as usual"
        if action == "queue":
            return f"{here}; outside = queue: the chat joins its queue and is offered as usual"
    if action == "hold_until_open":
        if opening is None:
            return "outside = hold_until_open: the chat is held, and the schedule never opens"
        return f"outside = hold_until_open: the chat is held, offered to nobody until {_local(opening, _zone(line))}"
    if action == "queue":
        return "outside = queue: the chat joins the queue and is offered as usual"
    return f"outside = {action}"


def _ahead_text(waiting: int, result: _Drain, held: bool) -> str:
    chats, they = ("chat waits", "it is") if waiting == 1 else ("chats wait", "they are")
    if held:
        head = f"{waiting} older {chats} in the queue, held like this one; at the opening {they} offered first"
    else:
        head = f"{waiting} older {chats} in the queue; {they} offered first"
    placed = [", ".join(result.offers[f"ahead{i}"].operators) for i in range(1, waiting + 1) if f"ahead{i}" in result.offers]
    if placed:
        head += ": " + "; ".join(f"#{i} -> {ops}" for i, ops in enumerate(placed, 1))
    left = waiting - len(placed)
    if left:
        head += f" ({left} left waiting)"
    return head


def _explain(
    line: LineConfig, operators: list[OperatorSim], views: list[OperatorView], choice: Choice, responsible: str | None
) -> tuple[str, list[Skip]]:
    """The mode's choice in words, and why every other operator was skipped."""
    chosen = choice.operators
    q = line.queue
    mode = q.mode
    free = {v.id for v in distribution.available(q, views, frozenset())}
    by_id = {v.id: v for v in views}
    skips: list[Skip] = []
    fallback = ""
    if mode == "crm_responsible":
        if responsible and responsible in chosen and len(chosen) == 1:
            pass
        elif not responsible:
            fallback = f"no responsible manager known, fallback_mode = {q.fallback_mode}"
        elif responsible not in q.operators:
            fallback = f"the responsible manager {responsible} is not in this line's queue, fallback_mode = {q.fallback_mode}"
        else:
            why = _unavailable(line, responsible, by_id)
            fallback = f"the responsible manager {responsible} cannot take it ({why}), fallback_mode = {q.fallback_mode}"
    effective = q.fallback_mode if fallback else mode
    for op_id in q.operators:
        if op_id in chosen:
            continue
        if op_id not in free:
            skips.append(Skip(operator=op_id, reason=_unavailable(line, op_id, by_id)))
        elif not chosen:
            skips.append(Skip(operator=op_id, reason="free, but the chat is not offered to anyone"))
        elif effective == "crm_responsible":
            skips.append(Skip(operator=op_id, reason=f"free, but {chosen[0]} is the client's responsible manager"))
        elif effective == "strict":
            skips.append(Skip(operator=op_id, reason=f"free, but {chosen[0]} comes first in the queue order"))
        else:
            skips.append(Skip(operator=op_id, reason=f"free, but {chosen[0]} was assigned a chat longer ago"))
    for op in operators:
        if op.id not in q.operators:
            skips.append(Skip(operator=op.id, reason="not in this line's queue"))
    parts = [f"{s.operator} skipped ({s.reason})" for s in skips]
    head = f"{mode}" + (f" ({fallback})" if fallback else "")
    if not chosen:
        tail = "the line's queue has no operators: nobody gets the offer" if not q.operators else "nobody can take the chat now"
    elif choice.to_all:
        tail = f"offered to {', '.join(chosen)} at once; the first to accept takes it"
    elif effective == "crm_responsible":
        tail = f"{chosen[0]} gets the offer (the client's responsible manager)"
    elif effective == "strict":
        tail = f"{chosen[0]} gets the offer (first free operator in queue order)"
    else:
        tail = f"{chosen[0]} gets the offer ({_rr_reason(chosen[0], by_id, free)})"
    return f"{head}: " + "; ".join([*parts, tail]), skips


def _rr_reason(op_id: str, by_id: dict[str, OperatorView], free: set[str]) -> str:
    mine = by_id[op_id].last_assigned_at
    if len(free) == 1:
        return "the only free operator"
    if any(by_id[o].last_assigned_at == mine for o in free if o != op_id):
        return "assigned longest ago; a tie goes to queue order" if mine else "none assigned yet; first in queue order"
    return "assigned longest ago"


def _unavailable(line: LineConfig, op_id: str, by_id: dict[str, OperatorView]) -> str:
    """Why ``distribution.available`` leaves an operator out (an explanation only; the choice is the core's)."""
    q = line.queue
    v = by_id.get(op_id)
    if v is None:
        return "no state: not among the given operators, like one who never signed in"
    if q.skip_offline and v.status != "online":
        return v.status
    if not capacity.has_room(v.open_chats, q):
        what = "unanswered" if q.count == "unanswered" else "open"
        return f"full: {v.open_chats} {what} chat(s), max_chats_per_operator = {q.max_chats_per_operator}, count = {q.count}"
    return "not available"


def _no_answer_text(line: LineConfig, offered: Choice, following: list[str]) -> str:
    chosen = offered.operators
    secs = line.queue.wait_seconds
    head = f"nobody accepts in {secs} s" if offered.to_all else f"no answer in {secs} s"
    if not following:
        return f"{head} → passed on; nobody else is free, the chat waits in the queue"
    if sorted(following) == sorted(chosen):
        again = ", ".join(following)
        return f"{head} → a new round: offered to {again} again (nobody else is free)"
    return f"{head} → passed on to {', '.join(following)}"


def _auto_close_text(line: LineConfig, client_name: str) -> str:
    minutes = line.session.auto_close_minutes
    if minutes <= 0:
        return "no auto-close (session.auto_close_minutes = 0)"
    text = f"auto-close after {minutes:g} min without a message"
    closing = autoreply.closing(line, client_name)
    if closing:
        text += f' (closing auto-reply: "{closing}")'
    return text


# ------------------------------------------------------------ the drain loop


class _Drain(msgspec.Struct, kw_only=True):
    queue: WaitingLine  # what is still waiting
    views: list[OperatorView]  # operator loads after the offers
    offers: dict[str, Choice]  # queued chat -> whom it was offered to
    turn_views: list[OperatorView]  # the operators as the simulated chat's turn found them


def _views(line: LineConfig, operators: list[OperatorSim]) -> list[OperatorView]:
    """The queue's operators with state, their load counted per ``queue.count``."""
    by_id = {op.id: op for op in operators}
    views: list[OperatorView] = []
    for op_id in line.queue.operators:
        op = by_id.get(op_id)
        if op is None:
            continue
        load = capacity.counted(op.open_chats, op.unanswered_chats, line.queue)
        views.append(OperatorView(id=op.id, status=op.status, open_chats=load, last_assigned_at=op.last_assigned_at))
    return views


def _waiting_queue(waiting: int) -> WaitingLine:
    ahead = [QueuedChat(session_id=f"ahead{i}", since=float(i)) for i in range(1, waiting + 1)]
    return WaitingLine([*ahead, QueuedChat(session_id=THIS_CHAT, since=float(waiting + 1))])


def _drain(line: LineConfig, views: list[OperatorView], queue: WaitingLine, preferred: str | None, now: float) -> _Drain:
    """The router's drain: offer the waiting chats oldest first while somebody can take one (takes them out of ``queue``)."""
    offers: dict[str, Choice] = {}
    turn_views = views
    while (first := queue.head()) is not None:
        head = first.session_id
        turn_views = views
        # Only the simulated chat's responsible manager is known; the others' fall back.
        choice = offer.decide(line.queue, views, preferred=preferred if head == THIS_CHAT else None)
        if not choice.operators:
            break
        views = offer.after_offer(views, choice, now)
        offers[head] = choice
        queue.remove(head)
    return _Drain(queue=queue, views=views, offers=offers, turn_views=turn_views)


# ------------------------------------------------------------------- time


def _zone(line: LineConfig) -> ZoneInfo:
    return ZoneInfo(line.hours.timezone if line.hours.enabled else "UTC")


def _local(instant: datetime | None, tz: ZoneInfo, *, with_date: bool = True, near: datetime | None = None) -> str:
    if instant is None:
        return "never"
    local = instant.astimezone(tz)
    if near is not None and instant.astimezone(UTC) - near.astimezone(UTC) < timedelta(days=6):
        return f"{local:%a %H:%M}"
    return f"{local:%a %Y-%m-%d %H:%M} {tz.key}" if with_date else f"{local:%a %H:%M}"
