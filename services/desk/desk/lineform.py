"""One line's settings as a form: rendered from the line's own types, read back into a LineConfig.

Every key of ``openlines.lines.LineConfig`` gets a field without being listed here: a text box
for text, a number box for numbers, a check box for yes/no, a list for a fixed set of values.
Only the keys that read better another way are named in ``_SPECIAL`` (operators picked from a
list, business hours as a weekly grid, auto-replies with a preview). A key added to the
configuration later shows up in the form by itself.

Field names are the TOML paths (``f.queue.wait_seconds``). The form's values are turned into
the same nested document a lines file holds and checked by the same code as a file
(``openlines.lines.convert_all`` and ``check``), so the form cannot accept what a file would not.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping
from functools import cache
from html import escape
from typing import Any, Literal, get_args, get_origin

import msgspec

from openlines.envelopes import CHANNELS
from openlines.lines import WEEKDAYS, AutoReplies, LineConfig, LinesFile, check, convert_all

PREFIX = "f."
_BOOL_OFF = "false"  # a hidden field before each check box: an unticked box sends nothing


class FormValues:
    """What a submitted form holds: ``getall(name, default)`` as aiohttp's MultiDict has it."""

    def __init__(self, getall: Callable[[str, list[Any]], list[Any]]) -> None:
        self._getall = getall

    def all(self, name: str) -> list[str]:
        return [str(v) for v in self._getall(PREFIX + name, [])]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        return values[-1] if values else None


# -- reading the form -----------------------------------------------------------------------------


def read(form: FormValues, base: LineConfig | None) -> tuple[dict[str, Any], list[str]]:
    """The line as a lines-file table (keys as in TOML) and the problems found reading it."""
    errors: list[str] = []
    doc = _read_struct(LineConfig, "", form, errors)
    if base is not None:
        doc["id"] = base.id  # a line's id is its key: renaming is a new line (TOML editor)
        doc["quick_answers"] = list(base.quick_answers)  # kept on their own page
    return doc, errors


