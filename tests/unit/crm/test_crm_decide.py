"""The create/link decision: never a second lead for a known person; the line's
settings decide what a stranger and a known contact get."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crm_sync.core.decide import DEFAULT_SOURCE_IDS, Known, decide, pick, source_id
from openlines.lines import CrmConfig

configs = st.builds(
    CrmConfig,
    enabled=st.booleans(),
    create=st.sampled_from(["lead", "deal", "none"]),
    identified_client=st.sampled_from(["deal", "lead", "none"]),
    link_repeat_contacts=st.booleans(),
)
ids = st.sampled_from(["", "1", "42"])
knowns = st.builds(Known, contact_id=ids, lead_id=ids, deal_id=ids)


@given(configs, knowns)
def test_nothing_is_created_when_the_client_already_has_a_lead_or_deal_of_its_own(crm: CrmConfig, known: Known) -> None:
    plan = decide(crm, known)
    if known.deal_id or (known.lead_id and not known.contact_id):
        assert plan.create == "none"
    if plan.create != "none":
        assert crm.enabled and crm.create != "none"


@given(configs, knowns)
def test_what_is_known_is_never_dropped(crm: CrmConfig, known: Known) -> None:
    plan = decide(crm, known)
    if crm.enabled:
        assert plan.link == known


@given(configs)
def test_a_stranger_gets_what_create_says(crm: CrmConfig) -> None:
    plan = decide(crm, Known())
    expected = {"lead": "lead", "deal": "contact_deal", "none": "none"}[crm.create] if crm.enabled else "none"
    assert plan.create == expected


def test_a_known_contact_gets_what_identified_client_says() -> None:
    contact = Known(contact_id="5")
    assert decide(CrmConfig(enabled=True, identified_client="deal"), contact).create == "deal"
    assert decide(CrmConfig(enabled=True, identified_client="lead"), contact).create == "lead"
    assert decide(CrmConfig(enabled=True, identified_client="none"), contact).create == "none"
    assert decide(CrmConfig(enabled=True, create="none", identified_client="deal"), contact).create == "none"
    assert decide(CrmConfig(enabled=True, identified_client="lead"), Known(contact_id="5", lead_id="9")).create == "none"


def test_source_id_is_the_configured_one_else_the_channel_default() -> None:
    crm = CrmConfig(enabled=True, source_ids={"webchat": "WEB"})
    assert source_id(crm, "webchat") == "WEB"
    assert source_id(crm, "telegram") == "TELEGRAM"
    assert {ch: source_id(CrmConfig(), ch) for ch in DEFAULT_SOURCE_IDS} == {
        "telegram": "TELEGRAM",
        "vk": "VK",
        "webchat": "OPENLINE",
        "email": "EMAIL",
        "whatsapp": "WHATSAPP",
    }


def test_of_several_matches_the_oldest_record_is_kept() -> None:
    assert pick(["17", "3", "120"]) == "3"
    assert pick([]) == ""


def test_an_anonymous_channel_gets_a_record_only_once_the_client_wrote() -> None:
    from crm_sync.core.decide import worth_a_record

    assert not worth_a_record("webchat", client_wrote=False)
    assert worth_a_record("webchat", client_wrote=True)
    assert worth_a_record("telegram", client_wrote=False)  # a messenger account is someone, not an empty widget
