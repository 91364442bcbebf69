"""Identities crm-sync matches on: E.164 phones, lower-case valid e-mails, channel codes."""

from __future__ import annotations

from crm_sync.core.identity import Identities, external_code, in_texts, normalise_email, normalise_phone, of_profile


def test_phones_are_normalised_to_e164_whatever_the_writing() -> None:
    forms = ["+371 2612 3456", "+371-26-123-456", "0037126123456", "37126123456", "(+371) 26123456"]
    assert {normalise_phone(f) for f in forms} == {"+37126123456"}


def test_a_national_number_needs_the_configured_region() -> None:
    assert normalise_phone("26123456") is None
    assert normalise_phone("26123456", "lv") == "+37126123456"
    assert normalise_phone("8 (495) 123-45-67", "RU") == "+74951234567"


def test_impossible_phones_are_refused() -> None:
    for bad in ["", "12", "+1", "not a phone", "+999 123", "1" * 50]:
        assert normalise_phone(bad) is None, bad


def test_emails_are_lower_case_and_validated() -> None:
    assert normalise_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    for bad in ["", "ann@", "@example.com", "ann example.com", "ann@@example.com", "a" * 300 + "@example.com"]:
        assert normalise_email(bad) is None, bad


def test_identities_written_in_messages_are_found() -> None:
    found = in_texts(["hi! call me at +371 2612 3456", "or mail ANN@example.org.", "order #12345 of 2024-05-01"])
    assert found == Identities(phones=("+37126123456",), emails=("ann@example.org",))


def test_profile_fields_that_do_not_validate_are_ignored() -> None:
    assert of_profile("37126123456", "Ann@Example.com") == Identities(phones=("+37126123456",), emails=("ann@example.com",))
    assert not of_profile("garbage", "garbage")


def test_merge_and_minus_keep_identities_sorted_and_unique() -> None:
    a = Identities(phones=("+37126123456",), emails=("b@example.com",))
    b = Identities(phones=("+37126123456", "+16502530000"), emails=("a@example.com",))
    merged = a.merge(b)
    assert merged == Identities(phones=("+16502530000", "+37126123456"), emails=("a@example.com", "b@example.com"))
    assert merged.minus(a) == Identities(phones=("+16502530000",), emails=("a@example.com",))


def test_the_channel_identity_code_names_channel_account_and_chat() -> None:
    assert external_code("telegram", "shopbot", "501") == "imol|telegram|shopbot|501"
