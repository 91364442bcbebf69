"""Updates Telegram really sends (../shared/corpus/telegram: its documentation's examples and updates
captured by other bot frameworks), through the real gateway: each is answered 200, a client's words are
published once with who sent them (and who they forwarded), the rest is recorded as ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.corpus import params
from support.telegram import SUPPORT, fake_telegram, inbound_of, running_gateway, stream_size
from support.timing import wait_for

TOKEN = SUPPORT["token"]

# file -> the text published, or None when the update is not a client's message
EXPECTED: dict[str, str | None] = {
    "tgdocs_webhooks__text.json": "/start",
    "tgdocs_webhooks__forwarded_message.json": "(forwarded from Forward Firstname Forward Lastname) /start",
    "tgdocs_webhooks__forwarded_channel_message.json": "(forwarded from Test channel) /start",
    "tgdocs_webhooks__message_with_reply.json": "/start",
    "tgdocs_webhooks__edited_message.json": "(edited) Edited text",
    "tgdocs_webhooks__message_with_entities.json": "Bold and italics",
    "tgdocs_webhooks__voice_message.json": "",  # a voice message: no text, one attachment
    "tgdocs_webhooks__message_with_document.json": "",  # a document: no text, one attachment
    "tgdocs_webhooks__callback_query.json": "Data from button callback",
    "teloxide__update_message_private_text.json": "hello there",
    "teloxide__update_issue_1107_supergroup_reply_bot_command.json": "/report",
    "teloxide__update_supergroup_dice.json": "🎲 2",
    "teloxide__update_supergroup_pinned_message.json": None,  # a service message
    "teloxide__update_my_chat_member_kicked.json": None,  # membership change
    "teloxide__update_message_reaction.json": None,  # a reaction
}
ATTACHMENT_KINDS = {
    "tgdocs_webhooks__voice_message.json": ["voice"],
    "tgdocs_webhooks__message_with_document.json": ["file"],
}


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", params("telegram", ".json"))
async def test_every_corpus_update_is_answered_200_and_client_messages_are_published_once(
    nc: Any, nats_server: Any, path: Path
) -> None:
    update = load(path)
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        for _ in range(2):  # Telegram resends an update it thinks failed: the copy changes nothing
            status, answer = await peer.deliver(TOKEN, update)
            assert status == 200, (path.name, answer)
            assert "dead_letter" not in answer, (path.name, answer)  # every real update is readable
        expected = EXPECTED.get(path.name, "?")
        if expected is None:
            assert await stream_size(nc) == 0, path.name
            return
        [msg] = await wait_for(lambda: inbound_of(nc), what=f"{path.name} published")
        assert await stream_size(nc) == 1
        if expected != "?":  # a file added to the corpus later: published, whatever its text
            assert msg.text == expected, path.name
        assert [a.kind for a in msg.attachments] == ATTACHMENT_KINDS.get(path.name, [a.kind for a in msg.attachments])
        assert msg.user_id and msg.chat_id and msg.channel == "telegram"
