"""queue.mode, fallback_mode and the passing on of an offer, decided in router.core.offer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openlines.lines import QueueConfig
from router.core import offer
from router.core.capacity import OperatorView
from router.core.distribution import Choice


def view(op_id: str, *, status: str = "online", load: int = 0, last: float = 0.0) -> OperatorView:
    return OperatorView(id=op_id, status=status, open_chats=load, last_assigned_at=last)


ANNA, BORIS, VERA = view("anna", last=30.0), view("boris", last=10.0), view("vera", last=20.0)
QUEUE = ["anna", "boris", "vera"]


def test_round_robin_gives_the_chat_to_the_free_operator_assigned_longest_ago() -> None:
    assert offer.decide(QueueConfig(operators=QUEUE), [ANNA, BORIS, VERA]) == Choice(operators=["boris"])


def test_strict_gives_the_chat_to_the_first_free_operator_in_queue_order() -> None:
    q = QueueConfig(operators=QUEUE, mode="strict", max_chats_per_operator=2)
    assert offer.decide(q, [view("anna", load=2), BORIS, VERA]).operators == ["boris"]


def test_mode_all_offers_to_every_free_operator_at_once() -> None:
    q = QueueConfig(operators=QUEUE, mode="all")
    choice = offer.decide(q, [ANNA, view("boris", status="away"), VERA])
    assert choice == Choice(operators=["anna", "vera"], to_all=True)


def test_mode_all_with_one_free_operator_is_still_an_offer_to_all() -> None:
    assert offer.decide(QueueConfig(operators=QUEUE, mode="all"), [ANNA]).to_all


def test_crm_responsible_gets_the_chat_when_free() -> None:
    q = QueueConfig(operators=QUEUE, mode="crm_responsible", fallback_mode="strict")
    assert offer.decide(q, [ANNA, BORIS, VERA], preferred="vera") == Choice(operators=["vera"])


def test_crm_responsible_who_cannot_take_it_falls_back_to_the_fallback_mode() -> None:
    q = QueueConfig(operators=QUEUE, mode="crm_responsible", fallback_mode="strict")
    assert offer.decide(q, [ANNA, BORIS, view("vera", status="away")], preferred="vera").operators == ["anna"]
    assert offer.decide(q, [ANNA, BORIS, VERA], preferred="stranger").operators == ["anna"]
    assert offer.decide(q, [ANNA, BORIS, VERA]).operators == ["anna"]


def test_the_fallback_mode_all_says_it_offers_to_all_whatever_the_count() -> None:
    q = QueueConfig(operators=QUEUE, mode="crm_responsible", fallback_mode="all")
    assert offer.decide(q, [ANNA]) == Choice(operators=["anna"], to_all=True)
    assert offer.decide(q, [ANNA], preferred="anna") == Choice(operators=["anna"])


def test_operators_who_let_the_chat_pass_are_skipped_while_others_are_free() -> None:
    q = QueueConfig(operators=QUEUE, mode="strict")
    assert offer.decide(q, [ANNA, BORIS, VERA], declined_by=["anna"]).operators == ["boris"]


def test_when_everyone_free_let_it_pass_a_new_round_starts() -> None:
    q = QueueConfig(operators=QUEUE, mode="strict")
    assert offer.decide(q, [ANNA, view("boris", status="offline")], declined_by=["anna"]).operators == ["anna"]


def test_nobody_gets_it_when_nobody_is_free() -> None:
    q = QueueConfig(operators=QUEUE, max_chats_per_operator=1)
    assert offer.decide(q, [view("anna", load=1), view("boris", status="away")], declined_by=["anna"]) == Choice()


def test_an_operator_outside_the_queue_never_gets_it() -> None:
    assert offer.decide(QueueConfig(operators=["anna"]), [view("mallory"), view("anna", load=9)]) == Choice()


def test_no_answer_passes_the_chat_to_the_next_operator() -> None:
    q = QueueConfig(operators=QUEUE)
    first = offer.decide(q, [ANNA, BORIS, VERA])
    following = offer.next_on_no_answer(q, [ANNA, BORIS, VERA], first, preferred=None, now=100.0)
    assert (first.operators, following.operators) == (["boris"], ["vera"])


def test_no_answer_from_the_only_free_operator_offers_it_to_them_again() -> None:
    q = QueueConfig(operators=QUEUE)
    first = offer.decide(q, [ANNA])
    assert offer.next_on_no_answer(q, [ANNA], first, preferred=None, now=100.0).operators == ["anna"]


def test_an_offer_to_one_claims_their_capacity_an_offer_to_all_does_not() -> None:
    ops = [ANNA, BORIS]
    after_one = offer.after_offer(ops, Choice(operators=["boris"]), 99.0)
    assert [(v.open_chats, v.last_assigned_at) for v in after_one] == [(0, 30.0), (1, 99.0)]
    assert offer.after_offer(ops, Choice(operators=["anna", "boris"], to_all=True), 99.0) == ops


views = st.lists(
    st.builds(
        OperatorView,
        id=st.sampled_from([*QUEUE, "mallory"]),
        status=st.sampled_from(["online", "away", "offline"]),
        open_chats=st.integers(0, 4),
        last_assigned_at=st.floats(0, 1e6, allow_nan=False),
    ),
    unique_by=lambda v: v.id,
)


@given(views, st.sampled_from(["round_robin", "strict", "all", "crm_responsible"]), st.lists(st.sampled_from(QUEUE)))
def test_an_offer_never_goes_to_an_absent_full_or_foreign_operator(
    ops: list[OperatorView], mode: str, declined: list[str]
) -> None:
    q = QueueConfig(operators=QUEUE, mode=mode, max_chats_per_operator=3)  # type: ignore[arg-type]
    choice = offer.decide(q, ops, declined_by=declined, preferred="vera")
    by_id = {v.id: v for v in ops}
    for op_id in choice.operators:
        assert op_id in QUEUE
        assert by_id[op_id].status == "online"
        assert by_id[op_id].open_chats < 3
    if mode == "all" and choice.operators:
        assert choice.to_all
    if mode in ("round_robin", "strict"):
        assert not choice.to_all and len(choice.operators) <= 1


def test_only_the_crm_responsible_mode_asks_the_crm_who_the_manager_is() -> None:
    from router.core.distribution import asks_responsible

    queues = [
        QueueConfig(mode="round_robin"),
        QueueConfig(mode="strict"),
        QueueConfig(mode="all"),
        QueueConfig(mode="crm_responsible"),
    ]
    asking = {q.mode for q in queues if asks_responsible(q)}
    assert asking == {"crm_responsible"}
