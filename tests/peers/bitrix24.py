"""A local Bitrix24 REST peer: the CRM methods crm-sync uses, with their
documented request and response shapes, errors and rate-limit answers, and a
record of every call.

- ``POST /rest/<user>/<code>/<method>`` (inbound webhook) or
  ``POST /rest/<method>`` with ``auth=<access token>`` (OAuth); a trailing
  ``.json`` is accepted. Bodies are JSON.
- Success: ``{"result": ..., "time": {...}}``; lists add ``total``. ``time``
  carries ``operating`` (the seconds this call counted against its method)
  and ``operating_reset_at`` (when part of that method's budget is freed).
- Errors: ``{"error": CODE, "error_description": text}``, in the shapes the
  documentation and ../shared/corpus/bitrix24 show: ``QUERY_LIMIT_EXCEEDED``
  with HTTP 503 (the request-rate leaky bucket), ``OPERATION_TIME_LIMIT``
  with HTTP 429 (a method whose summed operating time over the last 10
  minutes passed 480 s is blocked - that method only, for every caller),
  ``expired_token`` 401; a classic CRM method's own errors carry an *empty*
  ``error`` code with the text in ``error_description`` ("Not found",
  "Access denied."); ``crm.duplicate.findbycomm`` puts a sentence in
  ``error`` ("Communication type is not defined").
- ``crm.<lead|deal|contact>.delete`` deletes the activities filed on the record too,
  as the portal does.
- ``GET /oauth/token/?grant_type=refresh_token&...`` rotates the tokens.

Controls for tests: ``limited`` / ``limit_for(s)`` (answer every call
QUERY_LIMIT_EXCEEDED), ``rate`` (leaky bucket per second; over it =
QUERY_LIMIT_EXCEEDED), ``operating_cost`` / ``operating_limit`` /
``operating_window`` (the operating-time budget per method), ``deny(method)``
(access denied), ``hold`` (a method name whose answer is held after it took
effect, as when the caller dies before reading it), ``expire_token()``.
``answers`` records (method, HTTP status, error code) of every answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

MULTI = ("PHONE", "EMAIL", "IM")
OWNER_TYPES = {1: "lead", 2: "deal", 3: "contact"}
# The cloud's budget per method: 480 s of operating time within the last 10 minutes.
OPERATING_LIMIT = 480.0
OPERATING_WINDOW = 600.0
FINDBYCOMM_MAX_PER_TYPE = 20  # "if 20 or more duplicates are found for one object, the other types are not returned"


def parse_php_query(query: str) -> dict[str, Any]:
    """``filter[ORIGIN_ID]=x&values[0]=a`` -> {"filter": {"ORIGIN_ID": "x"}, "values": ["a"]}."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        fixed = {k: _lists(v) for k, v in node.items()}
        if fixed and all(k.isdigit() for k in fixed):
            return [fixed[k] for k in sorted(fixed, key=int)]
        return fixed
    return node


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.description = description


