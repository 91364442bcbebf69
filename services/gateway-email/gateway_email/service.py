"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass

from aiohttp import web

from gateway_email.deliver import Outgoing
from gateway_email.inbound import MailboxWorker
from gateway_email.mailboxes import load_mailboxes
from gateway_email.settings import Settings
from gateway_email.store import Store
from openlines.runner import Service


@dataclass(frozen=True, slots=True)
class Email:
    """The parts of a running gateway (tests and debugging look at them)."""

    store: Store
    workers: dict[str, MailboxWorker]
    outgoing: Outgoing
    owner: str


EMAIL = web.AppKey("email", Email)


async def setup(svc: Service[Settings]) -> None:
    s = svc.settings
    mailboxes = load_mailboxes(s.email_mailboxes)
    store = await Store(svc.js).open(lease_ttl=s.lease_ttl, replicas=s.replicas, files_max_age=s.files_max_age_days * 86400)
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    stopping = asyncio.Event()
    workers = {acc: MailboxWorker(svc.nc, svc.js, store, mb, s, owner) for acc, mb in mailboxes.items()}
    outgoing = Outgoing(svc.js, store, mailboxes, s)
    tasks = [svc.spawn(w.run(stopping), name=f"mailbox-{acc}") for acc, w in workers.items()]
    tasks.append(svc.spawn(outgoing.run(stopping), name="email-outbound"))
    svc.app[EMAIL] = Email(store=store, workers=workers, outgoing=outgoing, owner=owner)

    async def ready() -> str | None:
        return outgoing.ready()

    async def drain() -> None:
        # Finish the mail in hand, release the mailbox leases so another
        # replica takes over at once, stop sending.
        stopping.set()
        await asyncio.wait(tasks, timeout=s.shutdown_timeout)

    svc.ready_check(ready)
    svc.on_stop(drain)
