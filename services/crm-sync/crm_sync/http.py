"""The built-in CRM's read API: what crm-sync wrote, as JSON.

``GET /crm/contacts``, ``/crm/leads``, ``/crm/deals``, ``/crm/activities?session=<id>``
and ``/crm/links/<client id>``.

Every client's name, phone and e-mail is here, so every request must carry
``Authorization: Bearer <OPENLINES_CRM_API_TOKEN>``; without that setting the
API is off (401 saying so). The desk does not need it: it reads the CRM's
buckets itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from nats.js.kv import KeyValue

from crm_sync.backends.base import Kind
from crm_sync.backends.builtin import BuiltinBackend
from crm_sync.links import ClientLink, client_key
from openlines import subjects
from openlines.bus import kv_get
from openlines.runner import json_error


def _json(obj: object) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.Response]]


class ReadApi:
    def __init__(self, backend: BuiltinBackend | None, links: KeyValue, token: str = "") -> None:
        self.backend = backend
        self.links = links
        self.token = token

    def routes(self, app: web.Application) -> None:
        for kind in ("contacts", "leads", "deals"):
            app.router.add_get(f"/crm/{kind}", self._guarded(self._entities))
        app.router.add_get("/crm/activities", self._guarded(self._activities))
        app.router.add_get("/crm/links/{client_id}", self._guarded(self._link))

    def _refusal(self, request: web.Request) -> web.Response | None:
        headers = {"WWW-Authenticate": 'Bearer realm="openlines-crm"'}
        if not self.token:
            detail = "the CRM read API is off: set OPENLINES_CRM_API_TOKEN on crm-sync and send it as a Bearer token"
            return json_error(401, "unauthenticated", detail, headers)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return json_error(401, "unauthenticated", "send Authorization: Bearer <OPENLINES_CRM_API_TOKEN>", headers)
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return json_error(401, "unauthenticated", "wrong token", headers)
        return None

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            return self._refusal(request) or await handler(request)

        return guarded

    async def _entities(self, request: web.Request) -> web.Response:
        if self.backend is None:
            return json_error(404, "not_builtin", "the read API serves the built-in CRM; this crm-sync writes to an external CRM")
        kind: Kind = {"contacts": "contact", "leads": "lead", "deals": "deal"}[request.path.rsplit("/", 1)[1]]  # type: ignore[assignment]
        return _json(await self.backend.entities(kind))

    async def _activities(self, request: web.Request) -> web.Response:
        if self.backend is None:
            return json_error(404, "not_builtin", "the read API serves the built-in CRM; this crm-sync writes to an external CRM")
        session = request.query.get("session", "")
        if session:
            try:
                subjects.token(session, "session")
            except subjects.BadToken as exc:
                return json_error(400, "invalid", str(exc))
        return _json(await self.backend.activities(session))

    async def _link(self, request: web.Request) -> web.Response:
        client_id = request.match_info["client_id"]
        try:
            subjects.token(client_id, "client id")
        except subjects.BadToken as exc:
            return json_error(400, "invalid", str(exc))
        link, _ = await kv_get(self.links, client_key(client_id), ClientLink)
        if link is None:
            return json_error(404, "not_found", f"client {client_id} is not linked to the CRM")
        return _json(link)
