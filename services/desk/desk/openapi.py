"""The OpenAPI 3.1 document of /api/v1, built from the same table the routes come from
(desk.api.OPERATIONS), with the body schemas derived from the msgspec Structs."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from desk.api import MAX_LIMIT, OPERATIONS, PREFIX, SESSION_STATUSES, Operation, OperatorBody
from desk.stats import LineFigures
from openlines.doctor import Finding
from openlines.envelopes import HistoryEntry
from openlines.lines import LineConfig
from openlines.state import Session

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_WHEN = {"type": "string", "description": "a date (YYYY-MM-DD, a whole UTC day) or an ISO 8601 time (no zone = UTC)"}

QUERY: dict[str, dict[str, Any]] = {
    "line": {"description": "only this line", "schema": _ID},
    "status": {"description": "only sessions in this status", "schema": {"type": "string", "enum": list(SESSION_STATUSES)}},
    "operator": {"description": "only sessions this operator holds or closed", "schema": _ID},
    "channel": {"description": "only sessions of this channel", "schema": _ID},
    "from": {"description": "start of the range (sessions opened at or after it)", "schema": _WHEN},
    "to": {"description": "end of the range (exclusive; a date includes that day); default now", "schema": _WHEN},
    "tz": {
        "description": "the time zone of dates, of times without a zone and of the figures by hour and day "
        "(an IANA name; default UTC)",
        "schema": {"type": "string", "maxLength": 64},
    },
    "limit": {
        "description": f"at most this many (default 100, at most {MAX_LIMIT})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
}

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Bad request: the reason is in detail (and errors, per key); nothing changed",
    401: "Missing, unknown, revoked or expired token",
    403: "The token's role may not do this",
    404: "No such resource",
    412: "If-Match is not the current configuration version: someone changed it meanwhile",
    413: "The body is too large",
    428: "If-Match is missing",
    503: "NATS did not answer",
}


def _error() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_VERSION = {"type": "string", "description": "the configuration version; send it back as If-Match to change it"}
_FINDINGS = {"type": "array", "items": _ref("Finding")}

OPERATOR = _obj(
    id=_STR,
    name=_STR,
    roles=_STRS,
    permissions=_STRS,
    lines={**_STRS, "description": "the lines whose queue lists the operator"},
    has_password={"type": "boolean"},
    takes_chats={"type": "boolean", "description": "false for an account not meant to answer clients (e.g. admin only)"},
    no_chats={**_STRS, "description": "why the operator would see no chats; empty when they would see some"},
)

# What each operation answers with its success status (by operationId).
ANSWERS: dict[str, dict[str, Any]] = {
    "list_lines": _obj(version=_VERSION, lines={"type": "array", "items": _ref("LineConfig")}),
    "get_line": _obj(version=_VERSION, line=_ref("LineConfig")),
    "put_line": _obj(version=_VERSION, line=_ref("LineConfig"), changes=_STRS, findings=_FINDINGS),
    "delete_line": _obj(version=_VERSION, changes=_STRS),
    "doctor": _obj(version=_VERSION, findings=_FINDINGS),
    "list_operators": _obj(version=_VERSION, operators={"type": "array", "items": _ref("Operator")}),
    "get_operator": _obj(version=_VERSION, operator=_ref("Operator")),
    "put_operator": _obj(version=_VERSION, operator=_ref("Operator"), changes=_STRS),
    "delete_operator": _obj(version=_VERSION, changes=_STRS),
    "list_sessions": _obj(total={"type": "integer"}, sessions={"type": "array", "items": _ref("Session")}),
    "get_session": _obj(session={"allOf": [_ref("Session"), _obj(line_name=_STR)]}),
    "get_transcript": _obj(session_id=_STR, entries={"type": "array", "items": _ref("HistoryEntry")}),
    "stats": _obj(
        **{"from": {**_STR, "format": "date-time"}, "to": {**_STR, "format": "date-time"}},
        tz=_STR,
        lines={"type": "array", "items": _ref("LineFigures")},
        behind={"type": "integer", "description": "session events stored but not yet folded into the figures (0: up to date)"},
    ),
}


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": _ID} for n in names]


def _operation(op: Operation) -> dict[str, Any]:
    params = _path_params(op.path) + [{"name": q, "in": "query", "required": False, **QUERY[q]} for q in op.query]
    if op.if_match:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": True,
                "description": "the version from a previous GET (body field version, or the ETag header)",
                "schema": {"type": "string"},
            }
        )
    answer = {"application/json": {"schema": ANSWERS[op.handler.__name__]}}
    responses: dict[str, Any] = {str(op.ok): {"description": STATUS_TEXT[op.ok], "content": answer}}
    # Every operation checks its token in NATS first: any of them answers 503 (with Retry-After) when NATS does not.
    for status in sorted({*op.responses, 401, 403, 503}):
        error = {"application/json": {"schema": _ref("Error")}}
        responses[str(status)] = {"description": STATUS_TEXT[status], "content": error if status >= 400 else answer}
        if status == 503:
            responses[str(status)]["headers"] = {
                "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
            }
    out: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "description": f"Token roles: {', '.join(op.roles)}.",
        "x-openlines-roles": list(op.roles),
        "parameters": params,
        "responses": responses,
    }
    if op.body:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}},
        }
    return out


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(op)
    paths[PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }
    }
    structs = [LineConfig, OperatorBody, Session, HistoryEntry, LineFigures, Finding]
    (_, schemas) = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    schemas["Error"] = _error()
    schemas["Operator"] = OPERATOR
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openlines admin API",
            "version": "1",
            "description": "Lines, operators, sessions and statistics. Authenticate with `Authorization: Bearer <token>` "
            "(`openlines desk token create`); see docs/admin.md.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
    }
