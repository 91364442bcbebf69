"""Helpers for the admin, API and statistics tests: a line configuration with an admin, API tokens, sign-in."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import jsonschema
from nats.aio.client import Client as NATS

from desk.tokens import TokenStore, new_token, open_bucket
from support.desk import SECRET as SECRET  # re-exported for the admin, API and fuzz tests
from support.desk import http_session as http_session
from support.desk import running_desk as running_desk
from support.desk import try_sign_in

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


async def make_token(nc: NATS, role: str, name: str = "test") -> str:
    token, record = new_token(name, role)
    await TokenStore(nc.jetstream(), await open_bucket(nc.jetstream())).add(record)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_in(http: aiohttp.ClientSession, login: str, password: str = "demo") -> str:
    """Sign in through the login form; returns the CSRF token of the session."""
    done = await try_sign_in(http, login, password)
    assert done.status == 303, await done.text()
    page = await (await http.get("/stats")).text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf, page[:500]
    return csrf.group(1)


def conforms(doc: dict[str, Any], operation_id: str, body: Any) -> None:
    """``body`` matches what the document says ``operation_id`` answers on success."""
    op = next(op for item in doc["paths"].values() for op in item.values() if op["operationId"] == operation_id)
    ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
    schema = {**ok["content"]["application/json"]["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(body)


def in_line(text: str, line_id: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced by ``new`` inside the [[lines]] block of ``line_id``."""
    blocks = text.split("[[lines]]")
    for i, block in enumerate(blocks):
        if f'id = "{line_id}"' in block:
            assert old in block, (old, block)
            blocks[i] = block.replace(old, new, 1)
    return "[[lines]]".join(blocks)
