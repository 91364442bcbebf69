"""The router's pure rules for what operators change on a client (decision 024): the edit's own check,
operator values that a channel's profile never overwrites, and the records of two merged clients."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlines.envelopes import ClientProfile, Inbound
from openlines.state import ClientRecord
from router.core import client


def rec(**profile: str) -> ClientRecord:
    return ClientRecord(client_id="c1", channel="webchat", account="demo", chat_id="v1", profile=ClientProfile(**profile))


def msg(msg_id: str = "m1", **profile: str) -> Inbound:
    return Inbound(
        id=msg_id,
        channel="webchat",
        account="demo",
        chat_id="v1",
        user_id="v1",
        profile=ClientProfile(**profile),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_an_edit_sets_only_what_it_names_and_a_clear_is_an_empty_value() -> None:
    assert client.checked_edit(" Marta   Ozola ", None, None) == {"name": "Marta Ozola"}
    assert client.checked_edit(None, "", "marta@example.com") == {"phone": "", "email": "marta@example.com"}


@pytest.mark.parametrize(
    ("name", "phone", "email", "reason"),
    [
        (None, None, None, "nothing to change"),
        (None, "26123456", None, "E.164"),
        (None, "+0123456789", None, "E.164"),
        (None, "+3712612345678901234", None, "E.164"),
        (None, None, "Marta@Example.com", "lower-case"),
        (None, None, "two@a.lv three@b.lv", "lower-case"),
        (None, None, "no-at-sign", "lower-case"),
        ("a\x07b", None, None, "at most 200"),
        ("x" * 201, None, None, "at most 200"),
    ],
)
def test_an_edit_the_router_will_not_store_says_why(name: str | None, phone: str | None, email: str | None, reason: str) -> None:
    with pytest.raises(client.BadEdit, match=reason):
        client.checked_edit(name, phone, email)


def test_what_an_operator_set_stays_when_the_channel_sends_its_own_profile() -> None:
    edited = client.edited(rec(name="visitor-42", email="old@example.com"), {"name": "Marta Ozola", "phone": "+37126123456"})
    assert edited is not None and edited.edited == ["name", "phone"]
    after = client.remembered(edited, msg(name="visitor-42", phone="+37100000000", email="new@example.com", language="lv"))
    assert (after.profile.name, after.profile.phone) == ("Marta Ozola", "+37126123456")
    assert (after.profile.email, after.profile.language) == ("new@example.com", "lv")  # not edited: the channel's newer value
    assert client.name_of(after, msg(name="visitor-42")) == "Marta Ozola"
    assert client.name_of(rec(name="Old"), msg(name="New")) == "New"


def test_an_edit_to_the_values_already_set_changes_nothing() -> None:
    once = client.edited(rec(), {"phone": "+37126123456"})
    assert once is not None
    assert client.edited(once, {"phone": "+37126123456"}) is None
    assert client.edited(None, {"phone": "+37126123456"}) is None


def test_merged_records_belong_to_the_surviving_client_and_know_each_other() -> None:
    survivor = rec(name="Marta Ozola", email="marta@example.com")
    other = ClientRecord(
        client_id="c2",
        channel="telegram",
        account="bot",
        chat_id="901",
        profile=ClientProfile(name="Marta", phone="+37126123456", username="marta_tg"),
        open_sessions={"support": "s9"},
    )
    person = client.person_of(survivor.profile, other.profile)
    assert person == {"name": "Marta Ozola", "phone": "+37126123456", "email": "marta@example.com"}
    keys = {"webchat.demo.v1", "telegram.bot.901"}
    done = client.merged(
        other, own_key="telegram.bot.901", client_id="c1", keys=keys, merged_ids={"c2"}, person=person, edited_fields={"name"}
    )
    assert done is not None
    assert (done.client_id, done.identities, done.merged_ids, done.edited) == ("c1", ["webchat.demo.v1"], ["c2"], ["name"])
    assert done.profile.username == "marta_tg" and done.profile.name == "Marta Ozola"  # its own chat's details stay
    assert done.open_sessions == {"support": "s9"} and done.chat_id == "901"
    # the surviving client never lists itself as merged
    again = client.merged(
        done, own_key="telegram.bot.901", client_id="c1", keys=keys, merged_ids={"c1", "c2"}, person=person, edited_fields=set()
    )
    assert again is not None and again.merged_ids == ["c2"]


@given(
    st.dictionaries(st.sampled_from(["name", "phone", "email"]), st.text(max_size=5), max_size=3),
    st.dictionaries(st.sampled_from(["name", "phone", "email", "language"]), st.text(max_size=5), max_size=4),
)
def test_no_channel_profile_overwrites_an_operators_field(operator: dict[str, str], channel: dict[str, str]) -> None:
    start = client.edited(rec(), operator) if operator else rec()
    assert start is not None
    after = client.remembered(start, msg(**channel))
    for field, value in operator.items():
        assert getattr(after.profile, field) == value
