"""Bitrix24 REST: a small aiohttp client (rate limit, back-off, token refresh)
and the backend that maps our records to CRM fields.

Protocol facts used (Bitrix24 REST docs):
- ``POST <base>/<method>`` with a JSON body. ``base`` is an inbound webhook
  ``https://<portal>/rest/<user>/<code>/``, or ``https://<portal>/rest/`` with
  ``auth=<access token>`` for OAuth.
- Success ``{"result": ..., "time": {...}}`` (lists add ``total``/``next``);
  ``time.operating_reset_at`` says when part of the method's operating-time
  budget is freed.
  Errors ``{"error": CODE, "error_description": text}``: ``QUERY_LIMIT_EXCEEDED``
  (HTTP 503) = too many requests, ``OPERATION_TIME_LIMIT`` (HTTP 429) = this
  method used up its 480 s of operating time in 10 minutes and is blocked
  (only it), ``expired_token`` (401) = refresh the OAuth token. A method's own
  refusals often carry an empty code with the text ("Not found", "Access
  denied."), ``crm.duplicate.findbycomm`` a sentence as the code.
- The portal allows a burst then about 2 requests/s per application (a leaky
  bucket); we keep under it ourselves and back off when told.
- ``batch`` runs up to 50 calls given as ``method?query`` strings in one request.

A create (``*.add``) is sent once per call: a refusal to slow down or a lost
answer goes back to the caller, which searches by ``ORIGIN_ID`` before it
tries again (decision 015); reads are retried here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from crm_sync.backends.base import Activity, CrmGone, CrmRejected, CrmUnavailable, Entity, Guard, Kind, Matches
from crm_sync.core.decide import pick

log = logging.getLogger("crm_sync.bitrix24")

OWNER_TYPE = {"lead": 1, "deal": 2, "contact": 3}
ORIGINATOR = "openlines"
ENTITY_SELECT = [
    "ID",
    "TITLE",
    "NAME",
    "SOURCE_ID",
    "STATUS_ID",
    "STAGE_ID",
    "CATEGORY_ID",
    "CONTACT_ID",
    "ASSIGNED_BY_ID",
    "ORIGIN_ID",
]


class Tokens(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str = ""


class LeakyBucket:
    """Client-side rate limit: ``burst`` requests at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = max(rate, 0.01)
        self.burst = max(burst, 1)
        self.level = 0.0
        self.at = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = max(0.0, self.level - (now - self.at) * self.rate)
                self.at = now
                if self.level + 1 <= self.burst:
                    self.level += 1
                    return
                await asyncio.sleep((self.level + 1 - self.burst) / self.rate)


def query_string(params: dict[str, Any]) -> str:
    """PHP ``http_build_query`` form, as ``batch`` commands are written: ``filter[ORIGIN_ID]=x&select[0]=ID``."""
    parts: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}[{k}]" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            parts.append(f"{quote(prefix, safe='[]')}={quote(str(value), safe='')}")

    walk("", params)
    return "&".join(parts)


class BitrixError(Exception):
    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.status = status
        self.code = code
        self.description = description


def _not_found(exc: BitrixError) -> bool:
    """The portal has no such record: a classic CRM method answers an empty code with "Not found", the
    newer ones ERROR_CORE "Element not found", some NOT_FOUND."""
    return exc.code == "NOT_FOUND" or "not found" in exc.description.lower()


def _refused(method: str, exc: BitrixError) -> CrmRejected:
    return CrmGone(f"{method}: {exc}") if _not_found(exc) else CrmRejected(f"{method}: {exc}")


