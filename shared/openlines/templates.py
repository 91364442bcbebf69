"""Message templates: the approved messages a channel (WhatsApp) delivers outside the customer-service window.

A template is declared on its channel binding in the lines file
(``[[lines.channels.templates]]``: name, language, body text with ``{{1}}``
or ``{{name}}`` variables). The desk lists them, the operator fills in the
variables, the router checks and renders the body (what the transcript shows)
and the gateway sends the template by name with the values. Pure functions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from openlines.envelopes import TemplateMessage

if TYPE_CHECKING:
    from openlines.lines import MessageTemplate

CHANNELS_WITH_TEMPLATES = ("whatsapp",)
MAX_TEMPLATES = 50
MAX_BODY = 1024  # characters of a WhatsApp template body
MAX_PARAM = 1000  # characters of one filled-in variable

_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2,3})?$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_NAMED = re.compile(r"^[a-z_][a-z0-9_]*$")
_SPACES = re.compile(r" {5,}")


class TemplateError(ValueError):
    """The template or the values given for it cannot be sent; the message says why."""


def variables(text: str) -> list[str]:
    """The body's variables in the order they are filled in: "1", "2"... by number, else named ones as they first appear."""
    found = list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))
    if found and all(v.isdigit() for v in found):
        return sorted(found, key=int)
    return found


def numbered(text: str) -> bool:
    names = variables(text)
    return not names or names[0].isdigit()


def problems(tpl: MessageTemplate) -> list[str]:
    """What is wrong with a declared template (empty: usable)."""
    out: list[str] = []
    if not _NAME.match(tpl.name):
        out.append(f"name {tpl.name!r} is not a template name as WhatsApp Manager shows it (a-z 0-9 _)")
    if not _LANGUAGE.match(tpl.language):
        out.append(f"language {tpl.language!r} is not a language code such as en_US, de or pt_BR")
    if not tpl.text.strip():
        out.append("text must be the template's body as approved")
    elif len(tpl.text) > MAX_BODY:
        out.append(f"text is {len(tpl.text)} characters; a template body has at most {MAX_BODY}")
    names = variables(tpl.text)
    if any(n.isdigit() for n in names) and not all(n.isdigit() for n in names):
        out.append("text mixes numbered ({{1}}) and named ({{name}}) variables; WhatsApp takes one kind per template")
    elif names and names[0].isdigit():
        if names != [str(i) for i in range(1, len(names) + 1)]:
            shown = ", ".join("{{" + n + "}}" for n in names)
            out.append(f"text has variables {shown}; numbered ones must be {{{{1}}}} to {{{{n}}}}")
    else:
        bad = [n for n in names if not _NAMED.match(n)]
        if bad:
            out.append(f"variable {{{{{bad[0]}}}}}: named variables are lower-case letters, digits and _")
    if tpl.variables and len(tpl.variables) != len(names):
        out.append(f"variables lists {len(tpl.variables)} labels but the text has {len(names)} variables")
    return out


def param_problem(value: str) -> str | None:
    """Why WhatsApp would refuse ``value`` as a template variable, or None."""
    if not value.strip():
        return "is empty"
    if len(value) > MAX_PARAM:
        return f"is {len(value)} characters; at most {MAX_PARAM}"
    if "\n" in value or "\t" in value or "\r" in value:
        return "has a line break or a tab (WhatsApp refuses them in template variables)"
    if _SPACES.search(value):
        return "has more than four spaces in a row (WhatsApp refuses them in template variables)"
    return None


def fill(tpl: MessageTemplate, params: list[str]) -> tuple[str, TemplateMessage]:
    """The body as the client reads it and what the gateway sends; :class:`TemplateError` when the values do not fit."""
    names = variables(tpl.text)
    if len(params) != len(names):
        raise TemplateError(f"template {tpl.name!r} has {len(names)} variables; {len(params)} values were given")
    values = [p.strip() for p in params]
    for i, value in enumerate(values):
        why = param_problem(value)
        if why:
            label = tpl.variables[i] if i < len(tpl.variables) else "{{" + names[i] + "}}"
            raise TemplateError(f"variable {label!r} {why}")
    by_name = dict(zip(names, values, strict=True))
    body = _PLACEHOLDER.sub(lambda m: by_name.get(m.group(1), m.group(0)), tpl.text)
    named = bool(names) and not names[0].isdigit()
    return body, TemplateMessage(name=tpl.name, language=tpl.language, params=values, param_names=names if named else [])


def find(templates: list[MessageTemplate], name: str, language: str = "") -> MessageTemplate | None:
    """The declared template of that name (and language, when given)."""
    for tpl in templates:
        if tpl.name == name and (not language or tpl.language == language):
            return tpl
    return None
