"""``openlines lines doctor``: the setup mistakes a valid line configuration can still hold.

Validation (``lines.check``) refuses what cannot work at all. The doctor looks for what
works badly: Bitrix24's "common setup issues" of Open Lines (operator without the
permission, CRM on but creation off, no wait time, no reassignment on status change,
repeat-contact linking off) and every value outside the recommended table, each with a
concrete fix. ``diagnose`` is pure and never raises on a config that skipped ``check``
(``msgspec.convert`` only), so it also reports the few validation errors that would hide
a setup problem. Every check is listed in docs/lines.md, section "Doctor".
"""

from __future__ import annotations

import functools
import string
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from openlines.lines import DEFAULT_SOURCE_IDS, PERMISSION_OPENLINES, WEEKDAYS, LineConfig, LinesFile, OperatorConfig
from openlines.roles import DESK_ROLES

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

# Recommended ranges (Bitrix24's Open Lines guide); docs/lines.md shows the same table.
WAIT_SECONDS = (30, 60)
MAX_CHATS = (3, 5)
MAX_PRESENCE_GRACE_SECONDS = 300
MIN_AUTO_CLOSE_MINUTES = 10


TEMPLATE_FIELDS = frozenset({"client_name", "line_name"})
QUEUE_POSITION_FIELDS = TEMPLATE_FIELDS | {"position"}


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    severity: Severity
    code: str  # stable check name, e.g. "queue-wait-seconds"; listed in docs/lines.md
    line: str  # line id, "" for a finding about the file as a whole (operators)
    key: str  # e.g. "lines[0].queue.wait_seconds" or "operators.boris.permissions"
    problem: str
    fix: str


def diagnose(cfg: LinesFile, accounts: dict[str, set[str]] | None = None) -> list[Finding]:
    """Every finding for ``cfg``: line by line in file order, then file-wide ones.

    ``accounts``: the channel accounts the gateways are configured with (channel -> account ids),
    when known; an account no line is bound to is an error (its clients' messages reach nobody).
    """
    findings: list[Finding] = []
    by_id = {line.id: line for line in cfg.lines}
    for i, line in enumerate(cfg.lines):
        at = f"lines[{i}]"
        findings += _channels(at, line)
        findings += _queue_members(cfg, at, line)
        findings += _nobody_answers(cfg, at, line)
        findings += _queue_values(at, line)
        findings += _hours(at, line, by_id)
        findings += _auto_replies(at, line)
        findings += _session(at, line)
        findings += _sla(at, line)
        findings += _crm(cfg, at, line)
    findings += _operators(cfg)
    findings += _unbound_accounts(cfg, accounts or {})
    return findings


def _can_answer(op: OperatorConfig) -> str:
    """Why this operator can never answer a chat, or "" if they can."""
    if not op.password_hash or not op.password_hash.startswith("$argon2"):
        return "has no usable password_hash (cannot sign in)"
    if PERMISSION_OPENLINES not in op.permissions:
        return f"lacks the {PERMISSION_OPENLINES!r} permission"
    if not any(role in DESK_ROLES for role in op.roles):
        return "has neither the operator nor the supervisor role (an admin-only account)"
    return ""


def _nobody_answers(cfg: LinesFile, at: str, line: LineConfig) -> list[Finding]:
    members = [op_id for op_id in dict.fromkeys(line.queue.operators) if op_id in cfg.operators]
    if not members:
        return []  # an empty queue or unknown members are reported as such
    why = {op_id: _can_answer(cfg.operators[op_id]) for op_id in members}
    if any(not reason for reason in why.values()):
        return []
    return [
        _f(
            "error",
            "line-nobody-can-answer",
            line.id,
            f"{at}.queue.operators",
            "no operator of this queue can answer a chat: "
            + "; ".join(f"{op_id!r} {reason}" for op_id, reason in why.items())
            + " - every client of this line waits for ever",
            "give at least one queue member a password_hash (openlines hash-password), the "
            f"{PERMISSION_OPENLINES!r} permission and the operator role",
        )
    ]


