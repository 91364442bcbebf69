"""Operators changing a client: editing the name, phone and e-mail, merging two clients into one (decision 024).

The router owns the client: its records in ``ol-clients`` (one per chat of the
client) are written here and nowhere else. Who may: whoever may write in the
conversation the card belongs to (its operators, the operators of its line,
supervisors and admins) - for a merge, in both conversations.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import msgspec

from openlines.bus import kv_get, kv_update
from openlines.state import ClientRecord, OperatorAccount, Session, client_key
from router.core import client
from router.shell.base import Part, Refused

log = logging.getLogger("router.clients")

FIELD_NAMES = {"name": "name", "phone": "phone", "email": "e-mail"}


def record_key(s: Session) -> str:
    return client_key(s.channel, s.account, s.chat_key)


class Clients(Part):
    async def _conversation(self, operator_id: str, acc: OperatorAccount, session_id: str) -> Session:
        return await self._writable(operator_id, acc, session_id, "change this client: the conversation")

    async def _record(self, s: Session) -> ClientRecord:
        rec, _ = await kv_get(self.b.clients, record_key(s), ClientRecord)
        if rec is None:
            raise Refused("not_found", f"the client of session {s.id!r} has no record")
        return rec

    async def _rename_open(self, rec: ClientRecord, name: str, client_id: str = "") -> None:
        """The client's open conversations carry their name (and, after a merge, their client) for the chat lists."""
        for sid in rec.open_sessions.values():

            def renamed(s: Session | None) -> Session | None:
                if s is None or not s.is_open:
                    return None
                change: dict[str, str] = {}
                if name and s.client_name != name:
                    change["client_name"] = name
                if client_id and s.client_id != client_id:
                    change["client_id"] = client_id
                return msgspec.structs.replace(s, **change) if change else None

            await kv_update(self.b.sessions, sid, Session, renamed)

    async def edit(self, operator_id: str, session_id: str, name: str | None, phone: str | None, email: str | None) -> Session:
        """Set the client's name / phone / e-mail on every chat of theirs; the trail says who changed what."""
        acc = await self._account(operator_id)
        try:
            changes = client.checked_edit(name, phone, email)
        except client.BadEdit as exc:
            raise Refused("invalid", str(exc)) from None
        session = await self._conversation(operator_id, acc, session_id)
        rec = await self._record(session)
        before = rec.profile
        changed = {f: v for f, v in changes.items() if getattr(before, f) != v}
        for key in [record_key(session), *rec.identities]:
            updated = await kv_update(self.b.clients, key, ClientRecord, lambda c: client.edited(c, changes))
            if updated is not None and "name" in changes:
                await self._rename_open(updated, changes["name"])
        if not changed:
            return session
        said = ", ".join(
            f"{FIELD_NAMES[f]} to {v}" if v else f"removed the {FIELD_NAMES[f]}" for f, v in changed.items()
        ).replace(", removed", "; removed")
        text = f"{acc.name} changed the client's {said}"
        stamp = hashlib.blake2b(f"{sorted(changed.items())}|{time.time()}".encode(), digest_size=6).hexdigest()
        fresh, _ = await kv_get(self.b.sessions, session_id, Session)
        trail_id = f"client_edited:{session_id}:{stamp}"
        await self._trail(fresh or session, trail_id, "client_edited", text, reason=",".join(changed))
        log.info("client edited", extra={"session": session_id, "fields": ",".join(changed)})
        return fresh or session

    async def merge(self, operator_id: str, session_id: str, other_session_id: str) -> Session:
        """Merge the client of ``other_session_id`` into the client of ``session_id``.

        Every chat of the other client then belongs to this one (new messages from
        it open conversations of this client), its earlier conversations show in
        this client's card, and the person's fields are this client's where it has
        them, else the other's. Written survivor first and the picked conversation's
        own record last, so a merge cut short is completed by asking again.
        """
        acc = await self._account(operator_id)
        if session_id == other_session_id:
            raise Refused("invalid", "choose a conversation of another client")
        session = await self._conversation(operator_id, acc, session_id)
        other_session = await self._conversation(operator_id, acc, other_session_id)
        survivor = await self._record(session)
        other = await self._record(other_session)
        if survivor.client_id == other.client_id:
            raise Refused("conflict", "these conversations are of one client already")
        keep_id, gone_id = survivor.client_id, other.client_id
        own_key, other_key = record_key(session), record_key(other_session)
        keys = {own_key, other_key, *survivor.identities, *other.identities}
        merged_ids = {gone_id, *survivor.merged_ids, *other.merged_ids}
        person = client.person_of(survivor.profile, other.profile)
        edited_fields = {*survivor.edited, *other.edited}

        def into(key: str) -> Callable[[ClientRecord | None], ClientRecord | None]:
            return lambda c: client.merged(
                c,
                own_key=key,
                client_id=keep_id,
                keys=keys,
                merged_ids=merged_ids,
                person=person,
                edited_fields=edited_fields,
            )

        for key in [own_key, *sorted(keys - {own_key, other_key})]:
            rec = await kv_update(self.b.clients, key, ClientRecord, into(key))
            if rec is not None:
                await self._rename_open(rec, person["name"], keep_id)
        who = other.profile.name or other_session.client_name or "a client"
        text = f"{acc.name} merged {who} ({other_session.channel}) into this client; {len(keys)} chats are one client now"
        fresh, _ = await kv_get(self.b.sessions, session_id, Session)
        await self._trail(fresh or session, f"client_merged:{keep_id}:{gone_id}", "client_merged", text, reason=gone_id)
        # The record of the conversation the operator picked goes last: until it is written, asking again redoes the merge.
        other_after = await kv_update(self.b.clients, other_key, ClientRecord, into(other_key))
        if other_after is not None:
            await self._rename_open(other_after, person["name"], keep_id)
        log.info("clients merged", extra={"session": session_id, "kept": keep_id, "merged": gone_id})
        return fresh or session
