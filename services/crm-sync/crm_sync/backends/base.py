"""The one interface every CRM backend implements, and the records it speaks in.

Records are the CRM's own concepts (contact, lead, deal, activity) with the
Bitrix24 field meanings; a backend maps them to its storage or API. Every
create takes an ``origin`` - our deterministic key of the intent - that the
backend stores (Bitrix24 ``ORIGIN_ID``) and can search by, so a create redone
after a crash finds the first one instead of making a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal, Protocol

import msgspec

Kind = Literal["contact", "lead", "deal"]
KINDS: tuple[Kind, ...] = ("contact", "lead", "deal")


class CrmUnavailable(Exception):
    """The CRM cannot be reached or asks us to slow down: retry the same work later.

    ``retry_after``: seconds the CRM asked us to wait (0 = our own back-off decides).
    """

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Called right before a create is sent: raises if this replica may no longer create
# (its claim on the event was lost to another replica). See crm_sync.claims.
Guard = Callable[[], Awaitable[None]]


class CrmRejected(Exception):
    """The CRM refused the request itself (bad field, no permission): retrying will not help."""


class CrmGone(CrmRejected):
    """The record written to is no longer in the CRM: a manager deleted it (and, with a lead,
    contact or deal, the activities filed on it)."""


class Entity(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A contact, lead or deal. Empty fields are left as they are on update."""

    kind: Kind
    id: str = ""
    title: str = ""  # TITLE of a lead or deal
    name: str = ""  # NAME of a contact or lead
    phones: list[str] = []  # E.164
    emails: list[str] = []  # lower case
    im: list[str] = []  # channel identities, imol|<channel>|<account>|<chat id>
    source_id: str = ""  # SOURCE_ID
    source_description: str = ""  # SOURCE_DESCRIPTION
    stage: str = ""  # STATUS_ID of a lead, STAGE_ID of a deal
    pipeline: str = ""  # CATEGORY_ID of a deal
    contact_id: str = ""  # CONTACT_ID of a lead or deal
    assigned_by: str = ""  # ASSIGNED_BY_ID: a CRM user id
    origin: str = ""  # ORIGIN_ID: our idempotency key
    comments: str = ""
    created_at: datetime | None = None


class Activity(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One conversation (session) as a CRM activity on its owner record."""

    id: str = ""
    owner_kind: Kind
    owner_id: str
    session_id: str
    subject: str = ""
    description: str = ""  # the transcript, plain text
    completed: bool = False
    responsible: str = ""  # RESPONSIBLE_ID: a CRM user id
    channel: str = ""
    client_code: str = ""  # the channel identity, for COMMUNICATIONS
    client_name: str = ""
    origin: str = ""
    start: datetime | None = None
    end: datetime | None = None


class Matches(msgspec.Struct, kw_only=True, frozen=True):
    """Records found by phone / e-mail, ids as strings (Bitrix24 crm.duplicate.findbycomm)."""

    contacts: list[str] = []
    leads: list[str] = []


class CrmBackend(Protocol):
    name: str

    async def find_by_origin(self, kind: Kind, origin: str) -> Entity | None:
        """The record created with this origin (our intent key / channel identity), if any."""
        ...

    async def find_by_comm(self, phones: list[str], emails: list[str]) -> Matches:
        """Contacts and leads having any of these phones or e-mail addresses."""
        ...

    async def get(self, kind: Kind, entity_id: str) -> Entity | None: ...

    async def create(self, entity: Entity, guard: Guard | None = None) -> str:
        """Create the record; returns its id. Sent once: a create is never retried blindly
        (the caller searches by origin before it tries again); ``guard`` runs just before it is sent."""
        ...

    async def update(self, entity: Entity) -> None:
        """Set the non-empty fields of ``entity`` (phones/e-mails/im are added, not replaced);
        :class:`CrmGone` when the CRM no longer has the record."""
        ...

    async def find_activity(self, origin: str) -> str | None: ...

    async def add_activity(self, activity: Activity, guard: Guard | None = None) -> str:
        """As :meth:`create`, for the conversation's activity."""
        ...

    async def identify(self, code: str, phones: list[str], emails: list[str]) -> Entity | None:
        """The client's record for a responsible look-up: by channel identity (the contact, else
        the lead made for this chat), else by phone / e-mail (the oldest contact, else the oldest lead)."""
        ...

    async def update_activity(self, activity: Activity) -> None:
        """Set the activity's fields; :class:`CrmGone` when the CRM no longer has it."""
        ...

    async def check(self) -> list[str]:
        """Verify the connection and permissions; one line per check, raise on failure."""
        ...

    async def close(self) -> None: ...

    async def sources(self) -> list[str] | None:
        """The SOURCE_IDs the CRM knows, or None when any value is accepted."""
        ...