def _unbound_accounts(cfg: LinesFile, accounts: dict[str, set[str]]) -> list[Finding]:
    bound = {(ch.channel, ch.account) for line in cfg.lines for ch in line.channels}
    out: list[Finding] = []
    for channel in sorted(accounts):
        for account in sorted(accounts[channel]):
            if (channel, account) not in bound:
                out.append(
                    _f(
                        "error",
                        "channel-account-unbound",
                        "",
                        f"{channel}/{account}",
                        f"the {channel} account {account!r} is configured in the gateway but no line is bound to it:"
                        " its clients' messages reach nobody",
                        f'add {{ channel = "{channel}", account = "{account}" }} to a line\'s channels,'
                        " or remove the account from the gateway's settings",
                    )
                )
    return out


# Where each gateway's accounts are configured (inline JSON, or a .json/.toml file path), and under which key.
ACCOUNT_SETTINGS = {
    "telegram": ("OPENLINES_TELEGRAM_BOTS", "bots"),
    "vk": ("OPENLINES_VK_GROUPS", "groups"),
    "email": ("OPENLINES_EMAIL_MAILBOXES", "mailboxes"),
    "whatsapp": ("OPENLINES_WHATSAPP_ACCOUNTS", "numbers"),
}


def accounts_from_env(env: Mapping[str, str]) -> dict[str, set[str]]:
    """The channel accounts the gateways' settings in ``env`` name (only the account ids are read).

    The webchat gateway's ``OPENLINES_ACCOUNTS`` (comma-separated) counts too. A setting that
    cannot be read is skipped: the gateway itself refuses it at start-up with the reason.
    """
    out: dict[str, set[str]] = {}
    for channel, (variable, key) in ACCOUNT_SETTINGS.items():
        value = env.get(variable, "").strip()
        if not value:
            continue
        try:
            if value[:1] in ("[", "{"):
                data: Any = msgspec.json.decode(value)
            elif value.endswith(".toml"):
                data = tomllib.loads(Path(value).read_text(encoding="utf-8"))
            else:
                data = msgspec.json.decode(Path(value).read_bytes())
        except (OSError, ValueError, msgspec.DecodeError):
            continue
        entries = data.get(key, []) if isinstance(data, dict) else data
        names = {e["account"] for e in entries if isinstance(e, dict) and isinstance(e.get("account"), str)}
        if names:
            out[channel] = names
    webchat = {a.strip() for a in env.get("OPENLINES_ACCOUNTS", "").split(",") if a.strip()}
    if webchat:
        out["webchat"] = webchat
    return out


def invalid_findings(errors: list[str], source: str) -> list[Finding]:
    """Validation errors as findings (``--json``): one per bad key."""
    out = []
    for err in errors:
        text = err.removeprefix(f"{source}: ")
        key, _, problem = text.partition(": ")
        out.append(_f("error", "invalid", "", key, problem or text, "correct the key as the problem says (docs/lines.md)"))
    return out


def count(findings: Iterable[Finding]) -> dict[Severity, int]:
    totals: dict[Severity, int] = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        totals[f.severity] += 1
    return totals


def _f(severity: Severity, code: str, line: str, key: str, problem: str, fix: str) -> Finding:
    return Finding(severity=severity, code=code, line=line, key=key, problem=problem, fix=fix)


def _channels(at: str, line: LineConfig) -> list[Finding]:
    if line.channels:
        return _whatsapp_templates(at, line)
    return [
        _f(
            "warning",
            "line-no-channels",
            line.id,
            f"{at}.channels",
            "no channel account feeds this line, so no client message ever reaches it",
            'bind at least one channel account: channels = [{ channel = "webchat", account = "demo" }]',
        )
    ]


def _whatsapp_templates(at: str, line: LineConfig) -> list[Finding]:
    out: list[Finding] = []
    for j, ch in enumerate(line.channels):
        if ch.channel == "whatsapp" and not ch.templates:
            out.append(
                _f(
                    "warning",
                    "whatsapp-no-templates",
                    line.id,
                    f"{at}.channels[{j}].templates",
                    f"the WhatsApp account {ch.account!r} has no message templates: once a client's 24-hour window"
                    " closes (no message from them for a day), operators cannot write to them at all",
                    "declare the account's approved templates: [[lines.channels.templates]] with name, language and"
                    " the body text as approved in WhatsApp Manager (docs/channels/whatsapp.md)",
                )
            )
    return out


