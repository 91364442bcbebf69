"""Every NATS subject, stream and bucket name of openlines, spelled once.

Services never build a subject string themselves; they call these helpers so
that a rename is one change here (and one in docs/architecture.md).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable

# Streams
STREAM_IN = "OL_IN"
STREAM_OUT = "OL_OUT"
STREAM_EVT = "OL_EVT"
STREAM_HIST = "OL_HIST"
STREAM_TIMER = "OL_TIMER"
STREAM_MARK = "OL_MARK"
STREAMS = (STREAM_IN, STREAM_OUT, STREAM_EVT, STREAM_HIST, STREAM_TIMER, STREAM_MARK)

# Key-value buckets
KV_LINES = "ol-lines"
KV_ACCOUNTS = "ol-accounts"
KV_OPERATORS = "ol-operators"
KV_SESSIONS = "ol-sessions"
KV_CLIENTS = "ol-clients"
KV_WAITING = "ol-waiting"  # one key per chat waiting for an operator: <line>.<session> -> QueuedChat
KV_BUCKETS = (KV_LINES, KV_ACCOUNTS, KV_OPERATORS, KV_SESSIONS, KV_CLIENTS, KV_WAITING)
KV_HISTORY = {KV_WAITING: 1}  # revisions kept per key (default 5): a waiting chat's older places are of no use
KV_SLA = "ol-sla"  # router: each open session's SLA clock (router.core.sla.Clock), created by the router
KV_ROUTER = "ol-router"  # router replicas: membership and partition leases (created by the router, with a TTL)

# Buckets a service owns and creates itself (with its own TTLs), not part of the bootstrap.
KV_TELEGRAM_SENT = "ol-tg-sent"  # gateway-telegram: delivered outbound ids
KV_VK_SENT = "ol-vk-sent"  # gateway-vk: replies sent and not yet read, per dialog (read marks)
KV_WHATSAPP_SENT = "ol-wa-sent"  # gateway-whatsapp: what was sent of each outbound message (recorded before each send)
OBJ_WHATSAPP_FILES = "ol-wa-files"  # gateway-whatsapp: media clients send, fetched from the Cloud API (object store)
KV_EMAIL_STATE = "ol-email"  # gateway-email: IMAP cursors, chat threading, sent records
KV_EMAIL_MESSAGES = "ol-email-messages"  # gateway-email: Message-ID -> chat and session
KV_EMAIL_LEASES = "ol-email-leases"  # gateway-email: which replica owns a mailbox
OBJ_EMAIL_FILES = "ol-email-files"  # gateway-email: attachment contents (object store)
KV_CRM_LINKS = "ol-crm-links"  # crm-sync: client/session -> CRM records, intents done
KV_CRM_CONTACTS = "ol-crm-contacts"  # crm-sync built-in CRM
KV_CRM_LEADS = "ol-crm-leads"
KV_CRM_DEALS = "ol-crm-deals"
KV_CRM_ACTIVITIES = "ol-crm-activities"
KV_CRM_INDEX = "ol-crm-index"  # crm-sync built-in CRM: id counters, origin and phone/e-mail index
# The built-in CRM's records by kind: crm-sync writes them, the desk's CRM page reads them.
CRM_RECORD_BUCKETS = {"contact": KV_CRM_CONTACTS, "lead": KV_CRM_LEADS, "deal": KV_CRM_DEALS, "activity": KV_CRM_ACTIVITIES}
KV_DESK_TOKENS = "ol-desk-tokens"  # desk: API tokens for scripts (hashed), written by `openlines desk token`
KV_DESK_REVOKED = "ol-desk-revoked"  # desk: signed-out sessions (cookie nonce -> revoked), kept as long as a cookie lives
KV_DESK_LOGINS = "ol-desk-logins"  # desk: failed sign-ins per login and per client address (rate limiting)
OBJ_DESK_FILES = "ol-desk-files"  # desk: files operators attach to replies (object store)
# desk: one key per running replica (<desk id> -> DeskHeartbeat), renewed every few seconds and expiring
# after a few missed renewals; the router reads it to find replicas that died without a word (kill -9)
KV_DESK_PRESENCE = "ol-desk-presence"
# desk statistics (ADR 019): per line and UTC day, the figures folded in from OL_EVT, and per session
# what later events need; folded by one durable consumer on OL_EVT that every desk replica shares
KV_DESK_STATS = "ol-desk-stats"
KV_DESK_STATS_TRACE = "ol-desk-stats-trace"
DESK_STATS_CONSUMER = "desk-stats"
DESK_SLA_MAIL_CONSUMER = "desk-sla-mail"  # OL_EVT, sla_breached only: the SLA alert e-mails, shared by the desk replicas
ROUTER_SLA_CONSUMER = "router-sla"  # OL_HIST: the router's SLA clocks (router/sla.py)
OBJ_TELEGRAM_FILES = "ol-tg-files"  # gateway-telegram: files clients send (object store)
OBJ_VK_FILES = "ol-vk-files"  # gateway-vk: photos, documents and voice messages clients send (object store)
OBJ_WEBCHAT_FILES = "ol-webchat-files"  # gateway-webchat: files visitors upload (object store)

# Subject roots, with the wildcard each stream captures
IN_ROOT = "ol.in"
OUT_ROOT = "ol.out"
EVT_ROOT = "ol.evt"
HIST_ROOT = "ol.hist"
TIMER_ROOT = "ol.timer"
MARK_ROOT = "ol.mark"
SEEN_ROOT = "ol.seen"  # core NATS, never stored: the operator has seen the client's messages up to one
QUEUE_ROOT = "ol.queue"  # core NATS, never stored: a waiting client's place in the queue, told as it changes
TYPING_ROOT = "ol.typing"  # core NATS, never stored: "is typing" is worth nothing a few seconds later
CMD_ROOT = "ol.cmd"

STREAM_SUBJECTS = {
    STREAM_IN: [f"{IN_ROOT}.>"],
    STREAM_OUT: [f"{OUT_ROOT}.>"],
    STREAM_EVT: [f"{EVT_ROOT}.>"],
    STREAM_HIST: [f"{HIST_ROOT}.>"],
    STREAM_TIMER: [f"{TIMER_ROOT}.>"],
    STREAM_MARK: [f"{MARK_ROOT}.>"],
}

# The router's request/reply service
ROUTER_SERVICE = "openlines-router"
# crm-sync answers "who is this client's responsible manager" here
CRM_RESPONSIBLE = "ol.crm.responsible"
# Each router replica answers on ROUTER_ALIVE.<member> while its NATS connection is up (core NATS): a replica
# killed -9 has its subscription dropped by the server at once, so "no responders" there says it is gone.
ROUTER_ALIVE = "ol.router.alive"
# A desk replica announces a sign-out here (core NATS) so every replica closes that login's live pages
DESK_SIGNED_OUT = "ol.desk.signed_out"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BadToken(ValueError):
    """A value that must be one subject token is not."""


def token(value: str, what: str) -> str:
    """Check that ``value`` is usable as one subject token and return it."""
    if not _TOKEN.match(value):
        raise BadToken(f"{what} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def chat_key(channel: str, account: str, chat_id: str) -> str:
    """A subject-safe, stable key for one external chat.

    External chat ids may contain dots or '@' (e-mail addresses), so they
    never go into a subject as they are.
    """
    digest = hashlib.blake2b(f"{channel}\x1f{account}\x1f{chat_id}".encode(), digest_size=12)
    return digest.hexdigest()


# Inbound messages are spread over a fixed number of partitions by client, so
# the router can run as several replicas while each client's messages stay in
# order (one consumer per partition, one message in hand at a time). Changing
# the number re-partitions clients: drain OL_IN first (docs/operations.md).
PARTITIONS = 16


def partition_of(channel: str, account: str, chat_id: str) -> int:
    """The partition of one external chat: stable, and the same in every gateway and router."""
    return int(chat_key(channel, account, chat_id)[:8], 16) % PARTITIONS


def inbound(channel: str, account: str, chat_id: str) -> str:
    """Where a gateway publishes a client's message: ``ol.in.<channel>.<account>.<partition>``."""
    return f"{_inbound_prefix(channel, account)}.{partition_of(channel, account, chat_id)}"


