"""The built-in CRM as the desk shows it: read straight from crm-sync's KV buckets.

crm-sync owns these buckets (``ol-crm-*``, names in ``openlines.subjects``)
and writes them; the desk only reads them, decoding every record as plain
JSON so that it never depends on crm-sync's code. A bucket that does not
exist yet (crm-sync never ran) reads as empty.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from openlines import subjects
from openlines.bus import kv_entries
from openlines.state import link_client_key, link_session_key

KINDS = ("lead", "deal", "contact")
BUCKET_OF = subjects.CRM_RECORD_BUCKETS
SHOWN_PER_KIND = 200  # the page lists at most this many records of a kind (newest first)
MAX_QUERY = 100
_DIGITS = re.compile(r"\D+")


def record_ref(kind: str, record_id: str) -> str:
    """The anchor / query value of one record on the CRM page: ``lead-5``."""
    return f"{kind}-{record_id}"


def parse_ref(ref: str) -> tuple[str, str] | None:
    kind, _, record_id = ref.partition("-")
    if kind not in KINDS or not record_id.isdigit() or len(record_id) > 12:
        return None
    return kind, record_id


def _id_order(record: dict[str, Any]) -> int:
    value = str(record.get("id", ""))
    return int(value) if value.isdigit() else 0


def _texts(record: dict[str, Any]) -> list[str]:
    out = [str(record.get(k, "")) for k in ("name", "title", "source_id")]
    out += [str(v) for k in ("phones", "emails", "im") for v in record.get(k) or []]
    return [t for t in out if t]


def matches(record: dict[str, Any], query: str) -> bool:
    """Case-insensitive search in name, title, e-mail and channel identity; digits of a phone."""
    q = query.strip().lower()
    if not q:
        return True
    if any(q in text.lower() for text in _texts(record)):
        return True
    digits = _DIGITS.sub("", q)
    return len(digits) >= 3 and any(digits in _DIGITS.sub("", str(p)) for p in record.get("phones") or [])


@dataclass(slots=True)
class CrmView:
    """What the CRM page shows."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> newest first
    totals: dict[str, int] = field(default_factory=dict)  # kind -> matching records before the cap
    activities: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "<kind>-<id>" -> activities
    present: bool = False  # any built-in CRM bucket exists


class CrmReader:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._links: KeyValue | None = None

    async def _bucket(self, name: str) -> list[dict[str, Any]] | None:
        """Every record of a bucket as JSON objects, or None when the bucket does not exist."""
        try:
            await self.js.stream_info(f"KV_{name}")
        except NotFoundError:
            return None
        out: list[dict[str, Any]] = []
        for _rev, data in (await kv_entries(self.js, name)).values():
            try:
                value = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue  # one bad record must not hide the others
            if isinstance(value, dict):
                out.append(value)
        return out

    async def view(self, query: str = "", ref: tuple[str, str] | None = None) -> CrmView:
        names = [BUCKET_OF[k] for k in (*KINDS, "activity")]
        loaded = await asyncio.gather(*(self._bucket(n) for n in names))
        by_kind = dict(zip((*KINDS, "activity"), loaded, strict=True))
        out = CrmView(present=any(v is not None for v in loaded))
        for kind in KINDS:
            rows = [r for r in by_kind[kind] or [] if matches(r, query)]
            if ref is not None:
                rows = [r for r in rows if ref == (kind, str(r.get("id", "")))]
            rows.sort(key=_id_order, reverse=True)
            out.totals[kind] = len(rows)
            out.records[kind] = rows[:SHOWN_PER_KIND]
        for act in sorted(by_kind["activity"] or [], key=_id_order, reverse=True):
            key = record_ref(str(act.get("owner_kind", "")), str(act.get("owner_id", "")))
            out.activities.setdefault(key, []).append(act)
        return out

    async def client_link(self, client_id: str) -> dict[str, Any] | None:
        """crm-sync's ``client.<client id>`` record in ``ol-crm-links``, as JSON; None when not linked."""
        value = await self._link(link_client_key(client_id))
        return value if isinstance(value, dict) else None

    async def session_filed(self, session_id: str) -> bool:
        """Whether crm-sync filed this session on a CRM record (``session.<id>`` with an owner)."""
        value = await self._link(link_session_key(session_id))
        return isinstance(value, dict) and bool(value.get("owner_id"))

    async def _link(self, key: str) -> Any:
        """The JSON value of ``key`` in ``ol-crm-links``; None when the bucket or key is missing, empty or not JSON."""
        if self._links is None:
            try:
                self._links = await self.js.key_value(subjects.KV_CRM_LINKS)
            except NotFoundError:
                return None
        try:
            entry = await self._links.get(key)
        except NotFoundError:  # KeyNotFoundError and KeyDeletedError are NotFoundErrors
            return None
        try:
            return msgspec.json.decode(entry.value or b"null")
        except msgspec.DecodeError:
            return None