def _queue_members(cfg: LinesFile, at: str, line: LineConfig) -> list[Finding]:
    out: list[Finding] = []
    ops = line.queue.operators
    if not ops:
        out.append(
            _f(
                "error",
                "queue-empty",
                line.id,
                f"{at}.queue.operators",
                "the queue has no operators: no chat of this line is ever offered to anyone",
                'list the operators who answer this line: operators = ["anna", "boris"]',
            )
        )
        return out
    for op_id in ops:
        member = cfg.operators.get(op_id)
        if member is None:
            out.append(
                _f(
                    "error",
                    "queue-operator-unknown",
                    line.id,
                    f"{at}.queue.operators",
                    f"{op_id!r} is not declared under [operators], so nobody can log in as this queue member",
                    f"create the operator {op_id!r} (admin Operators page, or [operators.{op_id}] with a name and "
                    f"password_hash in the lines file), or remove {op_id!r} from the queue",
                )
            )
        elif PERMISSION_OPENLINES not in member.permissions:
            out.append(
                _f(
                    "error",
                    "operator-no-permission",
                    line.id,
                    f"operators.{op_id}.permissions",
                    f"{op_id!r} is in the queue of line {line.id!r} but lacks the {PERMISSION_OPENLINES!r} permission"
                    " and would never see a chat",
                    f'add "{PERMISSION_OPENLINES}" to operators.{op_id}.permissions,'
                    f" or remove {op_id!r} from {at}.queue.operators",
                )
            )
        elif not any(role in DESK_ROLES for role in member.roles):
            out.append(
                _f(
                    "warning",
                    "operator-no-desk-role",
                    line.id,
                    f"operators.{op_id}.roles",
                    f"{op_id!r} is in the queue of line {line.id!r} but has neither the operator nor the supervisor role:"
                    " the desk refuses them, so they never answer a chat",
                    f'add "operator" to operators.{op_id}.roles, or remove {op_id!r} from {at}.queue.operators',
                )
            )
    if len(set(ops)) == 1:
        out.append(
            _f(
                "warning",
                "queue-one-operator",
                line.id,
                f"{at}.queue.operators",
                f"only {ops[0]!r} answers this line: when they are busy, away or do not accept,"
                " there is no one to pass the chat to",
                "add at least one more operator to the queue",
            )
        )
    return out