def _read_struct(typ: Any, path: str, form: FormValues, errors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(typ):
        at = f"{path}.{field.name}" if path else field.name
        special = _SPECIAL.get(at)
        if special is not None:
            value = special.read(at, form, errors)
        elif _is_struct(field.type):
            value = _read_struct(field.type, at, form, errors)
        else:
            value = _read_plain(field.type, at, form, errors)
        if value is not None:
            out[field.name] = value
    return out


def _read_plain(typ: Any, at: str, form: FormValues, errors: list[str]) -> Any:
    raw = form.one(at)
    if typ is bool:
        return raw == "true"
    if raw is None:
        return None  # not in the form: the default
    text = raw.strip()
    if typ is int:
        try:
            return int(text)
        except ValueError:
            errors.append(f"{at}: {raw!r} is not a whole number")
            return None
    if typ is float:
        try:
            return float(text.replace(",", "."))
        except ValueError:
            errors.append(f"{at}: {raw!r} is not a number")
            return None
    if get_origin(typ) is list:
        return [line.strip() for line in raw.splitlines() if line.strip()]
    return raw.replace("\r\n", "\n") if typ is str else text


# -- rendering --------------------------------------------------------------------------------------


class Context(msgspec.Struct, kw_only=True):
    operators: dict[str, str]  # id -> name
    lines: list[tuple[str, str]]  # (id, name) of every line
    invalid: set[str] = set()  # paths named by an error


def render(line: LineConfig | dict[str, Any], ctx: Context, *, new: bool) -> str:
    """The form's fields for ``line``: a stored line, or a refused form's values as they were typed."""
    return _render_struct(LineConfig, line if isinstance(line, dict) else msgspec.to_builtins(line), "", ctx, new=new)


def _render_struct(typ: Any, value: Mapping[str, Any], path: str, ctx: Context, *, new: bool) -> str:
    parts: list[str] = []
    for field in msgspec.structs.fields(typ):
        at = f"{path}.{field.name}" if path else field.name
        current = value.get(field.name, _default(field))
        special = _SPECIAL.get(at)
        if at == "id" and not new:
            shown = escape(str(current))
            parts.append(f'<div class="lf-row"><span class="lf-label">id</span><code data-testid="lf-id">{shown}</code></div>')
        elif special is not None:
            parts.append(special.render(at, current, ctx))
        elif _is_struct(field.type):
            inner = _render_struct(field.type, current if isinstance(current, dict) else {}, at, ctx, new=new)
            parts.append(
                f'<fieldset class="lf-group" data-testid="lf-group-{at}"><legend>[{escape(at)}]</legend>{inner}</fieldset>'
            )
        else:
            parts.append(_render_plain(field.type, at, current, ctx))
    return "".join(parts)


def _render_plain(typ: Any, at: str, current: Any, ctx: Context) -> str:
    name = escape(PREFIX + at)
    fid = escape("lf-" + at.replace(".", "-"))
    bad = ' aria-invalid="true" class="invalid"' if at in ctx.invalid else ""
    label = f'<label for="{fid}" class="lf-label">{escape(at.rsplit(".", 1)[-1])}</label>'
    if typ is bool:
        checked = " checked" if current else ""
        return (
            f'<div class="lf-row"><input type="hidden" name="{name}" value="{_BOOL_OFF}">'
            f'<label class="check"><input type="checkbox" id="{fid}" name="{name}" value="true"{checked}{bad} '
            f'data-testid="{fid}"> {escape(at.rsplit(".", 1)[-1])}</label></div>'
        )
    choices = get_args(typ) if get_origin(typ) is Literal else ()
    if choices:
        options = "".join(
            f'<option value="{escape(str(c))}"{" selected" if c == current else ""}>{escape(str(c))}</option>' for c in choices
        )
        return f'<div class="lf-row">{label}<select id="{fid}" name="{name}"{bad} data-testid="{fid}">{options}</select></div>'
    if typ in (int, float):
        shown = _number(current)
        step = "1" if typ is int else "any"
        return (
            f'<div class="lf-row">{label}<input type="number" step="{step}" id="{fid}" name="{name}" '
            f'value="{escape(shown)}"{bad} data-testid="{fid}"></div>'
        )
    if get_origin(typ) is list:
        text = "\n".join(str(v) for v in current or [])
        return (
            f'<div class="lf-row">{label}<textarea id="{fid}" name="{name}" rows="3"{bad} data-testid="{fid}" '
            f'placeholder="one per line">{escape(text)}</textarea></div>'
        )
    value = escape(str(current or ""))
    return f'<div class="lf-row">{label}<input id="{fid}" name="{name}" value="{value}"{bad} data-testid="{fid}"></div>'


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default_factory())
    return ""


def _is_struct(typ: Any) -> bool:
    return isinstance(typ, type) and issubclass(typ, msgspec.Struct)


# -- the keys shown another way ---------------------------------------------------------------------


class _Special:
    def render(self, at: str, current: Any, ctx: Context) -> str:
        raise NotImplementedError

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        raise NotImplementedError


def _fid(at: str) -> str:
    return "lf-" + at.replace(".", "-")


