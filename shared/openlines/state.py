"""Records kept in the KV buckets. The router writes sessions, clients and
operator presence; everyone else only reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from openlines.envelopes import ClientProfile

SessionStatus = Literal["waiting", "assigned", "answered", "closed"]
OperatorStatus = Literal["online", "away", "offline"]
OPEN_STATUSES: tuple[str, ...] = ("waiting", "assigned", "answered")

RECENT_IDS_KEPT = 64


class Session(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    line_id: str  # the line the session is on now
    entry_line_id: str = ""  # the line the client's channel feeds (differs after a redirect or transfer)
    client_id: str
    channel: str
    account: str
    chat_id: str
    chat_key: str
    client_name: str = ""
    status: SessionStatus = "waiting"
    operator_id: str = ""
    opened_at: datetime
    assigned_at: datetime | None = None
    answered_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str = ""
    last_message_at: datetime | None = None
    messages_in: int = 0  # client messages so far (the desk's unread count builds on it)
    assignments: int = 0  # how many times the chat was given to an operator
    declined_by: list[str] = []  # operators who let the current offer pass (skip or no answer)
    offered_to: list[str] = []  # mode "all": everyone the chat is offered to; the first to accept takes it
    pinned: bool = False  # kept by its operator when they go away
    held: bool = False  # waiting for the line to open (outside hours, hold_until_open)
    close_reason: str = ""  # operator | auto_close | spam | transfer
    no_auto_reply: bool = False  # opened by a message that must get no automatic answer (robot, list, loop)
    rating: int = 0  # 1-5 from the client after the close, 0 = none
    close_finished: bool = False  # everything a close entails is done (releases, goodbye, event)
    flood_window: float = 0.0  # epoch seconds the flood guard's current window began
    flood_count: int = 0  # client messages in that window
    flagged: str = ""  # marked for a supervisor, and why (e.g. "flood")
    client_last_at: datetime | None = None  # the client's latest message (by the channel's clock): opens the window
    tags: list[str] = []  # labels operators put on the conversation (openlines.tags), kept after the close

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class ClientRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One external chat (a Telegram chat, a website visitor...) as the router knows it."""

    client_id: str
    channel: str
    account: str
    chat_id: str
    profile: ClientProfile = msgspec.field(default_factory=ClientProfile)
    open_sessions: dict[str, str] = {}  # line id -> session id
    recent_msg_ids: list[str] = []  # inbound ids already applied, newest last
    sessions_total: int = 0
    spam: bool = False  # marked as spam by an operator: further messages are dead-lettered
    rating_for: str = ""  # a closed session whose rating request is open: a reply "1".."5" rates it
    rating_until: float = 0.0  # epoch seconds the rating request stays open
    # What operators changed and merged (decision 024):
    edited: list[str] = []  # profile fields an operator set (name, phone, email): a channel's profile no longer overwrites them
    identities: list[str] = []  # client keys of the client's other chats (after a merge): an edit reaches each of them
    merged_ids: list[str] = []  # client ids merged into this one: their earlier conversations are this client's too


class OperatorState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Presence and load of one operator, claimed by compare-and-set."""

    id: str
    status: OperatorStatus = "offline"
    sessions: list[str] = []  # open sessions assigned to this operator
    answered: list[str] = []  # the ones of them the operator has answered
    offers: list[str] = []  # mode "all": chats offered to this operator among others (no capacity taken yet)
    last_assigned_at: float = 0.0  # epoch seconds; round robin picks the oldest
    status_changed_at: datetime | None = None
    desks: list[str] = []  # desk replicas where the operator has a page open
    disconnected_at: float = 0.0  # epoch seconds the last desk page closed


class DeskHeartbeat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A running desk replica (``ol-desk-presence`` key = its id): renewed every ``every`` seconds.

    The key expires when the replica stops renewing it (the bucket's TTL); the router then
    treats every page the replica held as closed.
    """

    id: str
    operators: list[str] = []  # operators with a page open on this replica
    at: float = 0.0  # epoch seconds of this renewal (for people reading the bucket; liveness is the TTL's)
    every: float = 0.0  # seconds between renewals


class OperatorAccount(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A person who can log into the desk."""

    id: str
    name: str
    password_hash: str = ""
    roles: list[str] = msgspec.field(default_factory=lambda: ["operator"])
    permissions: list[str] = msgspec.field(default_factory=lambda: ["openlines"])


class QueuedChat(msgspec.Struct, kw_only=True, frozen=True):
    """One chat waiting for an operator (``ol-waiting`` key ``<line>.<session>``)."""

    session_id: str
    since: float  # epoch seconds the chat started waiting; the line's queue is ordered by it
    line_id: str = ""
    # where the client writes from: a channel that shows the queue live (the widget) is told its place
    channel: str = ""
    account: str = ""
    chat_id: str = ""


def waiting_key(line_id: str, session_id: str) -> str:
    """Key of a waiting chat in the ``ol-waiting`` bucket."""
    return f"{line_id}.{session_id}"


def parse_waiting_key(key: str) -> tuple[str, str]:
    """(line id, session id) of an ``ol-waiting`` key made by :func:`waiting_key`."""
    line_id, _, session_id = key.partition(".")
    return line_id, session_id


def link_client_key(client_id: str) -> str:
    """Key of a client's CRM link in ``ol-crm-links`` (written by crm-sync, read by the desk)."""
    return f"client.{client_id}"


def link_session_key(session_id: str) -> str:
    """Key of a session's CRM filing in ``ol-crm-links`` (written by crm-sync, read by the desk)."""
    return f"session.{session_id}"


class WaitingQueue(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The earlier layout: a line's whole queue as one ``ol-sessions`` value (read once, to move it to ``ol-waiting``)."""

    chats: list[QueuedChat] = []


def queue_key(line_id: str) -> str:
    """Key of a line's queue in the earlier layout (``ol-sessions``)."""
    return f"queue.{line_id}"


def client_key(channel: str, account: str, chat_key: str) -> str:
    """KV key of a client record."""
    return f"{channel}.{account}.{chat_key}"
