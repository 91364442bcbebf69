"""The imperative shell of crm-sync: one session event in, the CRM brought in line.

Load (line config, client record, transcript, links) → ask the core
(``core.decide``) → apply through the backend → record in ``ol-crm-links``.
Every create is an intent with a deterministic origin: recorded as pending
in the links bucket before it is sent, searched for in the CRM before any
retry, and recorded with its id once made - so a retry, a redelivered event
or another replica finds what an earlier attempt created instead of creating
it again. The caller holds the client's claim; ``guard`` checks it right
before each create (decision 015).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter

from crm_sync.backends.base import Activity, CrmBackend, CrmGone, Entity, Guard, Kind
from crm_sync.core import identity
from crm_sync.core.decide import Known, decide, pick, source_id, worth_a_record
from crm_sync.links import ClientLink, SessionLink, client_key, session_key
from openlines import bus, subjects
from openlines.apply import line_key
from openlines.bus import Buckets, kv_get, kv_update, read_subject
from openlines.crashpoints import crash_point
from openlines.envelopes import HistoryEntry, SessionEvent, utcnow
from openlines.lines import CrmConfig, LineConfig
from openlines.state import ClientRecord
from openlines.state import client_key as router_client_key

log = logging.getLogger("crm_sync.sync")

HANDLED_KINDS = (
    "session_opened",
    "session_assigned",
    "session_answered",
    "session_transferred",
    "session_closed",
    "client_edited",  # an operator changed name / phone / e-mail: the linked records get them (decision 024)
    "client_merged",  # an operator merged two clients: one CRM link is kept (decision 024)
)
CLIENT_KINDS = ("client_edited", "client_merged")
LINKED_KIND = "crm_linked"
SETTLE_SECONDS = 3.0  # longest wait for the router to store the opening message's profile
CREATED = Counter("openlines_crm_created_total", "CRM records created", ["kind"])
LINKED = Counter("openlines_crm_linked_total", "Sessions linked to the CRM", ["outcome"])
RELINKED = Counter(
    "openlines_crm_relinked_total", "Conversations linked anew because a manager deleted their CRM record meanwhile"
)
SILENT = Counter(
    "openlines_crm_silent_sessions_total", "Events of anonymous (webchat) conversations left out of the CRM: nothing written yet"
)

L = TypeVar("L", ClientLink, SessionLink)


def activity_origin(session_id: str) -> str:
    """The ORIGIN_ID of a conversation's activity: how it is found again after a create whose answer was lost."""
    return f"ol-session|{session_id}"


_hist = msgspec.json.Decoder(HistoryEntry)


class Users:
    """CRM user ids <-> operator ids. With no map, they are the same (the built-in CRM)."""

    def __init__(self, crm_to_operator: dict[str, str], identity_when_unmapped: bool) -> None:
        self.to_operator = dict(crm_to_operator)
        self.to_crm = {op: crm for crm, op in crm_to_operator.items()}
        self.identity = identity_when_unmapped

    def crm_user(self, operator_id: str) -> str:
        if not operator_id:
            return ""
        return self.to_crm.get(operator_id, operator_id if self.identity else "")

    def operator(self, crm_user: str) -> str:
        if not crm_user:
            return ""
        return self.to_operator.get(crm_user, crm_user if self.identity else "")


def deal_stage(crm: CrmConfig) -> str:
    """STAGE_ID of a new deal: stages of pipelines other than the default are spelled C<id>:<stage>."""
    if crm.deal_pipeline in ("", "0") or ":" in crm.deal_stage:
        return crm.deal_stage
    return f"C{crm.deal_pipeline}:{crm.deal_stage}"


def transcript(entries: list[HistoryEntry], client_name: str) -> str:
    lines: list[str] = []
    for h in entries:
        who = {"in": h.author_name or client_name or "Client", "system": "system"}.get(
            h.direction, h.author_name or ("auto-reply" if h.author_id == "auto" else h.author_id or "operator")
        )
        text = h.text
        for a in h.attachments:
            text += f" [{a.kind}: {a.name or a.url or a.ref}]"
        lines.append(f"[{h.at.strftime('%Y-%m-%d %H:%M:%S')}] {who}: {text.strip()}")
    return "\n".join(lines)


