"""The built-in CRM: contacts, leads, deals and activities in JetStream KV
buckets of crm-sync's own, so the system is useful with no external CRM.

Ids are small integers per kind (like Bitrix24's), allocated by
compare-and-set on a counter. A create with an origin first claims
``origin.<kind>.<hash>`` with ``kv.create`` (which fails when the key
exists), so two attempts at the same intent - a retry after a crash - end
on the same id.
"""

from __future__ import annotations

import hashlib

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from crm_sync.backends.base import KINDS, Activity, Entity, Guard, Kind, Matches
from crm_sync.core.decide import pick
from openlines import bus, subjects
from openlines.bus import kv_entries, kv_get, kv_update
from openlines.envelopes import utcnow

KV_CONTACTS = subjects.KV_CRM_CONTACTS
KV_LEADS = subjects.KV_CRM_LEADS
KV_DEALS = subjects.KV_CRM_DEALS
KV_ACTIVITIES = subjects.KV_CRM_ACTIVITIES
KV_INDEX = subjects.KV_CRM_INDEX  # id counters, origin -> id, phone/e-mail -> records
BUCKETS = {**subjects.CRM_RECORD_BUCKETS, "index": KV_INDEX}


def _h(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=12).hexdigest()


class Counter(msgspec.Struct):
    last: int = 0


class CommRefs(msgspec.Struct):
    refs: list[str] = []  # "<kind>:<id>"


async def open_buckets(js: JetStreamContext, replicas: int = 1) -> dict[str, KeyValue]:
    out: dict[str, KeyValue] = {}
    for role, name in BUCKETS.items():
        out[role] = await bus.own_bucket(js, name, replicas=replicas)
    return out


