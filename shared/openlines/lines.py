"""Line configuration: the TOML file ops write, validated into msgspec Structs.

Every key is documented in docs/lines.md. Unknown keys are errors (a typo must
never silently fall back to a default), and each error names the key.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from openlines import templates
from openlines.envelopes import CHANNELS
from openlines.roles import ROLES

PERMISSION_OPENLINES = "openlines"

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOLIDAY = re.compile(r"^(\d{4}-)?(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


class ConfigError(ValueError):
    """The line configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class MessageTemplate(_Strict):
    """A message template the channel approved for the account (WhatsApp), offered in the desk outside the
    customer-service window. ``text`` is its body as approved, with ``{{1}}``, ``{{2}}``... (or named
    ``{{order_id}}``) where the operator fills in the variables."""

    name: str  # as approved in WhatsApp Manager: lower-case letters, digits and _
    text: str  # the body, as the client reads it once the variables are filled in
    language: str = "en_US"  # the approved translation's code: en_US, de, pt_BR ...
    variables: list[str] = []  # what each variable is, in order, shown to the operator ("client name", "order number")
    title: str = ""  # how the desk lists it; empty = the name


class ChannelBinding(_Strict):
    channel: str
    account: str
    templates: list[MessageTemplate] = []  # WhatsApp: approved templates offered outside the 24-hour window


