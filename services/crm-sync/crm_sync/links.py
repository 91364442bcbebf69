"""crm-sync's own bucket ``ol-crm-links``: which CRM records a client and a
session are bound to, and which intents are done or in flight.

| key | record |
|---|---|
| ``client.<client id>`` | :class:`ClientLink` - contact / lead / deal ids, identities pushed, responsible |
| ``session.<session id>`` | :class:`SessionLink` - activity id, owner record, intents done |
| ``claim.<client id>`` | :class:`crm_sync.claims.ClaimValue` - the replica applying an event of the client now |
| ``oauth.bitrix24`` | the current Bitrix24 OAuth tokens (they rotate on refresh) |

Every create is an *intent* named by its origin (idempotency key):
``pending`` holds the origins of creates that may have been sent but whose
result is not recorded yet - such a create is searched for in the CRM before
it is sent again; ``made`` maps the origins already created to their ids, so
a retry never sends them again (decision 015).
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import bus, subjects
from openlines.state import link_client_key, link_session_key

KV_LINKS = subjects.KV_CRM_LINKS
# The keys are spelled in openlines.state: the desk reads them too.
client_key = link_client_key
session_key = link_session_key
OAUTH_KEY = "oauth.bitrix24"


class ClientLink(msgspec.Struct, kw_only=True, omit_defaults=True):
    client_id: str
    code: str = ""  # imol|<channel>|<account>|<chat id>
    contact_id: str = ""
    lead_id: str = ""
    deal_id: str = ""
    phones: list[str] = []  # identities already written to the CRM
    emails: list[str] = []
    assigned_by: str = ""  # the CRM user responsible for the client (ASSIGNED_BY_ID)
    created_in: str = ""  # the session whose conversation created the lead / deal
    pending: list[str] = []
    made: dict[str, str] = {}  # origin -> id of what was created for it
    merged: list[str] = []  # what each merge of another client into this one kept and left (decision 024)


class SessionLink(msgspec.Struct, kw_only=True, omit_defaults=True):
    session_id: str
    client_id: str = ""
    owner_kind: str = ""  # contact | lead | deal
    owner_id: str = ""
    activity_id: str = ""
    linked: bool = False  # the client is linked and crm_linked was published
    reason: str = ""
    done: list[str] = []  # intents applied: answered:<operator>, closed
    pending: list[str] = []
    made: dict[str, str] = {}


async def open_links(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await bus.own_bucket(js, KV_LINKS, history=5, replicas=replicas)
