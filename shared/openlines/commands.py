"""Operator and admin commands: request/reply to the router's ``ol.cmd.*`` service.

The router is the single writer of session state; the desk (or any script)
asks it to act and gets a :class:`Result` back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from openlines import subjects
from openlines.envelopes import Attachment
from openlines.pace import backoff
from openlines.state import OperatorStatus, Session

COMMAND_TIMEOUT = 5.0


class _Cmd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    operator_id: str


class SetStatus(_Cmd):
    status: OperatorStatus


class Accept(_Cmd):
    session_id: str


class TemplateChoice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An approved message template of the chat's account, with the operator's values for its variables."""

    name: str
    language: str = ""  # empty: the only (or first) translation declared under that name
    params: list[str] = []


class Reply(_Cmd, omit_defaults=True):
    # omit_defaults: a reply without a template encodes as before, so a router not yet upgraded (which
    # refuses unknown fields) still takes replies from an upgraded desk during a rolling update.
    session_id: str
    text: str
    client_msg_id: str  # makes a retried reply idempotent
    attachments: list[Attachment] = []  # files already stored (the desk's file store); text may then be empty
    template: TemplateChoice | None = None  # send this template (text is then ignored): outside the 24-hour window


class Close(_Cmd):
    session_id: str


class Skip(_Cmd):
    """Let an offered chat pass to the next operator."""

    session_id: str


class Transfer(_Cmd):
    """Give a chat to another operator (who must accept it) or put it in another line's queue."""

    session_id: str
    to_operator: str = ""
    to_line: str = ""
    comment: str = ""  # for whoever gets it: in the transcript, never sent to the client (<= 1000 characters)


class Pin(_Cmd):
    """Pinned chats stay with their operator when the operator goes away."""

    session_id: str
    pinned: bool = True


class Spam(_Cmd):
    """Close the chat and drop the client's further messages."""

    session_id: str


class Intercept(_Cmd):
    """A supervisor takes over an open chat: it becomes theirs and answered, whoever held or was offered it."""

    session_id: str


class Take(_Cmd):
    """An operator of the chat's line takes a waiting chat from the queue (it becomes theirs, answered)."""

    session_id: str


class Tag(_Cmd):
    """Put tags on a conversation and take others off (open or closed); see openlines.tags."""

    session_id: str
    add: list[str] = []
    remove: list[str] = []


class Note(_Cmd):
    """A private note in the conversation: colleagues see it, the client never does; @login mentions notify."""

    session_id: str
    text: str
    client_msg_id: str  # makes a retried note idempotent


class EditClient(_Cmd, omit_defaults=True):
    """Change the name, phone or e-mail of the client of a conversation (None: leave as it is; "": clear it).

    The desk checks and normalises them first (phone E.164, e-mail lower-case); the router checks again.
    """

    session_id: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None


class MergeClients(_Cmd):
    """Merge the client of ``other_session_id`` into the client of ``session_id`` (which remains)."""

    session_id: str
    other_session_id: str


class Presence(_Cmd):
    """A desk replica reports whether the operator has a page open on it (grace handling is the router's)."""

    connected: bool
    desk: str  # the reporting desk replica


CommandName = Literal[
    "status",
    "accept",
    "reply",
    "close",
    "skip",
    "transfer",
    "pin",
    "spam",
    "presence",
    "intercept",
    "take",
    "tag",
    "note",
    "client",
    "merge",
]
COMMANDS: dict[str, type[_Cmd]] = {
    "status": SetStatus,
    "accept": Accept,
    "reply": Reply,
    "close": Close,
    "skip": Skip,
    "transfer": Transfer,
    "pin": Pin,
    "spam": Spam,
    "presence": Presence,
    "intercept": Intercept,
    "take": Take,
    "tag": Tag,
    "note": Note,
    "client": EditClient,
    "merge": MergeClients,
}