Mode = Literal["round_robin", "strict", "all", "crm_responsible"]
FallbackMode = Literal["round_robin", "strict", "all"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class QueueConfig(_Strict):
    mode: Mode = "round_robin"
    fallback_mode: FallbackMode = "round_robin"  # crm_responsible: when the responsible cannot take the chat
    operators: list[str] = []
    wait_seconds: int = 45  # Bitrix24 recommends 30-60
    max_chats_per_operator: int = 4  # Bitrix24 recommends 3-5
    count: Literal["open", "unanswered"] = "open"  # which chats count toward max_chats_per_operator
    skip_offline: bool = True
    reassign_on_status: Literal["unanswered", "all", "none"] = "unanswered"  # when an operator goes away/offline
    presence_grace_seconds: int = 60  # desk connection lost this long = offline
    tell_position: bool = False  # tell a waiting client their place in the queue


class HoursConfig(_Strict):
    enabled: bool = False  # off = the line is always open
    timezone: str = "UTC"
    weekly: dict[str, list[str]] = {}  # {"mon": ["09:00-13:00", "14:00-18:00"], ...}; a day not listed is closed
    days_off: list[str] = []  # weekday names closed whatever weekly says, e.g. ["sun"]
    holidays: list[str] = []  # "2026-12-31" (that date) or "12-31" (every year)
    outside: Literal["queue", "hold_until_open", "redirect"] = "queue"
    redirect_line: str = ""  # for outside = "redirect"


class AutoReplies(_Strict):
    welcome: str = ""
    welcome_each_session: bool = False  # false = only on the client's first contact ever
    outside_hours: str = ""
    queue_position: str = ""  # e.g. "You are number {position} in the queue."
    closing: str = ""
    rating_request: str = ""  # sent on close when session.rating is on


class SessionConfig(_Strict):
    auto_close_minutes: float = 0  # close after this many minutes without a message (fractions allowed); 0 = never
    rating: bool = False  # ask the client to rate the conversation on close


class SlaConfig(_Strict):
    """Response-time targets (Bitrix24's KPI): a chat past one alerts the line's supervisors."""

    first_response_seconds: int = 0  # client's first message -> first operator message; 0 = no target
    next_response_seconds: int = 0  # a client message after an operator message -> the next one; 0 = no target
    notify_emails: list[str] = []  # also alert these addresses by e-mail (the desk's OPENLINES_SLA_SMTP_* settings)


MAX_SLA_SECONDS = 7 * 24 * 3600
MAX_SLA_EMAILS = 20
# An address the alert mails go to: local@domain, nothing else (no display name, no line break).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})+")


class CrmConfig(_Strict):
    enabled: bool = False
    create: Literal["lead", "deal", "none"] = "lead"
    lead_stage: str = "NEW"
    deal_pipeline: str = "0"
    deal_stage: str = "NEW"
    identified_client: Literal["deal", "lead", "none"] = "deal"  # known contact -> this instead of a new lead
    link_repeat_contacts: bool = True  # find existing contacts by phone / e-mail
    source_ids: dict[str, str] = {}  # channel -> SOURCE_ID; defaults per channel in docs/lines.md
    responsible: str = ""  # operator id when nobody answered


# The SOURCE_ID a CRM lead or deal gets when crm.source_ids names none for its channel
# (crm-sync writes it, `lines doctor` tells it; docs/lines.md lists the same).
DEFAULT_SOURCE_IDS: dict[str, str] = {
    "telegram": "TELEGRAM",
    "vk": "VK",
    "webchat": "OPENLINE",
    "email": "EMAIL",
    "whatsapp": "WHATSAPP",
}
FALLBACK_SOURCE_ID = "OTHER"  # a channel with no default of its own


def source_id(crm: CrmConfig, channel: str) -> str:
    """The SOURCE_ID written into leads and deals of this channel."""
    return crm.source_ids.get(channel) or DEFAULT_SOURCE_IDS.get(channel, FALLBACK_SOURCE_ID)


class LineConfig(_Strict):
    id: str
    name: str
    channels: list[ChannelBinding] = []
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    hours: HoursConfig = msgspec.field(default_factory=HoursConfig)
    auto_replies: AutoReplies = msgspec.field(default_factory=AutoReplies)
    session: SessionConfig = msgspec.field(default_factory=SessionConfig)
    sla: SlaConfig = msgspec.field(default_factory=SlaConfig)
    crm: CrmConfig = msgspec.field(default_factory=CrmConfig)
    quick_answers: list[str] = []  # canned replies operators pick in the desk's reply box


MAX_QUICK_ANSWERS = 50
MAX_QUICK_ANSWER_CHARS = 4000  # the longest reply the desk sends


class OperatorConfig(_Strict):
    name: str
    password_hash: str = ""
    roles: list[str] = msgspec.field(default_factory=lambda: ["operator"])
    permissions: list[str] = msgspec.field(default_factory=lambda: [PERMISSION_OPENLINES])


class LinesFile(_Strict):
    operators: dict[str, OperatorConfig] = {}
    lines: list[LineConfig] = []


def parse(text: str, source: str = "<config>") -> LinesFile:
    """Parse and validate a lines TOML document; raise ConfigError with every problem."""
    cfg, errors = parse_all(text, source)
    if errors or cfg is None:
        raise ConfigError(errors)
    return cfg


def parse_all(text: str, source: str = "<config>") -> tuple[LinesFile | None, list[str]]:
    """Every problem of a lines TOML document at once, one per bad key, and what is left of it.

    The configuration returned holds every key that is valid (a bad value or an
    unknown key is left out, a line or operator missing a required key is left
    out), so the doctor can still look at the rest. None only when the text is
    not TOML at all.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{source}: not valid TOML: {exc}"]
    cfg, errors = convert_all(raw)
    errors += check(cfg)
    return cfg, [f"{source}: {e}" for e in errors]


def convert_all(raw: dict[str, Any]) -> tuple[LinesFile, list[str]]:
    """A parsed lines document as a LinesFile of every valid key, and one error per key left out."""
    errors: list[str] = []
    kept = _keep_valid(raw, LinesFile, "", errors)
    return msgspec.convert(kept if isinstance(kept, dict) else {}, LinesFile), errors


_DROP = object()  # a value that cannot be kept (its struct misses a required key)


def _keep_valid(raw: object, typ: Any, path: str, errors: list[str]) -> object:
    """``raw`` without what does not fit ``typ``; each thing left out is one error naming its key."""
    origin, args = get_origin(typ), get_args(typ)
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        if not isinstance(raw, dict):
            errors.append(f"{path or 'the top level'}: expected a table, got {type(raw).__name__}")
            return _DROP
        fields = {f.name: f for f in msgspec.structs.fields(typ)}
        out: dict[str, object] = {}
        for key, value in raw.items():
            at = f"{path}.{key}" if path else str(key)
            field = fields.get(key)
            if field is None:
                errors.append(f"{at}: unknown key (known here: {', '.join(fields)})")
                continue
            kept = _keep_valid(value, field.type, at, errors)
            if kept is not _DROP:
                out[key] = kept
        missing = [name for name, f in fields.items() if f.required and name not in out]
        if missing:
            errors.append(f"{path or 'the top level'}: missing required key {', '.join(missing)}; left out")
            return _DROP
        return out
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
        if not isinstance(raw, list):
            errors.append(f"{path}: expected an array of tables, got {type(raw).__name__}")
            return _DROP
        items = [_keep_valid(v, args[0], f"{path}[{i}]", errors) for i, v in enumerate(raw)]
        return [v for v in items if v is not _DROP]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], msgspec.Struct):
        if not isinstance(raw, dict):
            errors.append(f"{path}: expected a table, got {type(raw).__name__}")
            return _DROP
        pairs = {k: _keep_valid(v, args[1], f"{path}.{k}", errors) for k, v in raw.items()}
        return {k: v for k, v in pairs.items() if v is not _DROP}
    try:
        msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        problem, _, inner = str(exc).partition(" - at `$")  # inner: where inside the value, e.g. "[0]`"
        allowed = _choices(typ)
        if allowed:
            problem += f" (one of: {', '.join(map(repr, allowed))})"
        errors.append(f"{path}{inner.rstrip('`')}: {problem}")
        return _DROP
    return raw


def _choices(typ: Any) -> tuple[Any, ...]:
    """The values a Literal setting allows (also inside an Optional or a list of them)."""
    if get_origin(typ) is Literal:
        return get_args(typ)
    return tuple(v for arg in get_args(typ) for v in _choices(arg))


def load(path: str | Path) -> LinesFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    return parse(text, str(p))


def _readable(msg: str) -> str:
    # msgspec says "... - at `$.lines[0].queue`"; keep it, it names the key.
    return msg.replace("`$.", "`").replace("`$`", "the top level")


def check(cfg: LinesFile) -> list[str]:
    """Cross-field rules msgspec cannot express. Returns problems, empty if none."""
    errors: list[str] = []
    for op_id, op in cfg.operators.items():
        if not _ID.match(op_id):
            errors.append(f"operators.{op_id}: id must be 1-64 characters of A-Z a-z 0-9 _ -")
        for role in op.roles:
            if role not in ROLES:
                errors.append(f"operators.{op_id}.roles: unknown role {role!r} (one of {', '.join(ROLES)})")
    seen_lines: set[str] = set()
    bound: dict[tuple[str, str], str] = {}
    for i, line in enumerate(cfg.lines):
        where = f"lines[{i}] ({line.id})"
        if not _ID.match(line.id):
            errors.append(f"{where}.id: must be 1-64 characters of A-Z a-z 0-9 _ -")
        if line.id in seen_lines:
            errors.append(f"{where}.id: line {line.id!r} is declared twice")
        seen_lines.add(line.id)
        for j, ch in enumerate(line.channels):
            if ch.channel not in CHANNELS:
                errors.append(f"{where}.channels[{j}].channel: unknown channel {ch.channel!r} (one of {', '.join(CHANNELS)})")
            if not _ID.match(ch.account):
                errors.append(f"{where}.channels[{j}].account: must be 1-64 characters of A-Z a-z 0-9 _ -")
            other = bound.get((ch.channel, ch.account))
            if other is not None and other != line.id:
                errors.append(
                    f"{where}.channels[{j}]: {ch.channel}/{ch.account} already feeds line {other!r};"
                    " a channel account feeds one line"
                )
            bound[(ch.channel, ch.account)] = line.id
            errors += _check_templates(f"{where}.channels[{j}]", ch)
        q = line.queue
        if q.wait_seconds < 1 or q.wait_seconds > 3600:
            errors.append(f"{where}.queue.wait_seconds: {q.wait_seconds} is outside 1-3600")
        if q.max_chats_per_operator < 1:
            errors.append(f"{where}.queue.max_chats_per_operator: must be at least 1")
        if q.presence_grace_seconds < 0:
            errors.append(f"{where}.queue.presence_grace_seconds: must not be negative")
        errors += _check_hours(where, line.hours)
        if line.session.auto_close_minutes < 0:
            errors.append(f"{where}.session.auto_close_minutes: must not be negative (0 = never)")
        for key in ("first_response_seconds", "next_response_seconds"):
            value = getattr(line.sla, key)
            if value < 0 or value > MAX_SLA_SECONDS:
                errors.append(f"{where}.sla.{key}: {value} is outside 0-{MAX_SLA_SECONDS} (0 = no target)")
        for address in line.sla.notify_emails:
            if not _EMAIL.fullmatch(address):
                errors.append(f"{where}.sla.notify_emails: {address!r} is not an e-mail address (name@example.com)")
        if len(line.sla.notify_emails) > MAX_SLA_EMAILS:
            errors.append(f"{where}.sla.notify_emails: {len(line.sla.notify_emails)} addresses; at most {MAX_SLA_EMAILS}")
        errors += _check_quick_answers(where, line.quick_answers)
        for ch_name in line.crm.source_ids:
            if ch_name not in CHANNELS:
                errors.append(f"{where}.crm.source_ids: unknown channel {ch_name!r}")
        for op_id in q.operators:
            member = cfg.operators.get(op_id)
            if member is None:
                errors.append(
                    f"{where}.queue.operators: {op_id!r} is not declared under [operators] "
                    "(create the operator first: on the admin Operators page, or in the lines file)"
                )
            elif PERMISSION_OPENLINES not in member.permissions:
                errors.append(
                    f"{where}.queue.operators: {op_id!r} lacks the {PERMISSION_OPENLINES!r} permission and would never see a chat"
                )
    line_ids = {line.id for line in cfg.lines}
    for i, line in enumerate(cfg.lines):
        h = line.hours
        if h.enabled and h.outside == "redirect":
            if not h.redirect_line:
                errors.append(f'lines[{i}] ({line.id}).hours.redirect_line: required when outside = "redirect"')
            elif h.redirect_line not in line_ids:
                errors.append(f"lines[{i}] ({line.id}).hours.redirect_line: no line {h.redirect_line!r}")
            elif h.redirect_line == line.id:
                errors.append(f"lines[{i}] ({line.id}).hours.redirect_line: a line cannot redirect to itself")
    return errors


def _check_templates(where: str, ch: ChannelBinding) -> list[str]:
    if not ch.templates:
        return []
    if ch.channel not in templates.CHANNELS_WITH_TEMPLATES:
        return [f"{where}.templates: message templates are for {', '.join(templates.CHANNELS_WITH_TEMPLATES)} accounts only"]
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for k, tpl in enumerate(ch.templates):
        at = f"{where}.templates[{k}]"
        errors += [f"{at}: {problem}" for problem in templates.problems(tpl)]
        if (tpl.name, tpl.language) in seen:
            errors.append(f"{at}: template {tpl.name!r} ({tpl.language}) is listed twice")
        seen.add((tpl.name, tpl.language))
    if len(ch.templates) > templates.MAX_TEMPLATES:
        errors.append(f"{where}.templates: {len(ch.templates)} templates; at most {templates.MAX_TEMPLATES}")
    return errors


def _check_quick_answers(where: str, answers: list[str]) -> list[str]:
    errors: list[str] = []
    if len(answers) > MAX_QUICK_ANSWERS:
        errors.append(f"{where}.quick_answers: {len(answers)} answers; at most {MAX_QUICK_ANSWERS}")
    for k, text in enumerate(answers):
        if not text.strip():
            errors.append(f"{where}.quick_answers[{k}]: must not be empty")
        elif len(text) > MAX_QUICK_ANSWER_CHARS:
            errors.append(f"{where}.quick_answers[{k}]: {len(text)} characters; at most {MAX_QUICK_ANSWER_CHARS}")
    if len(set(answers)) != len(answers):
        errors.append(f"{where}.quick_answers: the same answer is listed twice")
    return errors


def parse_span(span: str) -> tuple[int, int]:
    """ "09:00-18:00" -> (540, 1080) minutes of the day; "22:00-24:00" allowed. ValueError if malformed."""
    try:
        start, end = span.split("-")
        a = _minutes(start)
        b = _minutes(end)
    except ValueError:
        raise ValueError(f"{span!r} is not HH:MM-HH:MM") from None
    if not a < b:
        raise ValueError(f"{span!r} ends before it starts (split a span that crosses midnight in two)")
    return a, b


def _minutes(hhmm: str) -> int:
    hh, mm = hhmm.strip().split(":")
    h, m = int(hh), int(mm)
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m != 0):
        raise ValueError(hhmm)
    return h * 60 + m


def _check_hours(where: str, h: HoursConfig) -> list[str]:
    errors: list[str] = []
    try:
        ZoneInfo(h.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" names a directory of the zone database
        errors.append(f"{where}.hours.timezone: unknown time zone {h.timezone!r} (use an IANA name like Europe/Riga)")
    for day, spans in h.weekly.items():
        if day not in WEEKDAYS:
            errors.append(f"{where}.hours.weekly: unknown day {day!r} (one of {', '.join(WEEKDAYS)})")
        for span in spans:
            try:
                parse_span(span)
            except ValueError as exc:
                errors.append(f"{where}.hours.weekly.{day}: {exc}")
    for day in h.days_off:
        if day not in WEEKDAYS:
            errors.append(f"{where}.hours.days_off: unknown day {day!r} (one of {', '.join(WEEKDAYS)})")
    for hol in h.holidays:
        try:
            if not _HOLIDAY.match(hol):
                raise ValueError
            date.fromisoformat(hol if len(hol) == 10 else f"2000-{hol}")  # 2000: a leap year, so 02-29 is fine
        except ValueError:
            errors.append(f"{where}.hours.holidays: {hol!r} is not a date as YYYY-MM-DD or MM-DD")
    return errors


def binding_index(lines: list[LineConfig]) -> dict[tuple[str, str], LineConfig]:
    """(channel, account) -> the line it feeds."""
    return {(ch.channel, ch.account): line for line in lines for ch in line.channels}