class Bitrix24Peer:
    def __init__(self, user: str = "1", code: str = "secretcode") -> None:
        self.user = user
        self.code = code
        self.records: dict[str, dict[int, dict[str, Any]]] = {"contact": {}, "lead": {}, "deal": {}, "activity": {}}
        self.next_id = {"contact": 1, "lead": 1, "deal": 1, "activity": 1, "multi": 1}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sources = ["CALL", "EMAIL", "WEB", "OPENLINE", "TELEGRAM", "VK", "WHATSAPP", "OTHER"]
        self.scopes = ["crm", "user", "imopenlines"]
        self.limited = False
        self.limited_until = 0.0  # monotonic time until which every call is QUERY_LIMIT_EXCEEDED
        self.rate = 0.0  # requests per second allowed after the burst; 0 = no limit
        self.burst = 50
        self._level = 0.0
        self._at = time.monotonic()
        # Operating time: seconds each call of a method costs (default none), summed per method over the window.
        self.operating_cost: dict[str, float] = {}
        self.operating_limit = OPERATING_LIMIT
        self.operating_window = OPERATING_WINDOW
        self._spent: dict[str, list[tuple[float, float]]] = {}  # method -> [(epoch seconds, operating seconds)]
        self.denied: set[str] = set()
        self.scripted: dict[str, tuple[int, Any]] = {}  # method -> (HTTP status, body) answered once, as given
        self.answers: list[tuple[str, int, str]] = []  # (method, HTTP status, error code or "")
        self.hold: str = ""  # a method whose answer is held (after it took effect)
        self.held = asyncio.Event()  # set when a held call took effect
        self.release = asyncio.Event()
        self.access_token = "token-1"
        self.refresh_token = "refresh-1"
        self.client_id = "app.client"
        self.client_secret = "app-secret"
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- what tests look at ------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook(self) -> str:
        return f"{self.base}/rest/{self.user}/{self.code}/"

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def leads(self) -> list[dict[str, Any]]:
        return [self._out(r) for r in self.records["lead"].values()]

    def deals(self) -> list[dict[str, Any]]:
        return [self._out(r) for r in self.records["deal"].values()]

    def contacts(self) -> list[dict[str, Any]]:
        return [self._out(r) for r in self.records["contact"].values()]

    def activities(self) -> list[dict[str, Any]]:
        return [self._out(r) for r in self.records["activity"].values()]

    def add_contact(self, **fields: Any) -> int:
        return self._add("contact", fields)

    def expire_token(self) -> None:
        self.access_token = self.access_token + "-expired"

    def limit_for(self, seconds: float) -> None:
        """Answer every call QUERY_LIMIT_EXCEEDED for ``seconds`` from now."""
        self.limited_until = time.monotonic() + seconds

    def script(self, method: str, status: int, body: Any) -> None:
        """Answer the next call of ``method`` with exactly this (a recorded answer of the real API)."""
        self.scripted[method] = (status, body)

    def deny(self, method: str) -> None:
        """The webhook's user loses the right behind ``method``: it answers "Access denied."."""
        self.denied.add(method)

    def use_up(self, method: str, for_seconds: float) -> None:
        """Other applications of the portal used up ``method``'s operating time: it is blocked for ``for_seconds``."""
        at = time.time() - self.operating_window + for_seconds
        self._window(method).append((at, self.operating_limit + 1))

    def refused(self, code: str) -> int:
        """How many answers carried this error code."""
        return sum(1 for _, _, c in self.answers if c == code)

    def blocked_until(self, method: str) -> float:
        """Epoch seconds at which ``method`` is no longer over its operating-time budget (0 = not blocked)."""
        spent = self._window(method)
        total = sum(cost for _, cost in spent)
        if total <= self.operating_limit:
            return 0.0
        for at, cost in spent:  # the oldest costs leave the window first
            total -= cost
            if total <= self.operating_limit:
                return at + self.operating_window
        return 0.0

    # -- server --------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/rest/{user}/{code}/{method}", self._webhook)
        app.router.add_post("/rest/{method}", self._oauth)
        app.router.add_get("/oauth/token/", self._token)
        return app

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- transport -----------------------------------------------------------

    def _window(self, method: str) -> list[tuple[float, float]]:
        cutoff = time.time() - self.operating_window
        spent = sorted((at, cost) for at, cost in self._spent.get(method, []) if at > cutoff)
        self._spent[method] = spent
        return spent

    def _operate(self, method: str) -> float:
        """Count one call against its method's operating-time budget; returns what it cost."""
        cost = self.operating_cost.get(method, 0.0)
        if cost:
            self._window(method).append((time.time(), cost))
        return cost

    def _time(self, method: str, operating: float) -> dict[str, Any]:
        now = time.time()
        spent = self._window(method)
        reset_at = int((spent[0][0] if spent else now) + self.operating_window)
        return {
            "start": now,
            "finish": now,
            "duration": 0.001,
            "processing": 0.0005,
            "date_start": datetime.now(UTC).isoformat(),
            "date_finish": datetime.now(UTC).isoformat(),
            "operating_reset_at": reset_at,
            "operating": operating,
        }

    def _answer(self, method: str, result: Any, operating: float, **extra: Any) -> web.Response:
        self.answers.append((method, 200, ""))
        return web.json_response({"result": result, **extra, "time": self._time(method, operating)})

    def _error(self, exc: ApiError, method: str = "") -> web.Response:
        self.answers.append((method, exc.status, exc.code))
        return web.json_response({"error": exc.code, "error_description": exc.description}, status=exc.status)

    async def _webhook(self, request: web.Request) -> web.Response:
        if request.match_info["user"] != self.user or request.match_info["code"] != self.code:
            return self._error(ApiError(401, "INVALID_CREDENTIALS", "Invalid request credentials"))
        return await self._serve(request, request.match_info["method"], None)

    async def _oauth(self, request: web.Request) -> web.Response:
        return await self._serve(request, request.match_info["method"], "auth")

    async def _token(self, request: web.Request) -> web.Response:
        q = request.query
        if (
            q.get("grant_type") != "refresh_token"
            or q.get("client_id") != self.client_id
            or q.get("client_secret") != self.client_secret
            or q.get("refresh_token") != self.refresh_token
        ):
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid refresh token"}, status=400)
        n = int(self.refresh_token.split("-")[1]) + 1
        self.access_token, self.refresh_token = f"token-{n}", f"refresh-{n}"
        return web.json_response(
            {"access_token": self.access_token, "refresh_token": self.refresh_token, "expires_in": 3600, "scope": "crm"}
        )

    def _take_token(self) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._at) * self.rate)
        self._at = now
        if self._level + 1 > self.burst:
            return False
        self._level += 1
        return True

    async def _serve(self, request: web.Request, method: str, auth: str | None) -> web.Response:
        method = method.removesuffix(".json")
        try:
            params = await request.json() if request.can_read_body else {}
        except ValueError:
            return self._error(ApiError(400, "INVALID_REQUEST", "the body is not JSON"))
        if not isinstance(params, dict):
            return self._error(ApiError(400, "INVALID_REQUEST", "the body is not an object"))
        if auth is not None:
            token = params.pop("auth", "")
            if token != self.access_token:
                if token and token.startswith("token-"):
                    return self._error(ApiError(401, "expired_token", "The access token provided has expired."))
                return self._error(ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data"))
        self.calls.append((method, params))
        if method in self.scripted:
            status, body = self.scripted.pop(method)
            error = body.get("error", "") if isinstance(body, dict) and "error" in body else ""
            self.answers.append((method, status, str(error)))
            return web.json_response(body, status=status)
        if self.limited or time.monotonic() < self.limited_until or not self._take_token():
            return self._error(ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"), method)
        if self.blocked_until(method):
            return self._error(ApiError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit"), method)
        try:
            result, extra = self._call(method, params)
        except ApiError as exc:
            return self._error(exc, method)
        operating = self._operate(method)
        if self.hold and method == self.hold:
            self.held.set()
            await self.release.wait()
        return self._answer(method, result, operating, **extra)

    # -- methods -------------------------------------------------------------

    def _call(self, method: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if method == "batch":
            results: dict[str, Any] = {}
            errors: dict[str, Any] = {}
            for name, cmd in (params.get("cmd") or {}).items():
                sub_method, _, query = str(cmd).partition("?")
                try:
                    if self.blocked_until(sub_method):
                        raise ApiError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit")
                    results[name], _ = self._call(sub_method, parse_php_query(query))
                    self._operate(sub_method)
                except ApiError as exc:
                    errors[name] = {"error": exc.code, "error_description": exc.description}
            return {"result": results, "result_error": errors, "result_total": [], "result_next": [], "result_time": {}}, {}
        if method == "profile":
            return {"ID": self.user, "ADMIN": True, "NAME": "Webhook", "LAST_NAME": "User"}, {}
        if method == "scope":
            return list(self.scopes), {}
        if method == "crm.status.list":
            entity = (params.get("filter") or {}).get("ENTITY_ID", "SOURCE")
            rows = [{"ENTITY_ID": entity, "STATUS_ID": s, "NAME": s.title()} for s in self.sources] if entity == "SOURCE" else []
            return rows, {"total": len(rows)}
        if method == "crm.duplicate.findbycomm":
            return self._findbycomm(params), {}
        m = re.fullmatch(r"crm\.(contact|lead|deal|activity)\.(add|update|get|list|delete)", method)
        if m is None:
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if method in self.denied:
            raise ApiError(403, "", "Access denied.")
        kind, op = m.groups()
        if op == "add":
            fields = params.get("fields")
            if not isinstance(fields, dict):
                raise ApiError(400, "", "The parameter 'fields' must be array.")
            if kind == "activity":
                for need in ("OWNER_ID", "OWNER_TYPE_ID", "TYPE_ID"):
                    if not fields.get(need):
                        raise ApiError(400, "", f"The field {need} is not defined or invalid.")
                if not fields.get("COMMUNICATIONS"):
                    raise ApiError(400, "", "The field COMMUNICATIONS is not defined or invalid.")
            return self._add(kind, fields), {}
        if op in ("get", "update", "delete") and _int(params.get("id")) <= 0:
            raise ApiError(400, "", "ID is not defined or invalid.")
        if op == "get":
            rec = self.records[kind].get(_int(params.get("id")))
            if rec is None:
                raise ApiError(400, "", "Not found")
            return self._out(rec), {}
        if op == "delete":  # a manager removing a record in the portal
            gone = _int(params.get("id"))
            if self.records[kind].pop(gone, None) is None:
                raise ApiError(400, "", "Not found")
            if kind != "activity":  # the portal deletes the activities filed on it with it (DeleteByOwner)
                owner_type = next(str(t) for t, name in OWNER_TYPES.items() if name == kind)
                for act_id, act in list(self.records["activity"].items()):
                    if str(act.get("OWNER_TYPE_ID")) == owner_type and _int(act.get("OWNER_ID")) == gone:
                        del self.records["activity"][act_id]
            return True, {}
        if op == "update":
            rec = self.records[kind].get(_int(params.get("id")))
            if rec is None:
                raise ApiError(400, "", "Not found")
            self._merge(rec, params.get("fields") or {})
            return True, {}
        flt = params.get("filter") or {}
        rows = [self._out(r) for r in self.records[kind].values() if all(str(r.get(k, "")) == str(v) for k, v in flt.items())]
        return rows, {"total": len(rows)}

    def _add(self, kind: str, fields: dict[str, Any]) -> int:
        new_id = self.next_id[kind]
        self.next_id[kind] += 1
        rec: dict[str, Any] = {"ID": new_id, "DATE_CREATE": datetime.now(UTC).isoformat()}
        if kind == "lead":
            rec["STATUS_ID"] = "NEW"
        if kind == "deal":
            rec.update(CATEGORY_ID="0", STAGE_ID="NEW")
        rec.setdefault("ASSIGNED_BY_ID", self.user)
        self._merge(rec, fields)
        self.records[kind][new_id] = rec
        return new_id

    def _merge(self, rec: dict[str, Any], fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key in MULTI and isinstance(value, list):
                items = rec.setdefault(key, [])
                for item in value:
                    if item.get("ID"):
                        continue
                    self.next_id["multi"] += 1
                    items.append(
                        {"ID": str(self.next_id["multi"]), "VALUE": item.get("VALUE"), "VALUE_TYPE": item.get("VALUE_TYPE")}
                    )
            else:
                rec[key] = value

    @staticmethod
    def _out(rec: dict[str, Any]) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v) for k, v in rec.items()}

    def _findbycomm(self, params: dict[str, Any]) -> Any:
        if "crm.duplicate.findbycomm" in self.denied:
            raise ApiError(403, "Access denied", "Access denied.")
        typ = params.get("type")
        if not typ:
            raise ApiError(400, "Communication type is not defined", "Parameter 'type' is required.")
        if typ not in ("PHONE", "EMAIL"):
            raise ApiError(400, f"Communication type '{typ}' is not supported in current context", "")
        values = params.get("values") or []
        if not values or not isinstance(values, list):
            raise ApiError(400, "Communication values is not defined", "Parameter 'values' is required.")
        if len(values) > 20:
            raise ApiError(400, "Too many communication values", "At most 20 values are accepted.")

        def norm(v: str) -> str:
            return re.sub(r"\D", "", v) if typ == "PHONE" else v.lower()

        wanted = {norm(str(v)) for v in values}
        only = params.get("entity_type")
        found: dict[str, list[int]] = {}
        for kind, label in (("lead", "LEAD"), ("contact", "CONTACT")):
            if only and only != label:
                continue
            for rec_id, rec in self.records[kind].items():
                if any(norm(str(item.get("VALUE", ""))) in wanted for item in rec.get(typ, [])):
                    found.setdefault(label, []).append(rec_id)
            if len(found.get(label, [])) >= FINDBYCOMM_MAX_PER_TYPE:
                break  # the portal stops at the first type with 20 or more: the others are not returned
        return found or []


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


@asynccontextmanager
async def running_bitrix24(**kw: Any) -> AsyncIterator[Bitrix24Peer]:
    peer = Bitrix24Peer(**kw)
    await peer.start()
    try:
        yield peer
    finally:
        peer.release.set()
        await peer.stop()