class BuiltinBackend:
    name = "builtin"

    def __init__(self, js: JetStreamContext, buckets: dict[str, KeyValue]) -> None:
        self.js = js
        self.kv = buckets
        self.index = buckets["index"]

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> BuiltinBackend:
        return cls(js, await open_buckets(js, replicas))

    async def _all(self, role: str) -> list[bytes]:
        # Read from the stream, not KeyValue.keys(): that can answer empty for a full bucket under load.
        return [value for _, value in (await kv_entries(self.js, BUCKETS[role])).values() if value]

    # -- ids and indexes ------------------------------------------------

    async def _next_id(self, kind: str) -> str:
        def bump(c: Counter | None) -> Counter:
            return Counter(last=(c.last if c else 0) + 1)

        c = await kv_update(self.index, f"seq.{kind}", Counter, bump)
        assert c is not None
        return str(c.last)

    async def _claim_origin(self, kind: str, origin: str, new_id: str) -> str:
        """The id this origin belongs to: ``new_id`` if we got there first, else the earlier one."""
        key = f"origin.{kind}.{_h(origin)}"
        try:
            await self.index.create(key, new_id.encode())
            return new_id
        except (KeyWrongLastSequenceError, BadRequestError):
            entry = await self.index.get(key)
            return (entry.value or b"").decode()

    async def _origin_id(self, kind: str, origin: str) -> str | None:
        try:
            entry = await self.index.get(f"origin.{kind}.{_h(origin)}")
        except Exception:
            return None
        return entry.value.decode() if entry.value else None

    async def _index_comms(self, ref: str, values: list[str]) -> None:
        for value in values:

            def add(c: CommRefs | None) -> CommRefs | None:
                refs = c.refs if c else []
                return None if ref in refs else CommRefs(refs=[*refs, ref])

            await kv_update(self.index, f"comm.{_h(value)}", CommRefs, add)

    # -- records ----------------------------------------------------------

    async def find_by_origin(self, kind: Kind, origin: str) -> Entity | None:
        entity_id = await self._origin_id(kind, origin)
        return await self.get(kind, entity_id) if entity_id else None

    async def find_by_comm(self, phones: list[str], emails: list[str]) -> Matches:
        """The contacts and leads a phone or e-mail is on. Only records that exist: :meth:`create` indexes the
        phones and e-mails before it writes the record, so an attempt cut off in between (killed, NATS away)
        leaves index entries for a record that is not there until a retry writes it - matched, such an id
        linked a client to a lead that did not exist (found by the fault suite on a 3-node cluster)."""
        contacts: list[str] = []
        leads: list[str] = []
        for value in [*phones, *emails]:
            refs, _ = await kv_get(self.index, f"comm.{_h(value)}", CommRefs)
            for ref in refs.refs if refs else []:
                kind, _, entity_id = ref.partition(":")
                target = contacts if kind == "contact" else leads if kind == "lead" else None
                if target is None or entity_id in target:
                    continue
                if await self.get("contact" if kind == "contact" else "lead", entity_id) is not None:
                    target.append(entity_id)
        return Matches(contacts=contacts, leads=leads)

    async def get(self, kind: Kind, entity_id: str) -> Entity | None:
        entity, _ = await kv_get(self.kv[kind], entity_id, Entity)
        return entity

    async def identify(self, code: str, phones: list[str], emails: list[str]) -> Entity | None:
        for kind in ("contact", "lead"):
            found = await self.find_by_origin(kind, code)
            if found is not None:
                return found
        matches = await self.find_by_comm(phones, emails)
        if matches.contacts:
            return await self.get("contact", pick(matches.contacts))
        if matches.leads:
            return await self.get("lead", pick(matches.leads))
        return None

    async def create(self, entity: Entity, guard: Guard | None = None) -> str:
        if guard is not None:
            await guard()
        candidate = await self._next_id(entity.kind)
        entity_id = await self._claim_origin(entity.kind, entity.origin, candidate) if entity.origin else candidate
        stored = msgspec.structs.replace(entity, id=entity_id, created_at=entity.created_at or utcnow())
        # The phone / e-mail index before the record: the record's presence is what says the
        # create is done (find_by_origin), so an attempt cut off in between is done again whole.
        await self._index_comms(f"{entity.kind}:{entity_id}", [*entity.phones, *entity.emails])
        await kv_update(self.kv[entity.kind], entity_id, Entity, lambda cur: stored if cur is None else None)
        return entity_id

    async def update(self, entity: Entity) -> None:
        def merge(cur: Entity | None) -> Entity | None:
            if cur is None:
                return None
            changes: dict[str, object] = {}
            for field in entity.__struct_fields__:
                if field in ("kind", "id", "created_at"):
                    continue
                new = getattr(entity, field)
                old = getattr(cur, field)
                if isinstance(new, list):
                    merged = [*old, *(v for v in new if v not in old)]
                    if merged != old:
                        changes[field] = merged
                elif new and new != old:
                    changes[field] = new
            return msgspec.structs.replace(cur, **changes) if changes else None

        await kv_update(self.kv[entity.kind], entity.id, Entity, merge)
        await self._index_comms(f"{entity.kind}:{entity.id}", [*entity.phones, *entity.emails])

    async def entities(self, kind: Kind) -> list[Entity]:
        rows = [msgspec.json.decode(v, type=Entity) for v in await self._all(kind)]
        return sorted(rows, key=lambda e: int(e.id) if e.id.isdigit() else 0)

    # -- activities -------------------------------------------------------

    async def find_activity(self, origin: str) -> str | None:
        act_id = await self._origin_id("activity", origin)
        if not act_id:
            return None
        # The origin is claimed before the activity is written: an attempt that died (or timed
        # out) between the two left a claim without an activity - not found, so it is made again
        # (under the same id: the claim stands).
        act, _ = await kv_get(self.kv["activity"], act_id, Activity)
        return act_id if act is not None else None

    async def add_activity(self, activity: Activity, guard: Guard | None = None) -> str:
        if guard is not None:
            await guard()
        candidate = await self._next_id("activity")
        act_id = await self._claim_origin("activity", activity.origin, candidate) if activity.origin else candidate
        stored = msgspec.structs.replace(activity, id=act_id)
        await kv_update(self.kv["activity"], act_id, Activity, lambda cur: stored if cur is None else None)
        return act_id

    async def update_activity(self, activity: Activity) -> None:
        def merge(cur: Activity | None) -> Activity | None:
            if cur is None:
                return None
            changes = {
                f: getattr(activity, f)
                for f in ("subject", "description", "responsible", "end", "client_name")
                if getattr(activity, f) and getattr(activity, f) != getattr(cur, f)
            }
            if activity.completed and not cur.completed:
                changes["completed"] = True
            return msgspec.structs.replace(cur, **changes) if changes else None

        await kv_update(self.kv["activity"], activity.id, Activity, merge)

    async def activities(self, session_id: str = "") -> list[Activity]:
        rows = [msgspec.json.decode(v, type=Activity) for v in await self._all("activity")]
        return sorted(
            (a for a in rows if not session_id or a.session_id == session_id), key=lambda a: int(a.id) if a.id.isdigit() else 0
        )

    async def check(self) -> list[str]:
        out = []
        for kind in KINDS:
            out.append(f"built-in CRM: {len(await self.entities(kind))} {kind}(s) in {BUCKETS[kind]}")
        return out

    async def close(self) -> None:
        return None

    async def sources(self) -> list[str] | None:
        return None  # the built-in CRM takes any SOURCE_ID
