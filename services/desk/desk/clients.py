"""Changing a client from the card: name, phone and e-mail, and merging two clients (decision 024).

``POST /api/sessions/{id}/client`` ``{"name"?, "phone"?, "email"?}`` edits the
client of that conversation; ``POST /api/sessions/{id}/merge``
``{"other_session_id"}`` merges the client of another conversation (found with
the search) into it. The desk checks and normalises what it can (a phone to
E.164, an e-mail as the CRM will match it) and answers 400 with the reason;
the router, which owns clients, checks who may and changes the records.
"""

from __future__ import annotations

from typing import Any

import email_validator
import phonenumbers
from aiohttp import web

from desk.http import ApiError, _body, _chat_action, _result
from desk.reads import is_token
from openlines.commands import EditClient, MergeClients

MAX_NAME = 200
FIELDS = ("name", "phone", "email")


def normal_phone(raw: str) -> str:
    """A phone as E.164 ("+37120000001"), or ApiError 400 saying why not."""
    text = raw.strip()
    if not text:
        return ""
    if len(text) > 40:
        raise ApiError(400, "invalid", "the phone is too long")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise ApiError(400, "invalid", f"{text!r} is not a phone number: write it with + and the country code") from None
    if not phonenumbers.is_valid_number(number):
        raise ApiError(400, "invalid", f"{text!r} is not a valid phone number (check the country code and the digits)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normal_email(raw: str) -> str:
    """An e-mail address in lower case (as the CRM matches it), or ApiError 400 with the validator's reason."""
    text = raw.strip()
    if not text:
        return ""
    if len(text) > 254:
        raise ApiError(400, "invalid", "the e-mail address is too long")
    try:
        checked = email_validator.validate_email(text, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ApiError(400, "invalid", f"{text!r} is not an e-mail address: {exc}") from None
    return str(checked.normalized).lower()


def normal_name(raw: str) -> str:
    name = " ".join(raw.split())
    if len(name) > MAX_NAME:
        raise ApiError(400, "invalid", f"the name is {len(name)} characters; at most {MAX_NAME}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ApiError(400, "invalid", "the name must be plain text")
    return name


def edit_of(body: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, "invalid", f"unknown field {unknown[0]!r}: give name, phone or email")
    if not any(f in body for f in FIELDS):
        raise ApiError(400, "invalid", "nothing to change: give name, phone or email")
    for f in FIELDS:
        if f in body and not isinstance(body[f], str):
            raise ApiError(400, "invalid", f"{f} must be text (an empty one removes it)")
    out: dict[str, str] = {}
    if "name" in body:
        out["name"] = normal_name(body["name"])
    if "phone" in body:
        out["phone"] = normal_phone(body["phone"])
    if "email" in body:
        out["email"] = normal_email(body["email"])
    return out


async def api_edit_client(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    fields = edit_of(await _body(request))
    cmd = EditClient(operator_id=user.operator_id, session_id=sid, **fields)
    return await _result(desk, await desk.command("client", cmd))


async def api_merge(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    body = await _body(request)
    other = body.get("other_session_id")
    if not isinstance(other, str) or not is_token(other):
        raise ApiError(400, "invalid", "other_session_id must be the id of a conversation of the other client")
    cmd = MergeClients(operator_id=user.operator_id, session_id=sid, other_session_id=other)
    return await _result(desk, await desk.command("merge", cmd))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/sessions/{session_id}/client", api_edit_client)
    app.router.add_post("/api/sessions/{session_id}/merge", api_merge)
