"""Notifications the WhatsApp Cloud API really sends (../shared/corpus/whatsapp: payloads another WhatsApp
library tests against, several from Meta's documentation), signed and POSTed to the real gateway: each is
answered 200; every client message is published once or kept as a dead letter with the reason - none is
lost -; statuses are read; other fields are ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from peers.whatsapp_api import FakeWhatsApp
from support.corpus import params
from support.timing import wait_for
from support.whatsapp import SHOP, events_of, fake_whatsapp, inbound_of, running_gateway

# (file, case) -> a piece of the text the operator reads (files are named by their case)
EXPECTED_TEXT: dict[tuple[str, str], str] = {
    ("pywa__message.json", "text"): "Body Text",
    ("pywa__message.json", "image"): "",
    ("pywa__message.json", "document"): "(forwarded) caption",
    ("pywa__message.json", "reaction"): "(reaction) 😮",
    ("pywa__message.json", "unreaction_empty"): "(reaction removed)",
    ("pywa__message.json", "unsupported"): "does not pass on to businesses: Message type unknown",
    ("pywa__message.json", "order"): "(order: HAMBURGER x3, FRENCH_FRIES x2, SODA x2)",
    ("pywa__message.json", "forwarded_many_times"): "(forwarded many times) text forwarded many times",
    ("pywa__message.json", "interactive_message_with_err"): "Unsupported webhook payload",
    ("pywa__message.json", "referral"): "(came from the ad: AD_TITLE)",
    ("pywa__system.json", "phone_number_change"): "(WhatsApp: User A changed from 972987654321 to 972912345678)",
    ("pywa__callback_button.json", "quick_reply"): "title",
    ("pywa__edited_message.json", "image"): "(edited) Updated image caption",
}


def cases(path: Path) -> dict[str, Any]:
    """The file's notifications by case. The samples are independent examples that often share one
    placeholder wamid; each case's message ids get the case name, so each counts as its own message."""
    data = json.loads(path.read_text(encoding="utf-8"))
    named = data if "object" not in data else {path.stem: data}
    for case, notification in named.items():
        for m in client_messages(notification):
            if isinstance(m.get("id"), str):
                m["id"] = f"{m['id']}.{case}"
    return named


def routed_to_shop(notification: Any) -> Any:
    """The notification as it reaches a gateway serving its number: metadata names our configured number."""
    for entry in notification.get("entry") or []:
        for change in entry.get("changes") or []:
            metadata = (change.get("value") or {}).get("metadata")
            if isinstance(metadata, dict):
                metadata["phone_number_id"] = SHOP["phone_number_id"]
    return notification


def client_messages(notification: Any) -> list[dict[str, Any]]:
    return [
        m
        for entry in notification.get("entry") or []
        for change in entry.get("changes") or []
        if change.get("field") == "messages"
        for m in (change.get("value") or {}).get("messages") or []
    ]


@pytest.mark.parametrize("path", params("whatsapp", ".json"))
async def test_every_corpus_notification_is_answered_200_and_no_client_message_is_lost(
    nc: Any, nats_server: Any, path: Path
) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        await _each_case(nc, peer, path)


async def _each_case(nc: Any, peer: FakeWhatsApp, path: Path) -> None:
    expected_ids: set[str] = set()
    dead_expected = 0
    named = cases(path)
    for case, notification in named.items():
        # Media of the samples point at files the local API does not have: each is published with the reason.
        status, answer = await peer.post(routed_to_shop(notification))
        assert status == 200, (case, answer)
        for m in client_messages(notification):
            if m.get("type") == "request_welcome":
                continue
            if not str(m.get("from", "")).replace(".", "").isalnum():
                dead_expected += 1  # a placeholder such as <WHATSAPP_USER_PHONE_NUMBER>: kept as a dead letter
            else:
                expected_ids.add(f"whatsapp:shop_wa:{m['id']}")

    async def all_there() -> list[Any] | None:
        got = await inbound_of(nc)
        return got if expected_ids <= {m.id for m in got} else None

    got = await wait_for(all_there, what="every client message of the file") if expected_ids else []
    assert {m.id for m in got} == expected_ids, "nothing but the client messages is published"
    assert len(got) == len(expected_ids), "each once"
    if dead_expected:
        assert len(await events_of(nc, "dead_letter")) >= 1
    for (name, case), piece in EXPECTED_TEXT.items():
        if name != path.name:
            continue
        wamids = {m["id"] for m in client_messages(named[case])}
        texts = [m.text for m in got if m.channel_msg_id in wamids]
        assert texts and all(piece in t for t in texts), (case, texts)