@functools.lru_cache(maxsize=4096)
def _inbound_prefix(channel: str, account: str) -> str:
    # Checked once per (channel, account), not once per message; a bad token raises and is not cached.
    return f"{IN_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}"


def inbound_account(channel: str, account: str) -> str:
    """Every inbound message of one channel account (a filter, for reading)."""
    return f"{IN_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}.*"


def inbound_partition(partition: int) -> str:
    """The filter of one router partition consumer."""
    if not 0 <= partition < PARTITIONS:
        raise BadToken(f"partition {partition} is outside 0-{PARTITIONS - 1}")
    return f"{IN_ROOT}.*.*.{partition}"


def inbound_all() -> str:
    return f"{IN_ROOT}.>"


def outbound(channel: str, account: str, chat: str) -> str:
    """Outbound messages for one chat; ``chat`` is a :func:`chat_key`."""
    return f"{OUT_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}.{chat}"


def outbound_account(channel: str, account: str) -> str:
    """Everything a gateway must deliver for one channel account."""
    return f"{OUT_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}.>"


def outbound_channel(channel: str) -> str:
    """Everything a gateway must deliver for every account of its channel."""
    return f"{OUT_ROOT}.{token(channel, 'channel')}.>"


def parse_outbound(subject: str) -> tuple[str, str, str]:
    """``ol.out.<channel>.<account>.<chat>`` -> (channel, account, chat)."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != OUT_ROOT:
        raise BadToken(f"not an outbound subject: {subject!r}")
    return parts[2], parts[3], parts[4]


def event(kind: str) -> str:
    return f"{EVT_ROOT}.{token(kind, 'event kind')}"


def events_all() -> str:
    return f"{EVT_ROOT}.>"


def history(session_id: str) -> str:
    return f"{HIST_ROOT}.{token(session_id, 'session id')}"


def history_all() -> str:
    return f"{HIST_ROOT}.>"


TIMER_SET = "set"  # ol.timer.set.<kind>.<target>.<key>: a timer waiting in the server (decision 039); never a kind


def timer(kind: str, target: str) -> str:
    """Where a durable timer of the router (no-answer, auto-close, opening hours) arrives when it falls due."""
    if kind == TIMER_SET:
        raise BadToken(f"timer kind {kind!r} is reserved")
    return f"{TIMER_ROOT}.{token(kind, 'timer kind')}.{token(target, 'timer target')}"


def timer_set(kind: str, target: str, key: str) -> str:
    """Where a timer waits until it falls due: a message scheduled to :func:`timer` (decision 039), one per ``key``."""
    return f"{TIMER_ROOT}.{TIMER_SET}.{token(kind, 'timer kind')}.{token(target, 'timer target')}.{token(key, 'timer key')}"


def timers_set(kind: str, target: str) -> str:
    """Every timer of ``kind`` waiting for ``target`` (a filter)."""
    return f"{TIMER_ROOT}.{TIMER_SET}.{token(kind, 'timer kind')}.{token(target, 'timer target')}.*"


def timers_due(kinds: Iterable[str]) -> list[str]:
    """The subjects timers of ``kinds`` arrive on when they fall due (not the waiting ones)."""
    return [f"{TIMER_ROOT}.{token(kind, 'timer kind')}.*" for kind in kinds if kind != TIMER_SET]


def mark(session_id: str) -> str:
    """Delivery marks (sent, delivered, read, failed) of a session's outbound messages, as the channel reports them."""
    return f"{MARK_ROOT}.{token(session_id, 'session id')}"


