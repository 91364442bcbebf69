"""A local VK API and a Callback API sender, for tests.

``FakeVk`` answers ``/method/<name>`` like api.vk.ru does (API 5.199): the
parameters come as query string or form body and include ``access_token``
and ``v``; success is ``{"response": ...}``, failure is HTTP 200 with
``{"error": {"error_code", "error_msg", "request_params": [{"key", "value"}]}}``.
``messages.send`` is deduplicated by ``random_id`` per community and peer as
VK does. Tests can make it answer error 6 for the next N calls, refuse a peer
with 901, or hold ``users.get`` until released; every call is recorded.

``CallbackSender`` POSTs Callback API events to a gateway like VK does
(JSON body, ``X-Retry-Counter`` on retries).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

ERRORS = {
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    8: "Invalid request: v is required",
    9: "Flood control",
    10: "Internal server error",
    29: "Rate limit reached",
    100: "One of the parameters specified was missing or invalid",
    901: "Can't send messages for users without permission",
    902: "Can't send messages to this user due to their privacy settings",
    914: "Message is too long",
}
MAX_MESSAGE = 9000


@dataclass
class Call:
    method: str
    params: dict[str, str]
    group_id: int  # the community whose token was used (0: unknown token)
    at: float = field(default_factory=time.monotonic)


@dataclass
class Sent:
    group_id: int
    peer_id: int
    random_id: int
    message: str
    message_id: int


@dataclass
class FakeVk:
    tokens: dict[str, int]  # access token -> community id
    users: dict[int, tuple[str, str]] = field(default_factory=dict)  # user id -> (first, last)
    confirmation_codes: dict[int, str] = field(default_factory=dict)  # community id -> code
    calls: list[Call] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    denied_peers: dict[int, int] = field(default_factory=dict)  # peer id -> error code (901, 902...)
    users_gate: asyncio.Event | None = None  # when set to an unset Event, users.get waits for it
    failing_groups: dict[int, int] = field(default_factory=dict)  # community id -> error code for all its calls
    _fail: dict[str, list[int]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- test controls ------------------------------------------------------

    def fail_next(self, method: str, code: int, times: int = 1) -> None:
        """Answer ``code`` to the next ``times`` calls of ``method``."""
        self._fail.setdefault(method, []).extend([code] * times)

    def deny_peer(self, peer_id: int, code: int = 901) -> None:
        self.denied_peers[peer_id] = code

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def sent_to(self, peer_id: int) -> list[Sent]:
        return [s for s in self.sent if s.peer_id == peer_id]

    # -- server ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/method/{name}", self._method)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.users_gate is not None:
            self.users_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _method(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        group_id = self.tokens.get(params.get("access_token", ""), 0)
        self.calls.append(Call(name, {k: v for k, v in params.items() if k != "access_token"}, group_id))
        if not group_id:
            return self._error(5, name, params)
        if not params.get("v"):
            return self._error(8, name, params)
        if group_id in self.failing_groups:
            return self._error(self.failing_groups[group_id], name, params)
        queued = self._fail.get(name)
        if queued:
            return self._error(queued.pop(0), name, params)
        handler = {
            "messages.send": self._send,
            "users.get": self._users_get,
            "groups.getCallbackConfirmationCode": self._confirmation_code,
        }.get(name)
        if handler is None:
            return self._error(3, name, params, "Unknown method passed")
        return await handler(group_id, name, params)

    async def _send(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        try:
            peer_id = int(params["peer_id"])
            random_id = int(params["random_id"])
        except (KeyError, ValueError):
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: peer_id, random_id")
        if not -(2**31) <= random_id < 2**31:
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: random_id")
        message = params.get("message", "")
        if not message and not params.get("attachment"):
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: message is empty")
        if len(message) > MAX_MESSAGE:
            return self._error(914, name, params)
        if peer_id in self.denied_peers:
            return self._error(self.denied_peers[peer_id], name, params)
        for s in self.sent:
            if random_id and (s.group_id, s.peer_id, s.random_id) == (group_id, peer_id, random_id):
                return web.json_response({"response": s.message_id})  # VK: the same send, not a new message
        sent = Sent(group_id, peer_id, random_id, message, next(self._ids))
        self.sent.append(sent)
        return web.json_response({"response": sent.message_id})

    async def _users_get(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if self.users_gate is not None:
            await self.users_gate.wait()
        out = []
        for raw in params.get("user_ids", "").split(","):
            if raw.strip().isdigit() and int(raw) in self.users:
                first, last = self.users[int(raw)]
                out.append(
                    {"id": int(raw), "first_name": first, "last_name": last, "can_access_closed": True, "is_closed": False}
                )
        return web.json_response({"response": out})

    async def _confirmation_code(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if params.get("group_id") != str(group_id) or group_id not in self.confirmation_codes:
            return self._error(15, name, params, "Access denied")
        return web.json_response({"response": {"code": self.confirmation_codes[group_id]}})

    def _error(self, code: int, method: str, params: dict[str, str], msg: str = "") -> web.Response:
        shown = [{"key": "method", "value": method}, {"key": "oauth", "value": "1"}]
        shown += [{"key": k, "value": v} for k, v in params.items() if k != "access_token"]
        return web.json_response(
            {"error": {"error_code": code, "error_msg": msg or ERRORS.get(code, "Error"), "request_params": shown}}
        )


class CallbackSender:
    """Sends Callback API events to a gateway URL the way VK does."""

    def __init__(self, http: aiohttp.ClientSession, url: str, group_id: int, secret: str) -> None:
        self.http = http
        self.url = url
        self.group_id = group_id
        self.secret = secret
        self._ids = itertools.count(1000)

    def event(
        self, kind: str, obj: dict[str, Any] | None = None, *, event_id: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": kind,
            "event_id": event_id or secrets.token_hex(20),
            "v": "5.199",
            "object": obj or {},
            "group_id": self.group_id,
            "secret": self.secret,
        }
        body.update(overrides)
        return body

    def message_new(
        self,
        text: str,
        *,
        from_id: int = 1001,
        peer_id: int | None = None,
        attachments: list[dict[str, Any]] | None = None,
        event_id: str | None = None,
        date: int = 1_700_000_000,
    ) -> dict[str, Any]:
        message = {
            "id": next(self._ids),
            "date": date,
            "peer_id": peer_id if peer_id is not None else from_id,
            "from_id": from_id,
            "text": text,
            "out": 0,
            "conversation_message_id": 1,
            "attachments": attachments or [],
            "fwd_messages": [],
            "important": False,
            "is_hidden": False,
        }
        client_info = {"button_actions": ["text"], "keyboard": True, "inline_keyboard": True, "carousel": True, "lang_id": 0}
        return self.event("message_new", {"message": message, "client_info": client_info}, event_id=event_id)

    def confirmation(self, *, with_secret: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "confirmation", "group_id": self.group_id}
        if with_secret:
            body["secret"] = self.secret
        return body

    async def post(self, body: dict[str, Any] | bytes | str, *, retry: int = 0) -> tuple[int, str]:
        """POST one event; ``retry`` > 0 sets ``X-Retry-Counter`` like VK's resends. Returns (status, body text)."""
        data = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json"}
        if retry:
            headers["X-Retry-Counter"] = str(retry)
        async with self.http.post(self.url, data=data, headers=headers) as resp:
            return resp.status, await resp.text()
