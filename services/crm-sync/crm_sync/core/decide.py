"""The CRM create/link decision for a client's conversation: a pure function
of (line crm config, channel, what is linked already, what the CRM found)."""

from __future__ import annotations

from typing import Literal

import msgspec

from openlines.lines import DEFAULT_SOURCE_IDS as DEFAULT_SOURCE_IDS
from openlines.lines import FALLBACK_SOURCE_ID as FALLBACK_SOURCE_ID
from openlines.lines import CrmConfig
from openlines.lines import source_id as source_id

# Channels where anybody can start a conversation without any account: a record
# is made only once the client has written something (docs/crm.md). Otherwise a
# script opening widgets could fill the CRM with empty leads.
ANONYMOUS_CHANNELS = frozenset({"webchat"})

Create = Literal["lead", "deal", "contact_deal", "none"]


class Known(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """CRM records that already belong to this client: linked before, or found now
    by channel identity, phone or e-mail. Ids are the CRM's own, as strings."""

    contact_id: str = ""
    lead_id: str = ""
    deal_id: str = ""


class Plan(msgspec.Struct, kw_only=True, frozen=True):
    """What to do for a client's new conversation."""

    create: Create  # lead; deal (for a known contact); contact_deal (a new contact and its deal); none
    link: Known  # what the client ends up linked to before anything is created
    reason: str  # one line for the crm_linked event and the log


def decide(crm: CrmConfig, known: Known) -> Plan:
    """Create nothing twice: a client linked to (or found as) a lead or deal keeps
    it; a known contact gets what ``identified_client`` says; a stranger gets
    what ``create`` says."""
    if not crm.enabled:
        return Plan(create="none", link=Known(), reason="crm disabled on the line")
    if known.deal_id:
        return Plan(create="none", link=known, reason=f"linked to deal {known.deal_id}")
    if known.contact_id:
        if crm.create == "none" or crm.identified_client == "none":
            return Plan(create="none", link=known, reason=f"linked to contact {known.contact_id}")
        if crm.identified_client == "lead":
            if known.lead_id:
                return Plan(create="none", link=known, reason=f"linked to lead {known.lead_id}")
            return Plan(create="lead", link=known, reason=f"known contact {known.contact_id}: new lead")
        return Plan(create="deal", link=known, reason=f"known contact {known.contact_id}: new deal")
    if known.lead_id:
        return Plan(create="none", link=known, reason=f"linked to lead {known.lead_id}")
    if crm.create == "lead":
        return Plan(create="lead", link=known, reason="new client: new lead")
    if crm.create == "deal":
        return Plan(create="contact_deal", link=known, reason="new client: new contact and deal")
    return Plan(create="none", link=known, reason="new client: nothing created (create = none)")


def worth_a_record(channel: str, client_wrote: bool) -> bool:
    """Whether a conversation may create or link CRM records yet: on an anonymous channel only once the client wrote."""
    return client_wrote or channel not in ANONYMOUS_CHANNELS


def pick(ids: list[str]) -> str:
    """Of several matching records, the oldest (lowest numeric id): the one a person would keep."""
    if not ids:
        return ""
    return min(ids, key=lambda i: (0, int(i)) if i.isdigit() else (1, 0))