class Syncer:
    def __init__(
        self,
        js: JetStreamContext,
        buckets: Buckets,
        links: KeyValue,
        backend: CrmBackend,
        users: Users,
        phone_region: str = "",
    ) -> None:
        self.js = js
        self.b = buckets
        self.links = links
        self.crm = backend
        self.users = users
        self.region = phone_region

    # ----------------------------------------------------------- helpers

    async def _line(self, line_id: str) -> LineConfig | None:
        line, _ = await kv_get(self.b.lines, line_key(line_id), LineConfig)
        return line

    async def _client_record(self, evt: SessionEvent) -> ClientRecord | None:
        ck = subjects.chat_key(evt.channel, evt.account, evt.chat_id)
        rec, _ = await kv_get(self.b.clients, router_client_key(evt.channel, evt.account, ck), ClientRecord)
        return rec

    async def _settled_client_record(self, evt: SessionEvent, history: list[HistoryEntry]) -> ClientRecord | None:
        """The client record once the router has stored the profile of the message that opened the session.

        The router publishes session_opened before it merges that message's profile
        (name, shared phone) into the record; waiting a moment here means a phone
        shared in the very first message is matched at once.
        """
        first = next((h.id for h in history if h.direction == "in"), "")
        deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
        while True:
            record = await self._client_record(evt)
            settled = record is not None and (not first or first in record.recent_msg_ids)
            if settled or asyncio.get_running_loop().time() > deadline:
                return record
            await asyncio.sleep(0.05)

    async def _history(self, session_id: str) -> list[HistoryEntry]:
        rows = await read_subject(self.js, subjects.STREAM_HIST, subjects.history(session_id))
        return [_hist.decode(data) for _, data in rows]

    async def _save(self, key: str, typ: type[L], change: Callable[[L], L]) -> L:
        def apply(cur: L | None) -> L:
            if cur is None:
                raise RuntimeError(f"link {key} vanished")
            return change(cur)

        out = await kv_update(self.links, key, typ, apply)
        assert out is not None
        return out

    async def _once(
        self,
        key: str,
        typ: type[L],
        origin: str,
        label: str,
        find: Callable[[], Awaitable[str | None]],
        make: Callable[[], Awaitable[str]],
        record: Callable[[L, str], L],
    ) -> tuple[str, bool]:
        """Create something exactly once per origin: (id, created now).

        Made before (the id is recorded) → that id. Pending (an attempt may have
        created it and not lived to record the id, or its answer was lost) → the
        CRM is searched first. Otherwise the intent is recorded before the create
        is sent. ``label`` names the crash points (contact, lead, deal, activity).
        """
        cur, _ = await kv_get(self.links, key, typ)
        if cur is not None and origin in cur.made:
            return cur.made[origin], False
        if cur is not None and origin in cur.pending:
            found = await find()
            if found:
                log.info("create found after a retry, not redone", extra={"origin": origin, "id": found})
                await self._record(key, typ, origin, found, record)
                return found, False
        else:

            def intend(link: L) -> L:
                return link if origin in link.pending else msgspec.structs.replace(link, pending=[*link.pending, origin])

            await self._save(key, typ, intend)
            crash_point(f"crm.{label}.intent")
        new_id = await make()
        crash_point(f"crm.{label}.created")
        await self._record(key, typ, origin, new_id, record)
        crash_point(f"crm.{label}.recorded")
        return new_id, True

    async def _record(self, key: str, typ: type[L], origin: str, new_id: str, record: Callable[[L, str], L]) -> None:
        def done(cur: L) -> L:
            made = msgspec.structs.replace(
                cur, pending=[p for p in cur.pending if p != origin], made={**cur.made, origin: new_id}
            )
            return record(made, new_id)

        await self._save(key, typ, done)

    async def _publish_linked(self, evt: SessionEvent, reason: str, activity_id: str) -> None:
        out = SessionEvent(
            # One per activity: a conversation linked anew (its record deleted) is told again.
            id=f"crm_linked:{evt.session_id}" + (f":{activity_id}" if activity_id else ""),
            kind=LINKED_KIND,
            at=utcnow(),
            session_id=evt.session_id,
            line_id=evt.line_id,
            client_id=evt.client_id,
            operator_id=evt.operator_id,
            channel=evt.channel,
            account=evt.account,
            chat_id=evt.chat_id,
            reason=reason,
        )
        await bus.publish_event(self.js, out)

    # ------------------------------------------------------------ events

    async def unit(self, evt: SessionEvent) -> str | None:
        """The client whose CRM records this event may change (what must be claimed), or None: nothing to do."""
        if evt.kind not in HANDLED_KINDS or not evt.session_id or not evt.client_id:
            return None
        if evt.kind == "session_assigned":
            return None  # nothing for the CRM until someone answers
        line = await self._line(evt.line_id)
        if line is None or not line.crm.enabled:
            return None
        return evt.client_id

    async def handle(self, evt: SessionEvent, guard: Guard | None = None) -> None:
        """Apply one event; ``guard`` runs before every create (the caller's claim on the client)."""
        if evt.kind not in HANDLED_KINDS or not evt.session_id or not evt.client_id:
            return
        line = await self._line(evt.line_id)
        if line is None or not line.crm.enabled:
            return
        if evt.kind == "session_assigned":
            return  # nothing for the CRM until someone answers
        if evt.kind == "client_edited":
            await self._edited(evt)
            return
        if evt.kind == "client_merged":
            await self._merged(evt)
            return
        sl = await self._link(evt, line, guard)
        if not sl.linked:
            return  # an anonymous visitor who has not written anything: nothing in the CRM (yet)
        try:
            await self._apply(evt, line, sl)
        except CrmGone as gone:
            # A manager deleted the record this conversation is filed on, and with it its activity, while the
            # conversation went on. As on a new conversation (_forget_deleted), the client is found or created
            # anew; the conversation gets a new activity with its whole transcript, then this event applies.
            await self._apply(evt, line, await self._relink(evt, line, guard, sl, gone))

    async def _apply(self, evt: SessionEvent, line: LineConfig, sl: SessionLink) -> None:
        if evt.kind in ("session_answered", "session_transferred") and evt.operator_id:
            await self._answered(evt, sl)
        elif evt.kind == "session_closed":
            await self._closed(evt, line, sl)

    async def _relink(
        self, evt: SessionEvent, line: LineConfig, guard: Guard | None, before: SessionLink, gone: CrmGone
    ) -> SessionLink:
        """The session (linked as ``before``) linked again after its CRM record was deleted (see ``handle``)."""
        origin = activity_origin(evt.session_id)
        await self._save(
            session_key(evt.session_id),
            SessionLink,
            lambda cur: msgspec.structs.replace(
                cur,
                linked=False,
                owner_kind="",
                owner_id="",
                activity_id="",
                pending=[p for p in cur.pending if p != origin],
                made={o: i for o, i in cur.made.items() if o != origin},
            ),
        )
        log.info(
            "the conversation's CRM record was deleted: linked anew",
            extra={"session": evt.session_id, "event": evt.kind, "error": str(gone)},
        )
        RELINKED.inc()
        after = await self._link(evt, line, guard)
        if after.linked and after.activity_id == before.activity_id:
            raise gone  # linked to the same activity again: the CRM still refuses it, nothing else to try
        return after

    async def _link(self, evt: SessionEvent, line: LineConfig, guard: Guard | None) -> SessionLink:
        """Bind the session's client to CRM records and open the activity (idempotent)."""
        skey = session_key(evt.session_id)
        sl = await kv_update(
            self.links,
            skey,
            SessionLink,
            lambda cur: SessionLink(session_id=evt.session_id, client_id=evt.client_id) if cur is None else None,
        )
        assert sl is not None
        if sl.linked:
            return sl
        history = await self._history(evt.session_id)
        wrote = any(h.direction == "in" and (h.text.strip() or h.attachments) for h in history)
        if not worth_a_record(evt.channel, wrote):
            SILENT.inc()
            log.info("anonymous client has not written yet: no CRM record", extra={"session": evt.session_id})
            return sl
        crm = line.crm
        code = identity.external_code(evt.channel, evt.account, evt.chat_id)
        ckey = client_key(evt.client_id)
        cl = await kv_update(
            self.links, ckey, ClientLink, lambda cur: ClientLink(client_id=evt.client_id, code=code) if cur is None else None
        )
        assert cl is not None
        cl = await self._forget_deleted(ckey, cl)
        record = await self._settled_client_record(evt, history)
        profile = record.profile if record else None
        ids = identity.of_profile(profile.phone, profile.email, self.region) if profile else identity.Identities()
        ids = ids.merge(identity.in_texts((h.text for h in history if h.direction == "in"), self.region))
        name = (profile.name if profile else "") or next((h.author_name for h in history if h.direction == "in"), "")

        known = Known(contact_id=cl.contact_id, lead_id=cl.lead_id, deal_id=cl.deal_id)
        assigned = cl.assigned_by
        adopted: dict[str, str] = {}  # intents of ours found done in the CRM (an attempt died before recording them)
        if not (known.contact_id or known.lead_id or known.deal_id):
            # 1. the channel identity: this very chat may be in the CRM already (links lost, an
            # earlier attempt that died before recording it, or written by Bitrix24 itself)
            contact = await self.crm.find_by_origin("contact", code)
            lead = None if contact else await self.crm.find_by_origin("lead", code)
            found = contact or lead
            if found is not None:
                known = Known(contact_id=contact.id if contact else "", lead_id=lead.id if lead else "")
                assigned = found.assigned_by
                origin = f"{found.kind}|{code}"
                if origin in cl.pending:
                    adopted[origin] = found.id
            # 2. phone / e-mail: the same person from another channel
            elif crm.link_repeat_contacts and ids:
                matches = await self.crm.find_by_comm(list(ids.phones), list(ids.emails))
                contact_id = pick(matches.contacts)
                lead_id = "" if contact_id else pick(matches.leads)
                existing = (
                    await self.crm.get("contact" if contact_id else "lead", contact_id or lead_id)
                    if contact_id or lead_id
                    else None
                )
                if existing is not None:  # a match whose record cannot be read is never linked to
                    known = Known(contact_id=contact_id, lead_id=lead_id)
                    assigned = existing.assigned_by
        plan = decide(crm, known)
        # Who owns what is created: the operator already on the chat, else the known
        # client's own manager, else the line's default.
        responsible = self.users.crm_user(evt.operator_id) or assigned or self.users.crm_user(crm.responsible)
        source = source_id(crm, evt.channel)
        # Who it is as the desk shows them: their name, else how to reach them, else "Client" (never the raw id).
        who = name or next(iter(sorted(ids.emails)), "") or next(iter(sorted(ids.phones)), "") or "Client"
        title = f"{who} ({line.name}, {evt.channel})"
        base = Entity(
            kind="lead",
            name=name,
            phones=list(ids.phones),
            emails=list(ids.emails),
            im=[code],
            source_id=source,
            source_description=f"openlines: line {line.name} ({line.id}), {evt.channel}/{evt.account}",
            assigned_by=responsible,
            origin=code,
        )
        link = plan.link
        created: list[str] = []
        if plan.create == "contact_deal":
            contact = msgspec.structs.replace(base, kind="contact", source_description="")
            cid, new = await self._create(ckey, contact, guard)
            link = msgspec.structs.replace(link, contact_id=cid)
            created += ["contact"] if new else []
        if plan.create in ("deal", "contact_deal"):
            deal = msgspec.structs.replace(
                base,
                kind="deal",
                name="",
                phones=[],
                emails=[],
                im=[],
                title=title,
                stage=deal_stage(crm),
                pipeline=crm.deal_pipeline,
                contact_id=link.contact_id,
            )
            did, new = await self._create(ckey, deal, guard)
            link = msgspec.structs.replace(link, deal_id=did)
            created += ["deal"] if new else []
        elif plan.create == "lead":
            lead_e = msgspec.structs.replace(base, title=title, stage=crm.lead_stage, contact_id=link.contact_id)
            lid, new = await self._create(ckey, lead_e, guard)
            link = msgspec.structs.replace(link, lead_id=lid)
            created += ["lead"] if new else []
        if created:
            assigned = responsible
        final_link = link

        def record_client(cur: ClientLink) -> ClientLink:
            return msgspec.structs.replace(
                cur,
                contact_id=final_link.contact_id or cur.contact_id,
                lead_id=final_link.lead_id or cur.lead_id,
                deal_id=final_link.deal_id or cur.deal_id,
                assigned_by=assigned or cur.assigned_by,
                created_in=evt.session_id if plan.create != "none" or adopted else cur.created_in,
                pending=[p for p in cur.pending if p not in adopted],
                made={**cur.made, **adopted},
            )

        cl = await self._save(ckey, ClientLink, record_client)
        if plan.create == "none":
            await self._learn(cl, ids, code)  # a repeat contact updates the record it is linked to
        else:
            cl = await self._save(
                ckey,
                ClientLink,
                lambda cur: msgspec.structs.replace(
                    cur,
                    phones=sorted({*cur.phones, *ids.phones}),
                    emails=sorted({*cur.emails, *ids.emails}),
                ),
            )
        owner_kind, owner_id = self._owner(cl)
        activity_id = ""
        if owner_id:
            act = Activity(
                owner_kind=owner_kind,
                owner_id=owner_id,
                session_id=evt.session_id,
                subject=f"{evt.channel} conversation with {name or 'a client'} ({line.name})",
                description=transcript(history, name),
                responsible=responsible,
                channel=evt.channel,
                client_code=code,
                client_name=name,
                origin=activity_origin(evt.session_id),
                start=history[0].at if history else evt.at,
            )
            activity_id, _ = await self._once(
                skey,
                SessionLink,
                act.origin,
                "activity",
                lambda: self.crm.find_activity(act.origin),
                lambda: self.crm.add_activity(act, guard),
                lambda cur, new_id: msgspec.structs.replace(cur, activity_id=new_id),
            )
        ids_text = ", ".join(f"{k} {v}" for k, v in (("contact", cl.contact_id), ("lead", cl.lead_id), ("deal", cl.deal_id)) if v)
        reason = plan.reason + (f" [{ids_text}]" if ids_text else "") + (f"; source {source}" if created else "")
        sl = await self._save(
            skey,
            SessionLink,
            lambda cur: msgspec.structs.replace(
                cur, owner_kind=owner_kind, owner_id=owner_id, activity_id=activity_id or cur.activity_id, reason=reason
            ),
        )
        await self._publish_linked(evt, reason, sl.activity_id)
        crash_point("crm.linked.published")
        sl = await self._save(skey, SessionLink, lambda cur: msgspec.structs.replace(cur, linked=True))
        LINKED.labels("created" if created else "linked" if owner_id else "none").inc()
        log.info(
            "session linked to the CRM",
            extra={"session": evt.session_id, "line": line.id, "channel": evt.channel, "reason": reason},
        )
        return sl

    async def _forget_deleted(self, ckey: str, cl: ClientLink) -> ClientLink:
        """The client's link without the records the CRM no longer has (a manager deleted them).

        Bitrix24 Open Lines does the same: a client whose lead was deleted is found or
        created anew by the next conversation, instead of every later activity being
        refused for an owner that is gone. What was created for the deleted records is
        forgotten too (their origins in ``made``), so they can be created again.
        """
        linked: list[tuple[Kind, str]] = [("contact", cl.contact_id), ("lead", cl.lead_id), ("deal", cl.deal_id)]
        gone = {(kind, rid) for kind, rid in linked if rid and await self.crm.get(kind, rid) is None}
        if not gone:
            return cl
        log.info(
            "linked CRM records no longer exist: the client is linked anew",
            extra={"client": cl.client_id, "gone": ", ".join(f"{k} {i}" for k, i in sorted(gone))},
        )

        def forget(cur: ClientLink) -> ClientLink:
            ids = {
                k: "" if (k, rid) in gone else rid
                for k, rid in (("contact", cur.contact_id), ("lead", cur.lead_id), ("deal", cur.deal_id))
            }
            left = any(ids.values())
            return msgspec.structs.replace(
                cur,
                contact_id=ids["contact"],
                lead_id=ids["lead"],
                deal_id=ids["deal"],
                made={o: i for o, i in cur.made.items() if (o.partition("|")[0], i) not in gone},
                # identities written only into deleted records are written again
                phones=cur.phones if left else [],
                emails=cur.emails if left else [],
            )

        return await self._save(ckey, ClientLink, forget)

    async def _create(self, ckey: str, entity: Entity, guard: Guard | None) -> tuple[str, bool]:
        kind: Kind = entity.kind

        async def find() -> str | None:
            hit = await self.crm.find_by_origin(kind, entity.origin)
            return hit.id if hit else None

        field = {"contact": "contact_id", "lead": "lead_id", "deal": "deal_id"}[kind]
        new_id, created = await self._once(
            ckey,
            ClientLink,
            f"{kind}|{entity.origin}",
            kind,
            find,
            lambda: self.crm.create(entity, guard),
            lambda cur, made_id: msgspec.structs.replace(cur, **{field: made_id}),
        )
        if created:
            CREATED.labels(kind).inc()
        return new_id, created

    @staticmethod
    def _owner(cl: ClientLink) -> tuple[Kind, str]:
        """The record a conversation is filed on: the deal, else the lead, else the contact."""
        if cl.deal_id:
            return "deal", cl.deal_id
        if cl.lead_id:
            return "lead", cl.lead_id
        return "contact", cl.contact_id

    async def _learn(self, cl: ClientLink, ids: identity.Identities, code: str) -> ClientLink:
        """Write identities the CRM does not have yet (a phone shared later, an e-mail in the chat) into
        the linked record; if they belong to a contact we were not linked to, link it."""
        new = ids.minus(identity.Identities(phones=tuple(cl.phones), emails=tuple(cl.emails)))
        if not new:
            return cl
        contact_id = cl.contact_id
        if not contact_id:
            matches = await self.crm.find_by_comm(list(new.phones), list(new.emails))
            contact_id = pick(matches.contacts)
        if contact_id:
            await self.crm.update(
                Entity(kind="contact", id=contact_id, phones=list(new.phones), emails=list(new.emails), im=[code])
            )
        for kind, entity_id in (("lead", cl.lead_id), ("deal", cl.deal_id)):
            if not entity_id:
                continue
            attach = contact_id if contact_id and not cl.contact_id else ""
            if kind == "lead":
                await self.crm.update(
                    Entity(
                        kind="lead",
                        id=entity_id,
                        phones=list(new.phones),
                        emails=list(new.emails),
                        im=[code],
                        contact_id=attach,
                    )
                )
            elif attach:
                await self.crm.update(Entity(kind="deal", id=entity_id, contact_id=attach))
        return await self._save(
            client_key(cl.client_id),
            ClientLink,
            lambda cur: msgspec.structs.replace(
                cur,
                contact_id=cur.contact_id or contact_id,
                phones=sorted({*cur.phones, *new.phones}),
                emails=sorted({*cur.emails, *new.emails}),
            ),
        )

    # ------------------------------------------------- operators' changes to clients (decision 024)

    async def _push_profile(self, evt: SessionEvent, cl: ClientLink, with_name: bool) -> ClientLink:
        """The client's name, phone and e-mail as operators left them, into the linked contact and lead.

        Phones and e-mails are added to the records' multi-fields, never twice (the
        backends send only values a record lacks); nothing is removed from the CRM.
        """
        record = await self._client_record(evt)
        if record is None:
            return cl
        p = record.profile
        ids = identity.of_profile(p.phone, p.email, self.region)
        name = p.name if with_name else ""
        targets: tuple[tuple[Kind, str], ...] = (("contact", cl.contact_id), ("lead", cl.lead_id))
        for kind, entity_id in targets:
            if entity_id:
                entity = Entity(kind=kind, id=entity_id, name=name, phones=list(ids.phones), emails=list(ids.emails))
                await self.crm.update(entity)
        return await self._save(
            client_key(cl.client_id),
            ClientLink,
            lambda cur: msgspec.structs.replace(
                cur, phones=sorted({*cur.phones, *ids.phones}), emails=sorted({*cur.emails, *ids.emails})
            ),
        )

    async def _edited(self, evt: SessionEvent) -> None:
        cl, _ = await kv_get(self.links, client_key(evt.client_id), ClientLink)
        if cl is None or not (cl.contact_id or cl.lead_id or cl.deal_id):
            return  # not in the CRM yet: the first link reads the profile as edited
        await self._push_profile(evt, cl, with_name="name" in evt.reason.split(","))
        log.info("client edit written to the CRM", extra={"session": evt.session_id, "fields": evt.reason})

    async def _merged(self, evt: SessionEvent) -> None:
        """One client remains; its CRM link is kept, else the merged client's is taken over. Nothing is deleted."""
        gone = evt.reason
        if not gone or gone == evt.client_id:
            return
        kept, _ = await kv_get(self.links, client_key(evt.client_id), ClientLink)
        other, _ = await kv_get(self.links, client_key(gone), ClientLink)

        def ids_of(link: ClientLink | None) -> str:
            if link is None:
                return ""
            pairs = (("contact", link.contact_id), ("lead", link.lead_id), ("deal", link.deal_id))
            return ", ".join(f"{k} {v}" for k, v in pairs if v)

        mine, theirs = ids_of(kept), ids_of(other)
        if not mine and not theirs:
            return
        if mine and theirs:
            note = f"merged: kept this client's {mine}; {theirs} of the merged client: left in the CRM, not linked"
        elif mine:
            note = f"merged: kept this client's {mine}"
        else:
            note = f"merged: took over {theirs} of the merged client"
        assert other is not None or mine
        taken = other if not mine else None

        def merge_link(cur: ClientLink | None) -> ClientLink | None:
            base = cur or ClientLink(client_id=evt.client_id, code=taken.code if taken else "")
            if note in base.merged:
                return None
            if taken is not None and not (base.contact_id or base.lead_id or base.deal_id):
                base = msgspec.structs.replace(
                    base,
                    contact_id=taken.contact_id,
                    lead_id=taken.lead_id,
                    deal_id=taken.deal_id,
                    assigned_by=base.assigned_by or taken.assigned_by,
                    phones=sorted({*base.phones, *taken.phones}),  # what those records have already
                    emails=sorted({*base.emails, *taken.emails}),
                )
            return msgspec.structs.replace(base, merged=[*base.merged, note])

        cl = await kv_update(self.links, client_key(evt.client_id), ClientLink, merge_link)
        assert cl is not None
        await self._push_profile(evt, cl, with_name=False)
        out = msgspec.structs.replace(evt, id=f"crm_merged:{evt.client_id}:{gone}", kind=LINKED_KIND, at=utcnow(), reason=note)
        await bus.publish_event(self.js, out)
        log.info("merged clients' CRM link kept", extra={"session": evt.session_id, "reason": note})

    async def _answered(self, evt: SessionEvent, sl: SessionLink) -> None:
        intent = f"answered:{evt.operator_id}"
        if intent in sl.done:
            return
        user = self.users.crm_user(evt.operator_id)
        if user:
            if sl.activity_id:
                await self.crm.update_activity(
                    Activity(
                        id=sl.activity_id, owner_kind="lead", owner_id=sl.owner_id, session_id=sl.session_id, responsible=user
                    )
                )
            cl, _ = await kv_get(self.links, client_key(evt.client_id), ClientLink)
            if cl is not None and cl.created_in == evt.session_id and sl.owner_kind in ("lead", "deal") and sl.owner_id:
                # The record this conversation created belongs to whoever answered it.
                kind: Kind = "deal" if sl.owner_kind == "deal" else "lead"
                await self.crm.update(Entity(kind=kind, id=sl.owner_id, assigned_by=user))
                await self._save(
                    client_key(evt.client_id), ClientLink, lambda cur: msgspec.structs.replace(cur, assigned_by=user)
                )
        crash_point("crm.answered.applied")
        await self._save(
            session_key(evt.session_id),
            SessionLink,
            lambda cur: cur if intent in cur.done else msgspec.structs.replace(cur, done=[*cur.done, intent]),
        )

    async def _closed(self, evt: SessionEvent, line: LineConfig, sl: SessionLink) -> None:
        if "closed" in sl.done:
            return
        history = await self._history(evt.session_id)
        cl, _ = await kv_get(self.links, client_key(evt.client_id), ClientLink)
        if cl is not None and line.crm.link_repeat_contacts:
            learnt = identity.in_texts((h.text for h in history if h.direction == "in"), self.region)
            record = await self._client_record(evt)
            if record is not None:
                learnt = learnt.merge(identity.of_profile(record.profile.phone, record.profile.email, self.region))
            code = identity.external_code(evt.channel, evt.account, evt.chat_id)
            await self._learn(cl, learnt, code)
        if sl.activity_id:
            name = next((h.author_name for h in history if h.direction == "in" and h.author_name), "")
            end: datetime = evt.at
            await self.crm.update_activity(
                Activity(
                    id=sl.activity_id,
                    owner_kind="lead",
                    owner_id=sl.owner_id,
                    session_id=sl.session_id,
                    description=transcript(history, name),
                    completed=True,
                    responsible=self.users.crm_user(evt.operator_id),
                    end=end,
                )
            )
        crash_point("crm.closed.applied")
        await self._save(
            session_key(evt.session_id),
            SessionLink,
            lambda cur: cur if "closed" in cur.done else msgspec.structs.replace(cur, done=[*cur.done, "closed"]),
        )