def _queue_values(at: str, line: LineConfig) -> list[Finding]:
    out: list[Finding] = []
    q = line.queue
    key = f"{at}.queue"
    lo, hi = WAIT_SECONDS
    if q.wait_seconds <= 0:
        out.append(
            _f(
                "error",
                "queue-wait-seconds",
                line.id,
                f"{key}.wait_seconds",
                "no wait time: an offered chat never passes on to the next operator",
                f"set wait_seconds = 45 (recommended {lo}-{hi})",
            )
        )
    elif not lo <= q.wait_seconds <= hi:
        why = (
            "operators barely have time to accept before the chat moves on"
            if q.wait_seconds < lo
            else "clients wait that long on an operator who does not answer before the chat passes on"
        )
        out.append(
            _f(
                "warning",
                "queue-wait-seconds",
                line.id,
                f"{key}.wait_seconds",
                f"wait_seconds = {q.wait_seconds} is outside the recommended {lo}-{hi}: {why}",
                f"set wait_seconds between {lo} and {hi} (default 45)",
            )
        )
    lo, hi = MAX_CHATS
    if q.max_chats_per_operator < 1:
        out.append(
            _f(
                "error",
                "queue-max-chats",
                line.id,
                f"{key}.max_chats_per_operator",
                f"max_chats_per_operator = {q.max_chats_per_operator}: no operator can ever take a chat",
                f"set max_chats_per_operator = 4 (recommended {lo}-{hi})",
            )
        )
    elif not lo <= q.max_chats_per_operator <= hi:
        why = (
            "operators sit idle while clients wait in the queue"
            if q.max_chats_per_operator < lo
            else "operators juggle too many chats and answers get slow"
        )
        out.append(
            _f(
                "warning",
                "queue-max-chats",
                line.id,
                f"{key}.max_chats_per_operator",
                f"max_chats_per_operator = {q.max_chats_per_operator} is outside the recommended {lo}-{hi}: {why}",
                f"set max_chats_per_operator between {lo} and {hi} (default 4)",
            )
        )
    if q.reassign_on_status == "none":
        out.append(
            _f(
                "warning",
                "queue-no-reassign",
                line.id,
                f"{key}.reassign_on_status",
                'reassign_on_status = "none": chats hang on an operator who goes away or offline',
                'set reassign_on_status = "unanswered" (or "all" to move their open chats too)',
            )
        )
    if not q.skip_offline:
        out.append(
            _f(
                "warning",
                "queue-offline-not-skipped",
                line.id,
                f"{key}.skip_offline",
                "skip_offline = false: chats are offered to operators who are not online, and clients wait out"
                " wait_seconds for each of them",
                "set skip_offline = true",
            )
        )
    if q.presence_grace_seconds < 0:
        out.append(
            _f(
                "error",
                "queue-presence-grace",
                line.id,
                f"{key}.presence_grace_seconds",
                f"presence_grace_seconds = {q.presence_grace_seconds} is negative",
                "set presence_grace_seconds = 60",
            )
        )
    elif q.presence_grace_seconds > MAX_PRESENCE_GRACE_SECONDS:
        out.append(
            _f(
                "warning",
                "queue-presence-grace",
                line.id,
                f"{key}.presence_grace_seconds",
                f"presence_grace_seconds = {q.presence_grace_seconds}: an operator whose desk is gone still counts as"
                f" online for over {MAX_PRESENCE_GRACE_SECONDS // 60} minutes and keeps receiving chats",
                f"set presence_grace_seconds to {MAX_PRESENCE_GRACE_SECONDS} or less (default 60)",
            )
        )
    if q.mode == "crm_responsible" and not line.crm.enabled:
        out.append(
            _f(
                "warning",
                "queue-crm-responsible-without-crm",
                line.id,
                f"{key}.mode",
                'mode = "crm_responsible" but crm.enabled = false: no responsible manager is ever known,'
                f" so every chat goes by fallback_mode = {q.fallback_mode!r}",
                'enable [lines.crm], or set mode = "round_robin"',
            )
        )
    return out


def _open_days(line: LineConfig) -> list[str]:
    h = line.hours
    return [d for d in WEEKDAYS if h.weekly.get(d) and d not in h.days_off]


