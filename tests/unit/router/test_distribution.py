"""Property tests of the pure distribution and queue decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openlines.lines import QueueConfig
from openlines.state import QueuedChat
from router.core.autoreply import render
from router.core.distribution import OperatorView, pick
from router.core.queue import WaitingLine

IDS = [f"op{i}" for i in range(8)]

operator_views = st.lists(
    st.builds(
        OperatorView,
        id=st.sampled_from(IDS),
        status=st.sampled_from(["online", "away", "offline"]),
        open_chats=st.integers(0, 6),
        last_assigned_at=st.floats(0, 1e6, allow_nan=False),
    ),
    unique_by=lambda v: v.id,
)
queues = st.builds(
    QueueConfig,
    operators=st.lists(st.sampled_from(IDS), unique=True),
    max_chats_per_operator=st.integers(1, 5),
    skip_offline=st.just(True),
)


@given(queues, operator_views, st.frozensets(st.sampled_from(IDS)))
def test_never_an_absent_full_excluded_or_foreign_operator(
    queue: QueueConfig, ops: list[OperatorView], exclude: frozenset[str]
) -> None:
    chosen = pick(queue, ops, exclude)
    if chosen is None:
        return
    view = next(v for v in ops if v.id == chosen)
    assert chosen in queue.operators
    assert chosen not in exclude
    assert view.status == "online"
    assert view.open_chats < queue.max_chats_per_operator


@given(queues, operator_views)
def test_someone_is_chosen_whenever_someone_can_take_it(queue: QueueConfig, ops: list[OperatorView]) -> None:
    can = [v for v in ops if v.id in queue.operators and v.status == "online" and v.open_chats < queue.max_chats_per_operator]
    chosen = pick(queue, ops)
    assert (chosen is None) == (not can)
    if can:
        oldest = min(v.last_assigned_at for v in can)
        assert next(v for v in ops if v.id == chosen).last_assigned_at == oldest


def test_round_robin_alternates_when_assignments_are_recorded() -> None:
    queue = QueueConfig(operators=["anna", "boris", "vera"])
    state = {op: 0.0 for op in queue.operators}
    got = []
    for t in range(1, 7):
        views = [OperatorView(id=k, status="online", open_chats=0, last_assigned_at=v) for k, v in state.items()]
        chosen = pick(queue, views)
        assert chosen is not None
        state[chosen] = float(t)
        got.append(chosen)
    assert got == ["anna", "boris", "vera", "anna", "boris", "vera"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove"]), st.text("abcdef", min_size=1, max_size=4), st.floats(0, 1e6, allow_nan=False)
        ),
        max_size=40,
    )
)
def test_waiting_queue_is_fifo_by_since_and_holds_each_chat_once(ops: list[tuple[str, str, float]]) -> None:
    q = WaitingLine()
    model: dict[str, float] = {}  # what the ol-waiting bucket would hold: the last write per chat wins
    for op, sid, since in ops:
        if op == "add":
            changed = q.add(QueuedChat(session_id=sid, since=since))
            assert changed == (model.get(sid) != since)
            model[sid] = since
        else:
            assert q.remove(sid) == (sid in model)
            model.pop(sid, None)
    expected = sorted(model, key=lambda s: (model[s], s))
    assert [c.session_id for c in q] == expected
    assert len(q) == len(expected)
    assert [c.session_id for c in q.first(3)] == expected[:3]  # the front, told their places live
    head = q.head()
    assert (head.session_id if head else None) == (expected[0] if expected else None)
    for i, sid in enumerate(expected, 1):
        assert sid in q and q.position(sid) == i
    assert q.position("zzzzz") == 0 and "zzzzz" not in q


def test_auto_reply_templates() -> None:
    assert render("Hi {client_name}, this is {line_name}", client_name="Ilze", line_name="Support") == "Hi Ilze, this is Support"
    assert render("Hi {client_name}", client_name="", line_name="S") == "Hi there"
    assert render("Keep {unknown} and {", client_name="x", line_name="y") == "Keep {unknown} and {"


@given(st.integers(1, 8), st.integers(1, 200))
def test_round_robin_is_fair_within_one_over_many_chats(n_ops: int, chats: int) -> None:
    queue = QueueConfig(operators=IDS[:n_ops])
    last = dict.fromkeys(queue.operators, 0.0)
    got = dict.fromkeys(queue.operators, 0)
    for t in range(1, chats + 1):
        views = [OperatorView(id=k, status="online", open_chats=0, last_assigned_at=v) for k, v in last.items()]
        chosen = pick(queue, views)
        assert chosen is not None
        last[chosen] = float(t)
        got[chosen] += 1
    assert max(got.values()) - min(got.values()) <= 1


@given(st.permutations(IDS), st.permutations(IDS), st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=8, max_size=8))
def test_round_robin_gives_a_tie_to_the_first_in_queue_order_whatever_order_the_states_come_in(
    queue_order: list[str], given_order: list[str], assigned: list[float]
) -> None:
    """Equal "assigned at" (a new line, or times restored from a copy): the operator first in the line's queue
    wins, not the first whose state was read (the router keeps the states per operator, in no set order)."""
    queue = QueueConfig(operators=queue_order, mode="round_robin", max_chats_per_operator=5)
    at = dict(zip(IDS, assigned, strict=True))
    views = [OperatorView(id=k, status="online", open_chats=0, last_assigned_at=at[k]) for k in given_order]
    oldest = min(assigned)
    assert pick(queue, views) == next(k for k in queue_order if at[k] == oldest)