class Result(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: str = ""  # machine code: not_found, forbidden, invalid, conflict, unavailable
    detail: str = ""
    session: Session | None = None
    message_id: str = ""


class CommandFailed(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(f"{result.error}: {result.detail}")
        self.result = result


NO_RESPONDERS_PATIENCE = 2.0  # seconds a command waits for a router that is (re)starting

# The commands whose repeat changes nothing the first ask did not (decision 032): a caller that got no answer -
# the router replica killed while at it, every replica restarting, "unavailable" - may ask again.
#   accept, take, intercept   the chat is the asker's already: answered as it is
#   reply, note               the client_msg_id is the message's id (and Nats-Msg-Id): sent and written once
#   close, spam               a chat the asker closed for that reason already: answered as closed
#   pin, tag, client          they set values: set again, nothing changes and the trail gets no second line
# Not: status (every ask is an event of its own, and a late repeat could undo a newer status), skip (a repeat
# could pass on a new offer of the same chat unseen), transfer (the chat may come back and be moved again),
# merge (a repeat is refused as "one client already"), presence (the desk's own, with its own retries).
REPEATABLE: frozenset[CommandName] = frozenset(
    {"accept", "take", "intercept", "reply", "note", "close", "spam", "pin", "tag", "client"}
)
MIN_TRY = 0.5  # seconds: a try with less time left than this is not made


async def call(nc: NATS, name: CommandName, cmd: _Cmd, timeout: float = COMMAND_TIMEOUT) -> Result:
    """Send a command and decode the router's answer; raises CommandFailed when not ok.

    "No responders" is retried briefly: during a router (re)start or a rolling
    update the command subscriptions can be missing for a moment, and the
    server has been seen to answer so even right after a router subscribed.
    """
    payload = msgspec.json.encode(cmd)
    deadline = time.monotonic() + min(NO_RESPONDERS_PATIENCE, timeout)
    delay = 0.02
    while True:
        try:
            msg = await nc.request(subjects.command(name), payload, timeout=timeout)
            break
        except NoRespondersError:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
    result = msgspec.json.decode(msg.data, type=Result)
    if not result.ok:
        raise CommandFailed(result)
    return result


class NoAnswer(Exception):
    """The router did not answer a repeatable command in time, asked ``tries`` times; ``reason`` is the last failure."""

    def __init__(self, reason: str, tries: int, waited: float) -> None:
        super().__init__(f"no answer from the router in {waited:.1f} s ({tries} tries): {reason}")
        self.reason = reason
        self.tries = tries
        self.waited = waited


async def call_repeating(
    nc: NATS, name: CommandName, cmd: _Cmd, *, budget: float, asked_again: Callable[[str], None] | None = None
) -> Result:
    """:func:`call` a :data:`REPEATABLE` command, asked again while the router does not answer it - no answer in
    time, no router there, or its own "unavailable" - for at most ``budget`` seconds in all.

    Tries are paced by :func:`openlines.pace.backoff` (a quarter second, doubling, at most 2 s) and each waits
    at most ``COMMAND_TIMEOUT``. ``asked_again(reason)`` is called before every repeat. Any other answer -
    done, or refused (not_found, forbidden, conflict ...) - is the result, as with :func:`call`; when the
    budget runs out, :class:`NoAnswer`.
    """
    if name not in REPEATABLE:
        raise ValueError(f"command {name!r} is not safe to repeat")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + budget
    tries = 0
    while True:
        tries += 1
        try:
            return await call(nc, name, cmd, timeout=max(MIN_TRY, min(COMMAND_TIMEOUT, deadline - loop.time())))
        except CommandFailed as exc:
            if exc.result.error != "unavailable":
                raise
            reason = "the router could not complete it"
        except NoRespondersError:
            reason = "no router is running"
        except (TimeoutError, nats.errors.Error) as exc:  # no answer in time; the connection to NATS down
            reason = "no answer in time" if isinstance(exc, TimeoutError) else f"NATS: {exc}"
        pause = backoff(tries, 0.25, 2.0)
        if loop.time() + pause + MIN_TRY > deadline:
            raise NoAnswer(reason, tries, loop.time() - started)
        await asyncio.sleep(pause)
        if asked_again is not None:
            asked_again(reason)