class _Channels(_Special):
    """One row per bound channel account, and an empty row to bind one more."""

    def render(self, at: str, current: Any, ctx: Context) -> str:
        rows = [*(current or []), {"channel": "", "account": ""}]
        out = []
        for k, row in enumerate(rows):
            options = '<option value="">—</option>' + "".join(
                f'<option value="{c}"{" selected" if c == row.get("channel") else ""}>{c}</option>' for c in CHANNELS
            )
            out.append(
                f'<div class="lf-channel" data-testid="lf-channel"><select name="{PREFIX}{at}.channel" '
                f'aria-label="Channel {k + 1}" data-testid="lf-channel-kind">{options}</select>'
                f'<input name="{PREFIX}{at}.account" value="{escape(str(row.get("account", "")))}" '
                f'aria-label="Account {k + 1}" placeholder="account" data-testid="lf-channel-account"></div>'
            )
        bad = " invalid" if at in ctx.invalid else ""
        return (
            f'<fieldset class="lf-group{bad}"><legend>channels (which accounts feed this line)</legend>{"".join(out)}</fieldset>'
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        kinds, accounts = form.all(at + ".channel"), form.all(at + ".account")
        out = []
        for kind, account in zip(kinds, accounts, strict=False):
            if kind or account.strip():
                out.append({"channel": kind, "account": account.strip()})
        return out


class _Operators(_Special):
    """Queue members as check boxes: members first in their queue order, the others after."""

    def __init__(self, *, pick_one: bool = False) -> None:
        self.pick_one = pick_one

    def render(self, at: str, current: Any, ctx: Context) -> str:
        if self.pick_one:
            options = '<option value="">— nobody —</option>' + "".join(
                f'<option value="{escape(o)}"{" selected" if o == current else ""}>{escape(n)} ({escape(o)})</option>'
                for o, n in ctx.operators.items()
            )
            return (
                f'<div class="lf-row"><label class="lf-label" for="{_fid(at)}">{escape(at.rsplit(".", 1)[-1])}</label>'
                f'<select id="{_fid(at)}" name="{PREFIX}{at}" data-testid="{_fid(at)}">{options}</select></div>'
            )
        members = [o for o in current or []]
        order = members + [o for o in ctx.operators if o not in members]
        boxes = "".join(
            f'<label class="check"><input type="checkbox" name="{PREFIX}{at}" value="{escape(o)}" '
            f'data-testid="lf-queue-{escape(o)}"{" checked" if o in members else ""}> '
            f'{escape(ctx.operators.get(o, o))} <span class="muted">({escape(o)})</span></label>'
            for o in order
        )
        bad = " invalid" if at in ctx.invalid else ""
        return (
            f'<fieldset class="lf-group{bad}"><legend>operators (queue members; order: as listed, '
            f"newly ticked at the end)</legend>{boxes}</fieldset>"
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        if self.pick_one:
            return form.one(at) or ""
        return form.all(at)


class _Weekly(_Special):
    """Business hours as a grid: a row per weekday, its opening ranges ("09:00-13:00, 14:00-18:00")."""

    def render(self, at: str, current: Any, ctx: Context) -> str:
        rows = "".join(
            f'<tr><th scope="row">{day}</th><td><input name="{PREFIX}{at}.{day}" '
            f'value="{escape(", ".join((current or {}).get(day, [])))}" placeholder="closed" '
            f'aria-label="{day} opening hours" data-testid="lf-weekly-{day}"></td></tr>'
            for day in WEEKDAYS
        )
        bad = " invalid" if at in ctx.invalid else ""
        return (
            f'<fieldset class="lf-group{bad}"><legend>weekly (opening hours per day, e.g. 09:00-13:00, 14:00-18:00; '
            f'empty = closed)</legend><table class="lf-week">{rows}</table></fieldset>'
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        out: dict[str, list[str]] = {}
        for day in WEEKDAYS:
            text = form.one(f"{at}.{day}") or ""
            ranges = [r.strip() for r in text.replace(";", ",").split(",") if r.strip()]
            if ranges:
                out[day] = ranges
        return out


class _Weekdays(_Special):
    def render(self, at: str, current: Any, ctx: Context) -> str:
        boxes = "".join(
            f'<label class="check"><input type="checkbox" name="{PREFIX}{at}" value="{day}" data-testid="lf-dayoff-{day}"'
            f"{' checked' if day in (current or []) else ''}> {day}</label>"
            for day in WEEKDAYS
        )
        return f'<fieldset class="lf-group"><legend>days_off (closed whatever the weekly hours say)</legend>{boxes}</fieldset>'

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        return form.all(at)


class _Pick(_Special):
    """One value from a list that depends on the configuration (another line, a time zone)."""

    def __init__(self, choices: Callable[[Context], list[tuple[str, str]]], *, empty: str = "") -> None:
        self.choices = choices
        self.empty = empty

    def render(self, at: str, current: Any, ctx: Context) -> str:
        options = (f'<option value="">{escape(self.empty)}</option>' if self.empty else "") + "".join(
            f'<option value="{escape(v)}"{" selected" if v == current else ""}>{escape(label)}</option>'
            for v, label in self.choices(ctx)
        )
        bad = ' aria-invalid="true" class="invalid"' if at in ctx.invalid else ""
        return (
            f'<div class="lf-row"><label class="lf-label" for="{_fid(at)}">{escape(at.rsplit(".", 1)[-1])}</label>'
            f'<select id="{_fid(at)}" name="{PREFIX}{at}"{bad} data-testid="{_fid(at)}">{options}</select></div>'
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        return form.one(at) or ""


class _SourceIds(_Special):
    def render(self, at: str, current: Any, ctx: Context) -> str:
        rows = "".join(
            f'<tr><th scope="row">{c}</th><td><input name="{PREFIX}{at}.{c}" value="{escape((current or {}).get(c, ""))}" '
            f'placeholder="default" aria-label="SOURCE_ID for {c}" data-testid="lf-source-{c}"></td></tr>'
            for c in CHANNELS
        )
        return (
            f'<fieldset class="lf-group"><legend>source_ids (CRM SOURCE_ID per channel)</legend><table>{rows}</table></fieldset>'
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        return {c: v.strip() for c in CHANNELS if (v := form.one(f"{at}.{c}") or "").strip()}


class _Template(_Special):
    """An auto-reply text with a live preview of what a client named Maria would read."""

    def render(self, at: str, current: Any, ctx: Context) -> str:
        fid = _fid(at)
        bad = ' aria-invalid="true" class="invalid"' if at in ctx.invalid else ""
        return (
            f'<div class="lf-row lf-template"><label class="lf-label" for="{fid}">{escape(at.rsplit(".", 1)[-1])}</label>'
            f'<textarea id="{fid}" name="{PREFIX}{at}" rows="2" data-template{bad} data-testid="{fid}">'
            f"{escape(str(current or ''))}</textarea>"
            f'<p class="lf-preview muted" data-preview-of="{fid}" data-testid="{fid}-preview" aria-live="polite"></p></div>'
        )

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        raw = form.one(at)
        return None if raw is None else raw.replace("\r\n", "\n").strip()


class _Kept(_Special):
    """Shown elsewhere (quick answers have their own page): kept as they are."""

    def __init__(self, where: str) -> None:
        self.where = where

    def render(self, at: str, current: Any, ctx: Context) -> str:
        return f'<div class="lf-row"><span class="lf-label">{escape(at)}</span><span class="muted">{self.where}</span></div>'

    def read(self, at: str, form: FormValues, errors: list[str]) -> Any:
        return None


@cache
def _zones() -> list[tuple[str, str]]:
    return [(z, z) for z in sorted(zoneinfo.available_timezones())]


_SPECIAL: dict[str, _Special] = {
    "channels": _Channels(),
    "queue.operators": _Operators(),
    "hours.weekly": _Weekly(),
    "hours.days_off": _Weekdays(),
    "hours.timezone": _Pick(lambda ctx: _zones()),
    "hours.redirect_line": _Pick(lambda ctx: [(i, f"{n} ({i})") for i, n in ctx.lines], empty="—"),
    "crm.responsible": _Operators(pick_one=True),
    "crm.source_ids": _SourceIds(),
    "quick_answers": _Kept('edited on the <a href="/quick-answers">Quick answers</a> page'),
    **{f"auto_replies.{f.name}": _Template() for f in msgspec.structs.fields(AutoReplies) if f.type is str},
}


def invalid_paths(errors: list[str]) -> set[str]:
    """The form paths the errors name: ``lines[2] (support).queue.wait_seconds: …`` and
    ``queue.wait_seconds: …`` both mark queue.wait_seconds (and its group)."""
    out: set[str] = set()
    for e in errors:
        head = e.split(": ", 1)[0]
        if head.startswith("lines["):
            head = head.split("]", 1)[1]
            head = head.split(")", 1)[1] if head.startswith(" (") else head
        path = head.lstrip(".").split("[", 1)[0].split(" ", 1)[0]
        while path:
            out.add(path)
            path = path.rpartition(".")[0]
    return out


def validate(doc: dict[str, Any], cfg: LinesFile, line_id: str | None) -> tuple[LinesFile | None, list[str]]:
    """The whole configuration with this line (new, or replacing ``line_id``), or the problems (one per key)."""
    line_cfg, errors = convert_all({"lines": [doc]})
    if errors or not line_cfg.lines:
        return None, errors or ["lines[0]: incomplete"]
    line = line_cfg.lines[0]
    lines = [*cfg.lines, line] if line_id is None else [line if x.id == line_id else x for x in cfg.lines]
    full = LinesFile(operators=cfg.operators, lines=lines)
    problems = check(full)
    return (None, problems) if problems else (full, [])