def _hours(at: str, line: LineConfig, by_id: dict[str, LineConfig]) -> list[Finding]:
    out: list[Finding] = []
    h = line.hours
    key = f"{at}.hours"
    text = line.auto_replies.outside_hours
    if not h.enabled:
        if text:
            out.append(
                _f(
                    "warning",
                    "hours-text-but-disabled",
                    line.id,
                    f"{at}.auto_replies.outside_hours",
                    "an outside_hours text is set but hours are disabled (the line is always open): the text is never sent",
                    "set hours.enabled = true with a weekly schedule, or remove auto_replies.outside_hours",
                )
            )
        if h.weekly or h.days_off or h.holidays:
            out.append(
                _f(
                    "warning",
                    "hours-schedule-but-disabled",
                    line.id,
                    f"{key}.enabled",
                    "a schedule (weekly, days_off or holidays) is set but hours.enabled = false: it is ignored and"
                    " the line is always open",
                    "set hours.enabled = true, or remove the schedule",
                )
            )
        if h.outside == "redirect" or h.redirect_line:
            out.append(
                _f(
                    "info",
                    "hours-redirect-but-disabled",
                    line.id,
                    f"{key}.redirect_line",
                    "a redirect is configured but hours are disabled: nothing is ever redirected",
                    "set hours.enabled = true, or remove hours.outside / hours.redirect_line",
                )
            )
        return out
    if not text:
        out.append(
            _f(
                "warning",
                "hours-no-outside-text",
                line.id,
                f"{at}.auto_replies.outside_hours",
                "hours are enabled but there is no outside_hours text: clients who write while the line is closed get silence",
                'set auto_replies.outside_hours = "We are closed now; we answer from 9:00 on weekdays."',
            )
        )
    if not any(h.weekly.values()):
        out.append(
            _f(
                "error",
                "hours-never-open",
                line.id,
                f"{key}.weekly",
                "hours are enabled but no weekly span is set: the line never opens",
                'add spans, e.g. weekly = { mon = ["09:00-18:00"], tue = ["09:00-18:00"] }, or set hours.enabled = false',
            )
        )
    elif not _open_days(line):
        out.append(
            _f(
                "error",
                "hours-never-open",
                line.id,
                f"{key}.days_off",
                "every day with weekly spans is also in days_off: the line never opens",
                "remove the working days from hours.days_off",
            )
        )
    if h.timezone == "UTC":
        out.append(
            _f(
                "info",
                "hours-timezone-utc",
                line.id,
                f"{key}.timezone",
                "hours are read in UTC (the default time zone)",
                'if your team is not on UTC, set timezone to its IANA name, e.g. timezone = "Europe/Riga"',
            )
        )
    if h.outside == "redirect":
        target = by_id.get(h.redirect_line)
        if not h.redirect_line or target is None or target is line:
            what = (
                "no redirect_line is set"
                if not h.redirect_line
                else "the line redirects to itself"
                if target is line
                else f"there is no line {h.redirect_line!r}"
            )
            out.append(
                _f(
                    "error",
                    "hours-redirect-target",
                    line.id,
                    f"{key}.redirect_line",
                    f'outside = "redirect" but {what}: out-of-hours clients go nowhere',
                    "set redirect_line to the id of another line that is open at those times",
                )
            )
        elif target.hours.enabled:
            out.append(
                _f(
                    "warning",
                    "hours-redirect-chain",
                    line.id,
                    f"{key}.redirect_line",
                    f"out-of-hours chats go to line {target.id!r}, which has business hours of its own: when it is"
                    " closed too, the client is redirected again or left waiting",
                    f"redirect to a line without hours (always open), or set hours.enabled = false on line {target.id!r}",
                )
            )
    elif h.redirect_line:
        out.append(
            _f(
                "info",
                "hours-redirect-unused",
                line.id,
                f"{key}.redirect_line",
                f"redirect_line is set but outside = {h.outside!r}: it is ignored",
                'set outside = "redirect", or remove redirect_line',
            )
        )
    if h.outside == "hold_until_open" and not text and not line.auto_replies.welcome:
        out.append(
            _f(
                "warning",
                "hours-hold-without-text",
                line.id,
                f"{key}.outside",
                'outside = "hold_until_open" with neither a welcome nor an outside_hours text: the client is held'
                " until opening without a word",
                "set auto_replies.outside_hours to tell the client when the line opens",
            )
        )
    return out