def marks_all() -> str:
    return f"{MARK_ROOT}.>"


def typing_in(channel: str, account: str, chat: str) -> str:
    """A client is typing in one chat (``chat`` is a :func:`chat_key`); gateways publish, the desk listens."""
    return f"{TYPING_ROOT}.in.{token(channel, 'channel')}.{token(account, 'account')}.{token(chat, 'chat')}"


def typing_in_all() -> str:
    return f"{TYPING_ROOT}.in.>"


def typing_out(channel: str, account: str, chat: str) -> str:
    """An operator is typing to one chat; the desk publishes, the channel's gateway tells the client."""
    return f"{TYPING_ROOT}.out.{token(channel, 'channel')}.{token(account, 'account')}.{token(chat, 'chat')}"


def typing_out_channel(channel: str) -> str:
    return f"{TYPING_ROOT}.out.{token(channel, 'channel')}.>"


def seen(channel: str, account: str, chat: str) -> str:
    """The operator answering a chat has seen the client's messages up to one (``chat`` is a :func:`chat_key`)."""
    return f"{SEEN_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}.{token(chat, 'chat')}"


def seen_channel(channel: str) -> str:
    return f"{SEEN_ROOT}.{token(channel, 'channel')}.>"


def router_alive(member: str) -> str:
    """Where the router replica ``member`` answers while it is connected (decision 027)."""
    return f"{ROUTER_ALIVE}.{token(member, 'router member')}"


def queue_place(channel: str, account: str, chat: str) -> str:
    """A waiting client's place in its line's queue (``chat`` is a :func:`chat_key`); the router tells, the gateway shows it."""
    return f"{QUEUE_ROOT}.{token(channel, 'channel')}.{token(account, 'account')}.{token(chat, 'chat')}"


def queue_place_channel(channel: str) -> str:
    return f"{QUEUE_ROOT}.{token(channel, 'channel')}.>"


def command(name: str) -> str:
    return f"{CMD_ROOT}.{token(name, 'command')}"
