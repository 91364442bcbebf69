"""The client's record around a new session (router.core.client): the opening message is remembered
in the write that links the session, and a redelivery of it only finishes a start cut short."""

from __future__ import annotations

from support.rules import NOW, chat

from openlines.envelopes import ClientProfile, Inbound
from openlines.state import ClientRecord
from router.core import client


def _msg(msg_id: str = "m1") -> Inbound:
    return Inbound(
        id=msg_id,
        channel="webchat",
        account="demo",
        chat_id="v1",
        user_id="v1",
        text="hello",
        received_at=NOW,
        profile=ClientProfile(name="Vera"),
    )


REC = ClientRecord(client_id="c1", channel="webchat", account="demo", chat_id="v1", rating_for="s0", rating_until=1e12)


def test_linking_a_new_session_remembers_its_opening_message_in_the_same_write() -> None:
    linked = client.linked(REC, _msg(), "support", "s1")
    assert linked.open_sessions == {"support": "s1"}
    assert linked.recent_msg_ids == ["m1"]
    assert linked.sessions_total == 1
    assert linked.profile.name == "Vera"
    assert linked.rating_for == ""  # moved on: the rating request is over
    assert client.linked(linked, _msg(), "support", "s1") is linked  # linked again after a crash: nothing changes


def test_a_remembered_opening_message_resumes_only_a_start_cut_short() -> None:
    rec = client.linked(REC, _msg(), "support", "s1")
    waiting = chat(id="s1", status="waiting")
    assert client.resumes(rec, "m1", "support", "s1", waiting, queued=False)  # waits in no queue: not started
    assert not client.resumes(rec, "m1", "support", "s1", waiting, queued=True)  # queued: its start was done
    assert not client.resumes(rec, "m1", "support", "s1", chat(id="s1", status="assigned", operator_id="anna"), queued=False)
    assert not client.resumes(rec, "m1", "support", "s1", None, queued=False)
    assert not client.resumes(rec, "m2", "support", "s1", waiting, queued=False)  # never seen: not a redelivery
    assert not client.resumes(rec, "m1", "support", "s9", chat(id="s9", status="waiting"), queued=False)  # opened no session


def test_a_message_that_opened_a_session_closed_since_is_a_duplicate() -> None:
    rec = client.linked(REC, _msg(), "support", "s1")
    closed = client.forgotten(rec, "support", "s1")
    assert closed is not None and not client.opened_by(closed, "support", "s1")
    assert not client.resumes(closed, "m1", "support", "s1", chat(id="s1", status="waiting"), queued=False)
