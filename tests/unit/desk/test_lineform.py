"""The line form covers every key of a line and reads back exactly what it shows."""

from __future__ import annotations

from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec

from desk import lineform
from openlines.lines import LineConfig, LinesFile, SlaConfig, load

ROOT = Path(__file__).resolve().parents[3]


class _Form(HTMLParser):
    """What a browser would submit for the fields (ticked boxes, selected options, typed text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: dict[str, list[str]] = defaultdict(list)
        self.names: set[str] = set()
        self._select: str | None = None
        self._textarea: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("name"):
            self.names.add(a["name"])
            if a.get("type") != "checkbox" or "checked" in a:
                self.values[a["name"]].append(a.get("value", ""))
        elif tag == "select":
            self._select = a.get("name")
            if self._select:
                self.names.add(self._select)
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select].append(a.get("value", ""))
        elif tag == "textarea":
            self._textarea, self._text = a.get("name"), ""
            if self._textarea:
                self.names.add(self._textarea)

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea:
            self.values[self._textarea].append(self._text)
            self._textarea = None


def _paths(typ: Any, prefix: str = "") -> list[str]:
    out = []
    for f in msgspec.structs.fields(typ):
        at = f"{prefix}.{f.name}" if prefix else f.name
        inner = f.type
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct) and at != "channels":
            out += _paths(inner, at)
        else:
            out.append(at)
    return out


def _submitted(line: LineConfig, cfg: LinesFile) -> _Form:
    ctx = lineform.Context(operators={k: o.name for k, o in cfg.operators.items()}, lines=[(x.id, x.name) for x in cfg.lines])
    form = _Form()
    form.feed(lineform.render(line, ctx, new=False))
    return form


def test_every_key_of_a_line_has_a_field_or_says_where_it_is_edited() -> None:
    cfg = load(ROOT / "deploy/lines.example.toml")
    form = _submitted(cfg.lines[0], cfg)
    html_names = {n.removeprefix(lineform.PREFIX) for n in form.names}
    for path in _paths(LineConfig):
        if path in ("id", "quick_answers"):  # the key itself; quick answers have their page
            continue
        assert any(n == path or n.startswith(path + ".") for n in html_names), f"no field for {path}"


def test_what_the_form_shows_reads_back_as_the_same_line() -> None:
    cfg = load(ROOT / "deploy/lines.example.toml")
    line = msgspec.structs.replace(
        cfg.lines[0],
        hours=msgspec.structs.replace(
            cfg.lines[0].hours,
            enabled=True,
            timezone="Europe/Riga",
            weekly={"mon": ["09:00-13:00", "14:00-18:00"], "fri": ["10:00-16:00"]},
            days_off=["sun"],
            holidays=["12-31", "2027-01-01"],
        ),
        crm=msgspec.structs.replace(cfg.lines[0].crm, enabled=True, source_ids={"telegram": "TG"}, responsible="anna"),
        sla=SlaConfig(first_response_seconds=120, next_response_seconds=300),
    )
    form = _submitted(line, cfg)
    doc, errors = lineform.read(lineform.FormValues(lambda name, default: form.values.get(name, default)), line)
    assert errors == []
    full, problems = lineform.validate(doc, cfg, line.id)
    assert problems == [] and full is not None
    assert full.lines[0] == line


def test_numbers_that_are_not_numbers_name_their_key() -> None:
    cfg = load(ROOT / "deploy/lines.example.toml")
    form = _submitted(cfg.lines[0], cfg)
    form.values["f.queue.wait_seconds"] = ["soon"]
    _, errors = lineform.read(lineform.FormValues(lambda name, default: form.values.get(name, default)), cfg.lines[0])
    assert errors == ["queue.wait_seconds: 'soon' is not a whole number"]
    assert {"queue.wait_seconds", "queue"} <= lineform.invalid_paths(errors)


def test_a_negative_sla_target_is_refused_naming_its_key() -> None:
    cfg = load(ROOT / "deploy/lines.example.toml")
    form = _submitted(cfg.lines[0], cfg)
    assert form.values["f.sla.first_response_seconds"] == ["0"]  # the form shows the targets
    form.values["f.sla.first_response_seconds"] = ["-1"]
    doc, errors = lineform.read(lineform.FormValues(lambda name, default: form.values.get(name, default)), cfg.lines[0])
    assert errors == []
    _, problems = lineform.validate(doc, cfg, cfg.lines[0].id)
    assert any("sla.first_response_seconds: -1 is outside" in p for p in problems), problems
    assert "sla.first_response_seconds" in lineform.invalid_paths(problems)
