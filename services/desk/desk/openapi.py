"""The OpenAPI 3.1 document of /api/v1, built from the same table the routes come from
(desk.api.OPERATIONS), with the body schemas derived from the msgspec Structs."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from desk.api import MAX_LIMIT, OPERATIONS, PREFIX, SESSION_STATUSES, Operation, OperatorBody
from openlines.lines import LineConfig

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_WHEN = {"type": "string", "description": "a date (YYYY-MM-DD, a whole UTC day) or an ISO 8601 time (no zone = UTC)"}

QUERY: dict[str, dict[str, Any]] = {
    "line": {"description": "only this line", "schema": _ID},
    "status": {"description": "only sessions in this status", "schema": {"type": "string", "enum": list(SESSION_STATUSES)}},
    "operator": {"description": "only sessions this operator holds or closed", "schema": _ID},
    "channel": {"description": "only sessions of this channel", "schema": _ID},
    "from": {"description": "start of the range (sessions opened at or after it)", "schema": _WHEN},
    "to": {"description": "end of the range (exclusive; a date includes that day); default now", "schema": _WHEN},
    "limit": {
        "description": f"at most this many (default 100, at most {MAX_LIMIT})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
}

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Bad request: the reason is in detail (and errors, per key); nothing changed",
    401: "Missing, unknown or revoked token",
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
    responses: dict[str, Any] = {
        str(op.ok): {"description": STATUS_TEXT[op.ok], "content": {"application/json": {"schema": {"type": "object"}}}}
    }
    for status in sorted({*op.responses, 401, 403}):
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        responses[str(status)] = {
            "description": STATUS_TEXT[status],
            "content": content if status >= 400 else {"application/json": {"schema": {"type": "object"}}},
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
    (_, schemas) = msgspec.json.schema_components([LineConfig, OperatorBody], ref_template="#/components/schemas/{name}")
    schemas["Error"] = _error()
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
