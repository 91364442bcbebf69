"""Which session a chat has open on a line, as this replica last saw it: read beside the client record.

A client's message needs the client record (duplicates, the open session's id) and then that session: two
round trips, one after the other, before its transcript line can go out. A replica holding the client's
partition has usually just seen the session, so it reads both at once on that hint. The hint is never trusted:
the session read is used only if the client record names the same session; otherwise it is read again (one
wasted read, no wrong answer). Bounded: the least recently used chats are forgotten first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from openlines.bus import Buckets, kv_get
from openlines.state import ClientRecord, Session
from router.shell.kv import Known

HINTS_KEPT = 50_000  # chats remembered (about 150 bytes each)


class OpenSessions:
    def __init__(self, size: int = HINTS_KEPT) -> None:
        self.size = size
        self._hints: OrderedDict[tuple[str, str], str] = OrderedDict()

    def saw(self, client: str, line_id: str, session_id: str | None) -> None:
        """The session the chat has open on the line now (None: none)."""
        key = (client, line_id)
        if session_id is None:
            self._hints.pop(key, None)
            return
        self._hints[key] = session_id
        self._hints.move_to_end(key)
        if len(self._hints) > self.size:
            self._hints.popitem(last=False)

    async def read(self, b: Buckets, client: str, line_id: str) -> tuple[Known[ClientRecord], tuple[str, Known[Session]] | None]:
        """The client record, and the hinted session (its id and what was read) if there is a hint."""
        hint = self._hints.get((client, line_id))
        if hint is None:
            return await kv_get(b.clients, client, ClientRecord), None
        rec, session = await asyncio.gather(kv_get(b.clients, client, ClientRecord), kv_get(b.sessions, hint, Session))
        return rec, (hint, session)
