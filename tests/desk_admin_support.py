"""Helpers for the admin, API and statistics tests: a line configuration with an admin, API tokens, sign-in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jsonschema
from nats.aio.client import Client as NATS

from desk.app import setup
from desk.settings import Settings
from desk.tokens import TokenStore, new_token, open_bucket
from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, ClientProfile, Inbound, encode, utcnow
from openlines.runner import Service, launch

SECRET = "admin-test-cookie-secret-0123456"
# argon2 hash of "demo" (as in deploy/lines.example.toml)
DEMO_HASH = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"

# root: the admin. It also holds the supervisor role and the open-lines permission so that it can sign in
# through the desk's login form, which admits operator and supervisor accounts.
# carl: an operator account without the open-lines permission and in no queue - the admin page must say why.
LINES = f"""
[operators.anna]
name = "Anna Petrova"
password_hash = "{DEMO_HASH}"
roles = ["operator", "supervisor"]

[operators.boris]
name = "Boris Ivanov"
password_hash = "{DEMO_HASH}"

[operators.root]
name = "Root Admin"
password_hash = "{DEMO_HASH}"
roles = ["admin", "supervisor"]

[operators.carl]
name = "Carl Nopermission"
password_hash = "{DEMO_HASH}"
roles = ["operator"]
permissions = []

[[lines]]
id = "support"
name = "Customer support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
operators = ["anna", "boris"]
[lines.auto_replies]
welcome = "Hello {{client_name}}, this is support."
[lines.session]
rating = true

[[lines]]
id = "sales"
name = "Sales"
channels = [{{ channel = "webchat", account = "shop" }}]
[lines.queue]
operators = ["boris"]
[lines.session]
auto_close_minutes = 0.02
"""


@asynccontextmanager
async def running_desk(url: str) -> AsyncIterator[Service[Settings]]:
    svc = await launch("desk", Settings(nats_url=url, http_port=0, cookie_secret=SECRET), setup, first_attempts=5)
    try:
        yield svc
    finally:
        await svc.stop()


async def make_token(nc: NATS, role: str, name: str = "test") -> str:
    token, record = new_token(name, role)
    await TokenStore(await open_bucket(nc.jetstream())).add(record)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_in(http: aiohttp.ClientSession, login: str, password: str = "demo") -> str:
    """Sign in through the login form; returns the CSRF token of the session."""
    form = await (await http.get("/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    done = await http.post(
        "/login", data={"login": login, "password": password, "csrf_token": token.group(1)}, allow_redirects=False
    )
    assert done.status == 303, await done.text()
    page = await (await http.get("/stats")).text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf, page[:500]
    return csrf.group(1)


async def visitor_writes(nc: NATS, visitor: str, msg: str, text: str, account: str = "demo", name: str = "") -> None:
    env = Inbound(
        id=f"webchat:{account}:{visitor}:{msg}",
        channel="webchat",
        account=account,
        chat_id=visitor,
        user_id=visitor,
        profile=ClientProfile(name=name or visitor),
        text=text,
        received_at=utcnow(),
    )
    ack = await nc.jetstream().publish(
        subjects.inbound("webchat", account, visitor), encode(env), headers={MSG_ID_HEADER: env.id}
    )
    assert ack.seq


def http_session(svc: Service[Any]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{svc.port}", cookie_jar=aiohttp.CookieJar(unsafe=True))


def conforms(doc: dict[str, Any], operation_id: str, body: Any) -> None:
    """``body`` matches what the document says ``operation_id`` answers on success."""
    op = next(op for item in doc["paths"].values() for op in item.values() if op["operationId"] == operation_id)
    ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
    schema = {**ok["content"]["application/json"]["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(body)