class Bitrix24Client:
    def __init__(
        self,
        *,
        webhook: str = "",
        portal: str = "",
        tokens: Tokens | None = None,
        oauth_url: str = "https://oauth.bitrix.info/oauth/token/",
        client_id: str = "",
        client_secret: str = "",
        on_tokens: Callable[[Tokens], Awaitable[None]] | None = None,
        rate: float = 2.0,
        burst: int = 50,
        timeout: float = 10.0,
        limit_retries: int = 5,
        backoff: float = 1.0,
    ) -> None:
        if not webhook and not (portal and tokens):
            raise ValueError("Bitrix24 needs an inbound webhook URL, or a portal URL with an OAuth access token")
        self.base = (webhook or portal.rstrip("/") + "/rest/").rstrip("/") + "/"
        self.tokens = tokens if not webhook else None
        self.oauth_url = oauth_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.on_tokens = on_tokens
        self.bucket = LeakyBucket(rate, burst)
        self.timeout = timeout
        self.limit_retries = limit_retries
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None
        self._refresh_lock = asyncio.Lock()
        self.reset_at: dict[str, float] = {}  # method -> epoch seconds: operating_reset_at of its last answer
        self.blocked: dict[str, float] = {}  # method -> epoch seconds until which the portal blocks it

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, method: str, params: dict[str, Any], guard: Guard | None = None) -> dict[str, Any]:
        body = dict(params)
        if self.tokens is not None:
            body["auth"] = self.tokens.access_token
        await self.bucket.acquire()
        if guard is not None:
            await guard()  # after the wait for our turn, right before the request leaves
        try:
            async with self._http().post(self.base + method, json=body) as resp:
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CrmUnavailable(f"Bitrix24 not reachable ({method}): {exc.__class__.__name__}") from None
        if not isinstance(data, dict):
            if status >= 500 or status == 429:
                raise CrmUnavailable(f"Bitrix24 answered HTTP {status} to {method}")
            raise BitrixError(status, f"HTTP_{status}", "not a JSON answer")
        if "error" in data:
            raise BitrixError(status, str(data.get("error") or f"HTTP_{status}"), str(data.get("error_description", "")))
        if status >= 400:
            raise BitrixError(status, f"HTTP_{status}", "error without a code")
        timing = data.get("time")
        if isinstance(timing, dict) and isinstance(timing.get("operating_reset_at"), int | float):
            self.reset_at[method] = float(timing["operating_reset_at"])
        return data

    def _blocked_for(self, method: str) -> float:
        """Seconds ``method`` stays blocked by the portal's operating-time limit (0 = not blocked)."""
        until = self.blocked.get(method, 0.0)
        left = until - time.time()
        if left <= 0:
            self.blocked.pop(method, None)
            return 0.0
        return left

    def _block(self, method: str, fallback: float) -> float:
        """Remember that the portal blocked ``method``; returns the seconds to wait.

        Until ``operating_reset_at`` of the method's last answer, when the portal said
        when; else our own back-off: asking again at once only spends more of the budget.
        """
        now = time.time()
        reset = self.reset_at.get(method, 0.0)
        until = reset if reset > now else now + fallback
        self.blocked[method] = until
        return until - now

    async def raw(
        self, method: str, params: dict[str, Any] | None = None, *, once: bool = False, guard: Guard | None = None
    ) -> dict[str, Any]:
        """One call with the retries every call needs; returns the whole answer.

        ``once``: a create - not repeated here when the portal asks to slow down
        (CrmUnavailable with the wait goes to the caller, who searches before it
        sends it again). ``guard`` runs right before each request is sent.
        """
        limited = 0
        refreshed = False
        delay = self.backoff
        while True:
            blocked = self._blocked_for(method)
            if blocked:
                raise CrmUnavailable(f"Bitrix24 blocks {method} for {blocked:.0f} s (OPERATION_TIME_LIMIT)", blocked)
            try:
                return await self._post(method, params or {}, guard)
            except BitrixError as exc:
                if exc.code == "OPERATION_TIME_LIMIT":
                    wait = self._block(method, max(delay, 1.0))
                    log.info("bitrix24 blocks a method: operating time used up", extra={"method": method, "retry_in_s": wait})
                    raise CrmUnavailable(f"Bitrix24 blocks {method}: OPERATION_TIME_LIMIT", wait) from None
                if exc.code == "QUERY_LIMIT_EXCEEDED" or exc.status in (429, 502, 503, 504):
                    limited += 1
                    if once or limited > self.limit_retries:
                        raise CrmUnavailable(f"Bitrix24 keeps refusing {method}: {exc.code}", delay) from None
                    log.info("bitrix24 asks to slow down", extra={"method": method, "code": exc.code, "retry_in_s": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if exc.code in ("expired_token", "invalid_token") and not refreshed and self.tokens is not None:
                    refreshed = True
                    await self._refresh(self.tokens.access_token)
                    continue
                if exc.code in ("expired_token", "invalid_token", "NO_AUTH_FOUND"):
                    raise CrmUnavailable(f"Bitrix24 refused the credentials ({exc.code}); renew the token or webhook") from None
                if exc.status >= 500:
                    raise CrmUnavailable(f"Bitrix24 error {exc.code} on {method}") from None
                raise

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, once: bool = False, guard: Guard | None = None
    ) -> Any:
        return (await self.raw(method, params, once=once, guard=guard)).get("result")

    async def batch(self, cmds: dict[str, tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Up to 50 calls in one request: (results by name, errors by name)."""
        cmd = {name: f"{method}?{query_string(params)}" for name, (method, params) in cmds.items()}
        result = await self.call("batch", {"halt": 0, "cmd": cmd})
        result = result if isinstance(result, dict) else {}
        ok = result.get("result") or {}
        errors = result.get("result_error") or {}
        return (ok if isinstance(ok, dict) else {}), (errors if isinstance(errors, dict) else {})

    async def _refresh(self, stale: str) -> None:
        async with self._refresh_lock:
            assert self.tokens is not None
            if self.tokens.access_token != stale:
                return  # another call refreshed it meanwhile
            if not (self.tokens.refresh_token and self.client_id and self.client_secret):
                raise CrmUnavailable("Bitrix24 access token expired and no refresh token / client id / secret is configured")
            params = {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "refresh_token": self.tokens.refresh_token,
            }
            try:
                async with self._http().get(self.oauth_url, params=params) as resp:
                    data = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise CrmUnavailable(f"Bitrix24 token refresh failed: {exc.__class__.__name__}") from None
            if not isinstance(data, dict) or not data.get("access_token"):
                raise CrmUnavailable("Bitrix24 token refresh refused")
            self.tokens = Tokens(access_token=str(data["access_token"]), refresh_token=str(data.get("refresh_token", "")))
            log.info("bitrix24 access token refreshed")
            if self.on_tokens is not None:
                await self.on_tokens(self.tokens)


def _multi(values: list[str], value_type: str) -> list[dict[str, str]]:
    return [{"VALUE": v, "VALUE_TYPE": value_type} for v in values]


def _when(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else ""


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


class Bitrix24Backend:
    name = "bitrix24"

    def __init__(self, client: Bitrix24Client, activity_type: int = 1) -> None:
        self.client = client
        self.activity_type = activity_type

    def fields(self, e: Entity) -> dict[str, Any]:
        f: dict[str, Any] = {}
        if e.title:
            f["TITLE"] = e.title
        if e.name:
            f["NAME"] = e.name
        if e.phones:
            f["PHONE"] = _multi(e.phones, "WORK")
        if e.emails:
            f["EMAIL"] = _multi(e.emails, "WORK")
        if e.im:
            f["IM"] = _multi(e.im, "IMOL")
        if e.source_id:
            f["SOURCE_ID"] = e.source_id
        if e.source_description:
            f["SOURCE_DESCRIPTION"] = e.source_description
        if e.stage:
            f["STATUS_ID" if e.kind == "lead" else "STAGE_ID"] = e.stage
        if e.pipeline and e.kind == "deal":
            f["CATEGORY_ID"] = e.pipeline
        if e.contact_id and e.kind != "contact":
            f["CONTACT_ID"] = e.contact_id
        if e.assigned_by:
            f["ASSIGNED_BY_ID"] = e.assigned_by
        if e.origin:
            f["ORIGINATOR_ID"] = ORIGINATOR
            f["ORIGIN_ID"] = e.origin
        if e.comments:
            f["COMMENTS"] = e.comments
        return f

    @staticmethod
    def entity(kind: Kind, row: dict[str, Any]) -> Entity:
        def s(key: str) -> str:
            v = row.get(key)
            return "" if v is None else str(v)

        return Entity(
            kind=kind,
            id=s("ID"),
            title=s("TITLE"),
            name=s("NAME"),
            source_id=s("SOURCE_ID"),
            stage=s("STATUS_ID") if kind == "lead" else s("STAGE_ID"),
            pipeline=s("CATEGORY_ID"),
            contact_id=s("CONTACT_ID") if kind != "contact" else "",
            assigned_by=s("ASSIGNED_BY_ID"),
            origin=s("ORIGIN_ID"),
        )

    async def find_by_origin(self, kind: Kind, origin: str) -> Entity | None:
        rows = await self.client.call(f"crm.{kind}.list", {"filter": {"ORIGIN_ID": origin}, "select": ENTITY_SELECT})
        if not isinstance(rows, list) or not rows:
            return None
        return self.entity(kind, min(rows, key=lambda r: int(r.get("ID", 0))))

    async def find_by_comm(self, phones: list[str], emails: list[str]) -> Matches:
        cmds: dict[str, tuple[str, dict[str, Any]]] = {}
        if phones:
            cmds["phone"] = ("crm.duplicate.findbycomm", {"type": "PHONE", "values": phones[:20]})
        if emails:
            cmds["email"] = ("crm.duplicate.findbycomm", {"type": "EMAIL", "values": emails[:20]})
        if not cmds:
            return Matches()
        if len(cmds) == 1:
            name, (method, params) = next(iter(cmds.items()))
            results: dict[str, Any] = {name: await self.client.call(method, params)}
        else:
            results, errors = await self.client.batch(cmds)
            if errors:
                raise CrmRejected(f"crm.duplicate.findbycomm failed: {errors}")
        contacts: list[str] = []
        leads: list[str] = []
        for found in results.values():
            if isinstance(found, dict):  # nothing found is an empty list
                contacts += [i for i in _ids(found.get("CONTACT")) if i not in contacts]
                leads += [i for i in _ids(found.get("LEAD")) if i not in leads]
        return Matches(contacts=contacts, leads=leads)

    async def identify(self, code: str, phones: list[str], emails: list[str]) -> Entity | None:
        """One ``batch`` for every way of finding the client, then at most one ``get``: two round trips."""
        cmds: dict[str, tuple[str, dict[str, Any]]] = {
            f"{kind}_origin": (f"crm.{kind}.list", {"filter": {"ORIGIN_ID": code}, "select": ENTITY_SELECT})
            for kind in ("contact", "lead")
        }
        if phones:
            cmds["phone"] = ("crm.duplicate.findbycomm", {"type": "PHONE", "values": phones[:20]})
        if emails:
            cmds["email"] = ("crm.duplicate.findbycomm", {"type": "EMAIL", "values": emails[:20]})
        results, errors = await self.client.batch(cmds)
        if errors:
            log.info("some look-ups of a client failed", extra={"errors": str(errors)[:300]})
        for kind in ("contact", "lead"):
            rows = results.get(f"{kind}_origin")
            if isinstance(rows, list) and rows:
                return self.entity(kind, min(rows, key=lambda r: int(r.get("ID", 0))))
        contacts: list[str] = []
        leads: list[str] = []
        for name in ("phone", "email"):
            found = results.get(name)
            if isinstance(found, dict):
                contacts += _ids(found.get("CONTACT"))
                leads += _ids(found.get("LEAD"))
        if contacts:
            return await self.get("contact", pick(contacts))
        if leads:
            return await self.get("lead", pick(leads))
        return None

    async def get(self, kind: Kind, entity_id: str) -> Entity | None:
        try:
            row = await self.client.call(f"crm.{kind}.get", {"id": entity_id})
        except BitrixError as exc:
            if _not_found(exc):
                return None
            raise CrmRejected(str(exc)) from None
        return self.entity(kind, row) if isinstance(row, dict) else None

    async def create(self, entity: Entity, guard: Guard | None = None) -> str:
        try:
            new_id = await self.client.call(
                f"crm.{entity.kind}.add",
                {"fields": self.fields(entity), "params": {"REGISTER_SONET_EVENT": "Y"}},
                once=True,
                guard=guard,
            )
        except BitrixError as exc:
            raise CrmRejected(f"crm.{entity.kind}.add: {exc}") from None
        return str(new_id)

    async def update(self, entity: Entity) -> None:
        if entity.phones or entity.emails or entity.im:
            # Multi-fields without an ID are appended by the portal: send only values it lacks.
            try:
                row = await self.client.call(f"crm.{entity.kind}.get", {"id": entity.id})
            except BitrixError as exc:
                raise _refused(f"crm.{entity.kind}.get", exc) from None
            row = row if isinstance(row, dict) else {}

            def have(field: str) -> set[str]:
                items = row.get(field)
                return (
                    {str(i.get("VALUE", "")).lower() for i in items if isinstance(i, dict)} if isinstance(items, list) else set()
                )

            entity = msgspec.structs.replace(
                entity,
                phones=[p for p in entity.phones if p.lower() not in have("PHONE")],
                emails=[e for e in entity.emails if e.lower() not in have("EMAIL")],
                im=[c for c in entity.im if c.lower() not in have("IM")],
            )
        fields = self.fields(msgspec.structs.replace(entity, origin=""))
        if not fields:
            return
        try:
            await self.client.call(f"crm.{entity.kind}.update", {"id": entity.id, "fields": fields})
        except BitrixError as exc:
            raise _refused(f"crm.{entity.kind}.update", exc) from None

    async def find_activity(self, origin: str) -> str | None:
        rows = await self.client.call("crm.activity.list", {"filter": {"ORIGIN_ID": origin}, "select": ["ID"]})
        if not isinstance(rows, list) or not rows:
            return None
        return str(min(int(r["ID"]) for r in rows))

    def activity_fields(self, a: Activity, new: bool) -> dict[str, Any]:
        f: dict[str, Any] = {}
        if new:
            f.update(
                OWNER_TYPE_ID=OWNER_TYPE[a.owner_kind],
                OWNER_ID=a.owner_id,
                TYPE_ID=self.activity_type,
                DIRECTION=1,  # incoming: nothing is ever sent by the CRM
                COMMUNICATIONS=[
                    {"VALUE": a.client_name or a.client_code, "ENTITY_ID": a.owner_id, "ENTITY_TYPE_ID": OWNER_TYPE[a.owner_kind]}
                ],
                ORIGINATOR_ID=ORIGINATOR,
                ORIGIN_ID=a.origin,
                DESCRIPTION_TYPE=1,  # plain text
                START_TIME=_when(a.start),
            )
        if a.subject:
            f["SUBJECT"] = a.subject
        if a.description:
            f["DESCRIPTION"] = a.description
            f["DESCRIPTION_TYPE"] = 1
        if a.responsible:
            f["RESPONSIBLE_ID"] = a.responsible
        if a.end:
            f["END_TIME"] = _when(a.end)
        f["COMPLETED"] = "Y" if a.completed else "N"
        return f

    async def add_activity(self, activity: Activity, guard: Guard | None = None) -> str:
        try:
            return str(
                await self.client.call(
                    "crm.activity.add", {"fields": self.activity_fields(activity, True)}, once=True, guard=guard
                )
            )
        except BitrixError as exc:
            raise CrmRejected(f"crm.activity.add: {exc}") from None

    async def update_activity(self, activity: Activity) -> None:
        try:
            await self.client.call("crm.activity.update", {"id": activity.id, "fields": self.activity_fields(activity, False)})
        except BitrixError as exc:
            raise _refused("crm.activity.update", exc) from None

    async def check(self) -> list[str]:
        out: list[str] = []
        try:
            profile = await self.client.call("profile")
            scopes = await self.client.call("scope")
        except BitrixError as exc:
            raise CrmRejected(f"Bitrix24 refused the connection check: {exc}") from None
        who = profile.get("NAME") or profile.get("ID") if isinstance(profile, dict) else "?"
        out.append(f"Bitrix24 at {self.client.base.split('/rest/')[0]}: connected as {who}")
        if not isinstance(scopes, list) or "crm" not in scopes:
            raise CrmRejected(f"the webhook / application lacks the 'crm' scope (has: {scopes})")
        out.append(f"scopes: {', '.join(str(s) for s in scopes)} (crm present)")
        return out

    async def sources(self) -> list[str] | None:
        rows = await self.client.call("crm.status.list", {"filter": {"ENTITY_ID": "SOURCE"}})
        return [str(r.get("STATUS_ID")) for r in rows] if isinstance(rows, list) else None

    async def close(self) -> None:
        await self.client.close()
