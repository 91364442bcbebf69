"""Who a client is, in the forms the CRM can match on.

Phones are compared as E.164 (``phonenumbers``), e-mail addresses in lower
case after a syntax check (``email-validator``, no DNS look-ups), and a
channel identity as an ``imol|<channel>|<account>|<chat id>`` code, the form
Bitrix24 Open Lines writes into a contact's IM field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
import phonenumbers
from email_validator import EmailNotValidError, validate_email

_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
MAX_TEXT_SCANNED = 20_000  # characters of one message looked at for identities


class Identities(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Normalised phones and e-mail addresses of one person, each sorted, no duplicates."""

    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.phones or self.emails)

    def merge(self, other: Identities) -> Identities:
        return Identities(
            phones=tuple(sorted({*self.phones, *other.phones})), emails=tuple(sorted({*self.emails, *other.emails}))
        )

    def minus(self, other: Identities) -> Identities:
        """What this one knows that ``other`` does not."""
        return Identities(
            phones=tuple(p for p in self.phones if p not in other.phones),
            emails=tuple(e for e in self.emails if e not in other.emails),
        )


def external_code(channel: str, account: str, chat_id: str) -> str:
    """The channel identity of one external chat, as the CRM stores it."""
    return f"imol|{channel}|{account}|{chat_id}"


def normalise_phone(raw: str, region: str = "") -> str | None:
    """E.164 (``+37120000000``), or None when ``raw`` is not a possible number.

    A number without a country code is read in ``region`` (ISO 3166 code,
    e.g. "LV"); with no region only international numbers are accepted.
    """
    text = raw.strip()
    if not text or len(text) > 40:
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    elif not text.startswith("+") and not region and text.isdigit() and len(text) >= 10:
        # Telegram shares contact numbers as bare digits with the country code.
        text = "+" + text
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str) -> str | None:
    """The address in lower case, or None when it is not a valid address (no DNS check)."""
    text = raw.strip()
    if not text or len(text) > 254:
        return None
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return str(result.normalized).lower()


def of_profile(phone: str, email: str, region: str = "") -> Identities:
    p = normalise_phone(phone, region) if phone else None
    e = normalise_email(email) if email else None
    return Identities(phones=(p,) if p else (), emails=(e,) if e else ())


def in_texts(texts: Iterable[str], region: str = "") -> Identities:
    """Phones and e-mail addresses a client wrote in their messages ("my number is ...")."""
    phones: set[str] = set()
    emails: set[str] = set()
    for text in texts:
        chunk = text[:MAX_TEXT_SCANNED]
        for m in _EMAIL_IN_TEXT.finditer(chunk):
            e = normalise_email(m.group(0).strip("."))
            if e:
                emails.add(e)
        without_emails = _EMAIL_IN_TEXT.sub(" ", chunk)
        for match in phonenumbers.PhoneNumberMatcher(
            without_emails, region.upper() or None, leniency=phonenumbers.Leniency.VALID
        ):
            phones.add(phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164))
    return Identities(phones=tuple(sorted(phones)), emails=tuple(sorted(emails)))