def _template_problem(template: str, allowed: frozenset[str]) -> str:
    """Why a template will not render as meant, "" when it will."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"it has a stray brace ({exc}); it is sent exactly as written"
    unknown = sorted({name for name in fields if name not in allowed})
    if unknown:
        listed = ", ".join("{" + name + "}" for name in unknown)
        return f"{listed} is not a template field here; it is sent as written"
    return ""


def _auto_replies(at: str, line: LineConfig) -> list[Finding]:
    out: list[Finding] = []
    r = line.auto_replies
    key = f"{at}.auto_replies"
    if not r.welcome:
        out.append(
            _f(
                "warning",
                "auto-reply-no-welcome",
                line.id,
                f"{key}.welcome",
                "no welcome text: a client's first message gets no answer at once",
                'set auto_replies.welcome = "Hello {client_name}! You have reached {line_name};'
                ' an operator will answer shortly."',
            )
        )
    if line.queue.tell_position and not r.queue_position:
        out.append(
            _f(
                "warning",
                "auto-reply-no-queue-position",
                line.id,
                f"{key}.queue_position",
                "queue.tell_position = true but there is no queue_position text: waiting clients are never told their place",
                'set auto_replies.queue_position = "You are number {position} in the queue."',
            )
        )
    elif r.queue_position and not line.queue.tell_position:
        out.append(
            _f(
                "info",
                "auto-reply-queue-position-unused",
                line.id,
                f"{key}.queue_position",
                "a queue_position text is set but queue.tell_position = false: it is never sent",
                "set queue.tell_position = true, or remove auto_replies.queue_position",
            )
        )
    if line.session.rating and not r.rating_request:
        out.append(
            _f(
                "warning",
                "auto-reply-no-rating-request",
                line.id,
                f"{key}.rating_request",
                "session.rating = true but there is no rating_request text: clients are never asked to rate",
                'set auto_replies.rating_request = "Please rate this conversation from 1 to 5."',
            )
        )
    elif r.rating_request and not line.session.rating:
        out.append(
            _f(
                "info",
                "auto-reply-rating-request-unused",
                line.id,
                f"{key}.rating_request",
                "a rating_request text is set but session.rating = false: it is never sent",
                "set session.rating = true, or remove auto_replies.rating_request",
            )
        )
    texts = {
        "welcome": (r.welcome, TEMPLATE_FIELDS),
        "outside_hours": (r.outside_hours, TEMPLATE_FIELDS),
        "queue_position": (r.queue_position, QUEUE_POSITION_FIELDS),
        "closing": (r.closing, TEMPLATE_FIELDS),
        "rating_request": (r.rating_request, TEMPLATE_FIELDS),
    }
    for name, (template, allowed) in texts.items():
        why = _template_problem(template, allowed)
        if why:
            fields = ", ".join("{" + f + "}" for f in sorted(allowed))
            out.append(
                _f(
                    "warning",
                    "auto-reply-template",
                    line.id,
                    f"{key}.{name}",
                    f"the {name} text will not render as meant: {why}",
                    f"use only {fields} here, and write a literal brace as {{{{ or }}}}",
                )
            )
    return out


def _session(at: str, line: LineConfig) -> list[Finding]:
    minutes = line.session.auto_close_minutes
    key = f"{at}.session.auto_close_minutes"
    if minutes < 0:
        return [
            _f(
                "error",
                "session-auto-close",
                line.id,
                key,
                f"auto_close_minutes = {minutes} is negative",
                "set auto_close_minutes to 0 (never) or a number of idle minutes, e.g. 1440",
            )
        ]
    if minutes == 0:
        return [
            _f(
                "info",
                "session-never-closes",
                line.id,
                key,
                "auto_close_minutes = 0: sessions never close by themselves; an operator must close each one",
                "set auto_close_minutes to the idle time after which a conversation is over, e.g. 1440 (one day)",
            )
        ]
    if minutes < MIN_AUTO_CLOSE_MINUTES:
        return [
            _f(
                "warning",
                "session-auto-close",
                line.id,
                key,
                f"auto_close_minutes = {minutes}: a session closes while the client is still typing or the operator"
                " is looking something up, and the next message opens a new session",
                f"set auto_close_minutes to {MIN_AUTO_CLOSE_MINUTES} or more",
            )
        ]
    return []


def _sla(at: str, line: LineConfig) -> list[Finding]:
    first = line.sla.first_response_seconds
    wait = line.queue.wait_seconds
    if 0 < first <= wait:
        return [
            _f(
                "warning",
                "sla-first-response-short",
                line.id,
                f"{at}.sla.first_response_seconds",
                f"first_response_seconds = {first} is not longer than queue.wait_seconds = {wait}: every chat the first"
                " operator lets pass breaches the target before the next operator is even offered it",
                f"set first_response_seconds above {wait} (e.g. {max(2 * wait, 60)}), or shorten queue.wait_seconds",
            )
        ]
    return []


def _crm(cfg: LinesFile, at: str, line: LineConfig) -> list[Finding]:
    out: list[Finding] = []
    c = line.crm
    key = f"{at}.crm"
    if not c.enabled:
        return out
    if c.create == "none":
        out.append(
            _f(
                "warning",
                "crm-create-none",
                line.id,
                f"{key}.create",
                'CRM is enabled but create = "none": leads will not be created automatically',
                'set create = "lead" (or "deal"), or crm.enabled = false if the CRM should not be used',
            )
        )
    if not c.link_repeat_contacts:
        out.append(
            _f(
                "warning",
                "crm-no-repeat-linking",
                line.id,
                f"{key}.link_repeat_contacts",
                "link_repeat_contacts = false: every repeat contact creates a duplicate contact and lead",
                "set link_repeat_contacts = true",
            )
        )
    bound = list(dict.fromkeys(ch.channel for ch in line.channels))
    for channel in bound:
        if channel in c.source_ids:
            continue
        default = DEFAULT_SOURCE_IDS.get(channel)
        if default is None:
            continue  # an unknown channel is a validation error, reported there
        out.append(
            _f(
                "info",
                "crm-default-source-id",
                line.id,
                f"{key}.source_ids",
                f"no explicit SOURCE_ID for channel {channel!r}: leads from it get SOURCE_ID = {default!r}",
                f'set it explicitly, e.g. source_ids = {{ {channel} = "{default}" }}, using a source that exists in'
                " your CRM (crm.status.list, ENTITY_ID = SOURCE)",
            )
        )
    for channel in c.source_ids:
        if channel not in bound:
            out.append(
                _f(
                    "info",
                    "crm-source-id-unused",
                    line.id,
                    f"{key}.source_ids.{channel}",
                    f"a SOURCE_ID is set for channel {channel!r} but no {channel} account feeds this line",
                    f"bind a {channel} account to the line, or remove source_ids.{channel}",
                )
            )
    if c.responsible and c.responsible not in cfg.operators:
        out.append(
            _f(
                "warning",
                "crm-responsible-unknown",
                line.id,
                f"{key}.responsible",
                f"responsible = {c.responsible!r} is not declared under [operators]",
                "set responsible to a declared operator id, or remove it",
            )
        )
    return out


# Passwords of the demo operators and the first ones anybody tries: an account with one is open to all.
KNOWN_PASSWORDS = ("demo", "admin", "password", "openlines", "operator", "123456")


@functools.lru_cache(maxsize=1024)
def known_password(password_hash: str) -> str | None:
    """The published password ``password_hash`` verifies, or None (argon2; each hash checked once per process)."""
    if not password_hash.startswith("$argon2"):
        return None
    hasher = PasswordHasher()
    for password in KNOWN_PASSWORDS:
        try:
            if hasher.verify(password_hash, password):
                return password
        except VerificationError:
            continue
        except InvalidHashError:
            return None
    return None


def _operators(cfg: LinesFile) -> list[Finding]:
    out: list[Finding] = []
    queued = {op_id for line in cfg.lines for op_id in line.queue.operators}
    for op_id, op in cfg.operators.items():
        key = f"operators.{op_id}"
        if not op.password_hash:
            out.append(
                _f(
                    "warning",
                    "operator-no-password",
                    "",
                    f"{key}.password_hash",
                    f"{op_id!r} has no password_hash and cannot log in to the desk",
                    f"run `openlines hash-password` and set operators.{op_id}.password_hash to its output",
                )
            )
        elif known_password(op.password_hash):
            out.append(
                _f(
                    "error",
                    "operator-demo-password",
                    "",
                    f"{key}.password_hash",
                    f"{op_id!r} signs in with a password published with openlines ({known_password(op.password_hash)!r}): "
                    "anyone can sign in as them",
                    f"run `openlines hash-password` with a password of their own and set operators.{op_id}.password_hash "
                    "(demo logins belong on `make dev` only)",
                )
            )
        elif not op.password_hash.startswith("$argon2"):
            out.append(
                _f(
                    "warning",
                    "operator-password-not-hashed",
                    "",
                    f"{key}.password_hash",
                    f"the password_hash of {op_id!r} is not an argon2 hash (a plain password?): login always fails",
                    f"run `openlines hash-password` and set operators.{op_id}.password_hash to its output",
                )
            )
        if PERMISSION_OPENLINES in op.permissions and op_id not in queued:
            out.append(
                _f(
                    "info",
                    "operator-in-no-queue",
                    "",
                    f"{key}",
                    f"{op_id!r} holds the {PERMISSION_OPENLINES!r} permission but is in no line's queue: they see no chats",
                    "add them to a line's queue.operators, or drop the permission if they should not answer clients",
                )
            )
    return out
