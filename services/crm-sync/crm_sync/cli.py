"""``openlines crm check``: is the CRM reachable with the rights we need, and
what would each line create? Registered through the ``openlines.cli`` entry point."""

from __future__ import annotations

import argparse
import os
from typing import Any

from crm_sync.backends.base import CrmRejected, CrmUnavailable
from crm_sync.backends.factory import build
from crm_sync.core.decide import DEFAULT_SOURCE_IDS, source_id
from crm_sync.links import open_links
from crm_sync.settings import Settings
from crm_sync.sync import Users, deal_stage
from openlines import bus
from openlines.apply import load_lines
from openlines.lines import LineConfig, load
from openlines.settings import SettingsError, load_settings


def describe(line: LineConfig, users: Users, known_sources: list[str] | None) -> tuple[list[str], int]:
    """What the line would create, one line each, and how many problems were found."""
    crm = line.crm
    out = [f"line {line.id} ({line.name})"]
    if not crm.enabled:
        return [*out, "  crm disabled: conversations are not written to the CRM"], 0
    problems = 0
    new = {
        "lead": f"a lead (STATUS_ID {crm.lead_stage})",
        "deal": f"a contact and a deal (CATEGORY_ID {crm.deal_pipeline}, STAGE_ID {deal_stage(crm)})",
        "none": "nothing (create = none); the transcript is attached to a record it is linked to",
    }[crm.create]
    out.append(f"  new client: {new}")
    if crm.create == "none":
        known = "linked, nothing created"
    else:
        known = {
            "deal": f"a deal (CATEGORY_ID {crm.deal_pipeline}, STAGE_ID {deal_stage(crm)}) on the contact",
            "lead": f"a lead (STATUS_ID {crm.lead_stage}) on the contact",
            "none": "linked to the contact, nothing created",
        }[crm.identified_client]
    out.append(f"  known contact: {known}")
    out.append(
        "  repeat contacts: "
        + (
            "found by channel identity, phone (E.164) and e-mail"
            if crm.link_repeat_contacts
            else "found by channel identity only"
        )
    )
    channels = sorted({ch.channel for ch in line.channels}) or sorted(DEFAULT_SOURCE_IDS)
    for ch in channels:
        sid = source_id(crm, ch)
        note = ""
        if known_sources is not None and sid not in known_sources:
            note = "  <- not a SOURCE_ID of this CRM (crm.status.list ENTITY_ID=SOURCE)"
            problems += 1
        out.append(f"  SOURCE_ID for {ch}: {sid}{note}")
    if crm.responsible:
        user = users.crm_user(crm.responsible)
        if user:
            out.append(f"  responsible when nobody answered: {crm.responsible} (CRM user {user})")
        else:
            out.append(f"  responsible: {crm.responsible} has no CRM user in OPENLINES_CRM_USERS  <- add it")
            problems += 1
    else:
        out.append("  responsible when nobody answered: the CRM's default (the webhook's user)")
    return out, problems


async def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Settings)
    except SettingsError as exc:
        print(f"crm-sync settings: {exc}")
        return 2
    url = str(args.nats or os.environ.get("OPENLINES_NATS_URL", settings.nats_url))
    nc = await bus.connect(url, "openlines-cli", first_attempts=args.attempts)
    problems = 0
    try:
        js = nc.jetstream()
        links = await open_links(js)
        backend = await build(settings, js, links)
        try:
            try:
                for said in await backend.check():
                    print(f"ok    {said}")
                known = await backend.sources()
            except (CrmUnavailable, CrmRejected) as exc:
                print(f"FAIL  {settings.crm_backend}: {exc}")
                return 1
            if known is not None:
                print(f"ok    SOURCE_IDs in the CRM: {', '.join(known) or '(none)'}")
            if args.file:
                lines = load(args.file).lines
            else:
                await bus.bootstrap(js)
                lines = await load_lines(js)
            users = Users(settings.users(), identity_when_unmapped=settings.crm_backend == "builtin")
            print()
            for line in sorted(lines, key=lambda x: x.id):
                text, n = describe(line, users, known)
                problems += n
                print("\n".join(text))
        finally:
            await backend.close()
    finally:
        await nc.close()
    print()
    print(f"crm check: {problems} problem(s)" if problems else "crm check: ok")
    return 1 if problems else 0


def register(subparsers: Any) -> None:
    crm = subparsers.add_parser("crm", help="the CRM binding (crm-sync)").add_subparsers(dest="crm_cmd", required=True)
    c = crm.add_parser("check", help="verify the CRM connection and permissions; show what each line would create")
    c.add_argument("--file", help="a lines TOML file to describe instead of the applied lines in NATS")
    c.set_defaults(run=_check, is_async=True)
