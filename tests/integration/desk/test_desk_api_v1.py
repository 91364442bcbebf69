"""The admin REST API /api/v1 against a real desk, router and nats-server: tokens, roles,
the OpenAPI document, versioned edits the router picks up, bad bodies, sessions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from argon2 import PasswordHasher
from support import client_writes, outbound_for
from support.desk import desk_with_router
from support.desk_admin import LINES, bearer, conforms, http_session, make_token, sign_in
from support.timing import wait_for

from desk.api import PREFIX
from openlines import bus
from openlines.state import OperatorAccount, Session

ROLES = ("admin", "supervisor")


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    async with desk_with_router(nc, nats_server.url, lines=LINES) as svc:
        yield svc


@pytest.fixture
async def http(desk: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(desk) as session:
        yield session


@pytest.fixture
async def tokens(nc: Any, desk: Any) -> dict[str, str]:
    return {role: await make_token(nc, role, f"{role} script") for role in ROLES}


async def _doc(http: aiohttp.ClientSession) -> dict[str, Any]:
    r = await http.get(f"{PREFIX}/openapi.json")
    assert r.status == 200
    doc: dict[str, Any] = await r.json()
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if path != f"{PREFIX}/openapi.json"
    ]


async def test_the_openapi_document_lists_exactly_the_served_routes(http: aiohttp.ClientSession, desk: Any) -> None:
    doc = await _doc(http)
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    served = {
        (route.method, route.resource.canonical)
        for route in desk.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith(PREFIX) and route.method != "HEAD"
    }
    assert documented == served
    for _method, _path, op in _operations(doc):
        assert op["x-openlines-roles"] and set(op["x-openlines-roles"]) <= set(ROLES)
        assert {"401", "403", "503"} <= set(op["responses"])
        assert "Retry-After" in op["responses"]["503"]["headers"]


async def test_the_api_answers_the_declared_503_with_retry_after_while_nats_is_down(
    http: aiohttp.ClientSession, desk: Any, nats_server: Any, tokens: dict[str, str]
) -> None:
    nats_server.stop(kill=True)
    try:
        for path in ("/lines", "/operators/anna", "/sessions"):  # each waits for NATS to time out
            r = await http.get(PREFIX + path, headers=bearer(tokens["admin"]))
            body = await r.json()
            assert (r.status, body["error"]) == (503, "unavailable"), (path, r.status, body)
            assert r.headers["Retry-After"].isdigit() and "Traceback" not in await r.text()
    finally:
        nats_server.start()


def _concrete(path: str, session_id: str) -> str:
    return path.replace("{line_id}", "support").replace("{operator_id}", "carl").replace("{session_id}", session_id)


async def test_every_endpoint_wants_a_token_of_an_allowed_role_and_ignores_cookies(
    http: aiohttp.ClientSession, tokens: dict[str, str], nc: Any
) -> None:
    doc = await _doc(http)
    # Signed in as an admin in the browser sense: the cookie must not open /api/v1.
    await sign_in(http, "root")
    for method, path, op in _operations(doc):
        url = _concrete(path, "no-such-session")
        headers = {"If-Match": "0-0000000000000000"}
        body = {} if method == "PUT" else None
        missing = await http.request(method, url, headers=headers, json=body)
        assert missing.status == 401, (method, path, await missing.text())
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert set(await missing.json()) == {"error", "detail"}
        wrong = await http.request(method, url, headers={**headers, **bearer("olt_0123456789ab_" + "x" * 43)}, json=body)
        assert wrong.status == 401, (method, path)
        garbage = await http.request(method, url, headers={**headers, "Authorization": "Basic cm9vdDpkZW1v"}, json=body)
        assert garbage.status == 401, (method, path)
        for role in ROLES:
            r = await http.request(method, url, headers={**headers, **bearer(tokens[role])}, json=body)
            if role in op["x-openlines-roles"]:
                assert r.status not in (401, 403), (method, path, role, await r.text())
            else:
                assert r.status == 403, (method, path, role, await r.text())
                assert (await r.json())["error"] == "forbidden"


async def test_a_token_made_with_the_cli_works_until_revoked(http: aiohttp.ClientSession, nats_server: Any) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openlines", "--nats", nats_server.url, "desk", "token", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = await asyncio.to_thread(cli, "create", "nightly report", "--role", "supervisor")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("olt_")
    r = await http.get(f"{PREFIX}/stats", headers=bearer(token))
    assert r.status == 200, await r.text()
    assert (await http.get(f"{PREFIX}/lines", headers=bearer(token))).status == 403
    listed = await asyncio.to_thread(cli, "list")
    token_id = token.split("_")[1]
    assert token_id in listed.stdout and "nightly report" in listed.stdout and token not in listed.stdout
    revoked = await asyncio.to_thread(cli, "revoke", token_id)
    assert revoked.returncode == 0, revoked.stdout
    assert (await http.get(f"{PREFIX}/stats", headers=bearer(token))).status == 401


async def test_a_line_changed_through_the_api_is_used_by_the_running_router(
    http: aiohttp.ClientSession, tokens: dict[str, str], nc: Any
) -> None:
    admin = bearer(tokens["admin"])
    got = await http.get(f"{PREFIX}/lines/support", headers=admin)
    assert got.status == 200
    body = await got.json()
    version = body["version"]
    assert got.headers["ETag"] == f'"{version}"'
    line = body["line"]
    line["auto_replies"]["welcome"] = "Welcome to the new support desk, {client_name}."
    line["queue"]["wait_seconds"] = 10  # outside the recommended 30-60: the doctor says so
    put = await http.put(f"{PREFIX}/lines/support", headers={**admin, "If-Match": version}, json=line)
    assert put.status == 200, await put.text()
    saved = await put.json()
    assert saved["version"] != version
    assert "line support: updated" in saved["changes"]
    assert "queue-wait-seconds" in {f["code"] for f in saved["findings"]}
    doc = await _doc(http)
    conforms(doc, "get_line", body)
    conforms(doc, "put_line", saved)
    conforms(doc, "list_lines", await (await http.get(f"{PREFIX}/lines", headers=admin)).json())
    conforms(doc, "doctor", await (await http.get(f"{PREFIX}/doctor", headers=admin)).json())

    await client_writes(nc, "new-visitor", "m1", "Hi there", name="Olga")

    async def welcomed() -> bool:
        return any(o.text == "Welcome to the new support desk, Olga." for o in await outbound_for(nc, "new-visitor"))

    await wait_for(welcomed, timeout=15, what="the router to send the new welcome")

    # The same version cannot be used twice: the second writer is told, and nothing changes.
    line["auto_replies"]["welcome"] = "Overwritten"
    stale = await http.put(f"{PREFIX}/lines/support", headers={**admin, "If-Match": version}, json=line)
    assert stale.status == 412, await stale.text()
    now = await (await http.get(f"{PREFIX}/lines/support", headers=admin)).json()
    assert now["line"]["auto_replies"]["welcome"] == "Welcome to the new support desk, {client_name}."
    assert now["version"] == saved["version"]
    missing = await http.put(f"{PREFIX}/lines/support", headers=admin, json=line)
    assert missing.status == 428


async def test_two_writers_from_one_version_exactly_one_wins(http: aiohttp.ClientSession, tokens: dict[str, str]) -> None:
    admin = bearer(tokens["admin"])
    body = await (await http.get(f"{PREFIX}/lines/sales", headers=admin)).json()

    async def put(name: str) -> int:
        line = {**body["line"], "name": name}
        r = await http.put(f"{PREFIX}/lines/sales", headers={**admin, "If-Match": body["version"]}, json=line)
        return r.status

    statuses = await asyncio.gather(put("Sales A"), put("Sales B"))
    assert sorted(statuses) == [200, 412]
    now = await (await http.get(f"{PREFIX}/lines/sales", headers=admin)).json()
    assert now["line"]["name"] == ("Sales A" if statuses[0] == 200 else "Sales B")


BAD_LINE_BODIES: list[tuple[str, Any]] = [
    ("not json", b"{nope"),
    ("not utf-8", b'{"name": "\x8f"}'),
    ("a list", []),
    ("no name", {"id": "support"}),
    ("wrong type", {"name": "S", "queue": {"wait_seconds": "soon"}}),
    ("unknown key", {"name": "S", "queue": {"wait_secs": 30}}),
    ("out of range", {"name": "S", "queue": {"wait_seconds": 0, "operators": ["anna"]}}),
    ("unknown operator", {"name": "S", "queue": {"operators": ["nobody"]}}),
    ("operator without permission", {"name": "S", "queue": {"operators": ["carl"]}}),
    ("id differs", {"id": "other", "name": "S"}),
    ("channel taken", {"name": "S", "channels": [{"channel": "webchat", "account": "shop"}]}),
]


@pytest.mark.parametrize(("case", "payload"), BAD_LINE_BODIES, ids=[c for c, _ in BAD_LINE_BODIES])
async def test_a_bad_line_body_is_refused_with_a_reason_and_changes_nothing(
    http: aiohttp.ClientSession, tokens: dict[str, str], case: str, payload: Any
) -> None:
    admin = bearer(tokens["admin"])
    before = await (await http.get(f"{PREFIX}/lines", headers=admin)).json()
    headers = {**admin, "If-Match": before["version"]}
    if isinstance(payload, bytes):
        r = await http.put(f"{PREFIX}/lines/support", headers={**headers, "Content-Type": "application/json"}, data=payload)
    else:
        r = await http.put(f"{PREFIX}/lines/support", headers=headers, json=payload)
    assert r.status == 400, (case, await r.text())
    answer = await r.json()
    assert answer["error"] in ("invalid", "bad_json") and answer["detail"]
    after = await (await http.get(f"{PREFIX}/lines", headers=admin)).json()
    assert after == before


async def test_operators_show_why_one_sees_no_chats_and_a_password_is_stored_hashed(
    http: aiohttp.ClientSession, tokens: dict[str, str], nc: Any
) -> None:
    admin = bearer(tokens["admin"])
    listed = await (await http.get(f"{PREFIX}/operators", headers=admin)).json()
    ops = {op["id"]: op for op in listed["operators"]}
    conforms(await _doc(http), "list_operators", listed)
    assert "password_hash" not in str(listed)
    carl = ops["carl"]
    assert any("lacks the 'openlines'" in r for r in carl["no_chats"])
    assert any("not a member of any line's queue" in r for r in carl["no_chats"])
    assert ops["anna"]["no_chats"] == [] and ops["anna"]["lines"] == ["support"]

    change = {"name": "Carl Fixed", "roles": ["operator"], "permissions": ["openlines"], "password": "a new secret"}
    r = await http.put(f"{PREFIX}/operators/carl", headers={**admin, "If-Match": listed["version"]}, json=change)
    assert r.status == 200, await r.text()
    conforms(await _doc(http), "put_operator", await r.json())
    view = (await r.json())["operator"]
    assert view["name"] == "Carl Fixed" and view["no_chats"] == [
        "is not a member of any line's queue (queue.operators): no chat is ever offered to them"
    ]
    account, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).accounts, "carl", OperatorAccount)
    assert account is not None and account.password_hash.startswith("$argon2")
    assert PasswordHasher().verify(account.password_hash, "a new secret")

    # Removing an operator a queue still lists is refused, with the key that holds them.
    version = (await r.json())["version"]
    gone = await http.delete(f"{PREFIX}/operators/boris", headers={**admin, "If-Match": version})
    assert gone.status == 400
    assert any("queue.operators" in e and "boris" in e for e in (await gone.json())["errors"])


BAD_OPERATOR_BODIES: list[tuple[str, Any]] = [
    ("no name", {"roles": ["operator"]}),
    ("empty name", {"name": "  "}),
    ("unknown role", {"name": "X", "roles": ["boss"]}),
    ("unknown permission", {"name": "X", "permissions": ["open-lines"]}),
    ("short password", {"name": "X", "password": "123"}),
    ("unknown key", {"name": "X", "password_hash": "plain"}),
    ("roles not a list", {"name": "X", "roles": "admin"}),
]


@pytest.mark.parametrize(("case", "payload"), BAD_OPERATOR_BODIES, ids=[c for c, _ in BAD_OPERATOR_BODIES])
async def test_a_bad_operator_body_is_refused_and_changes_nothing(
    http: aiohttp.ClientSession, tokens: dict[str, str], case: str, payload: Any
) -> None:
    admin = bearer(tokens["admin"])
    before = await (await http.get(f"{PREFIX}/operators", headers=admin)).json()
    r = await http.put(f"{PREFIX}/operators/newbie", headers={**admin, "If-Match": before["version"]}, json=payload)
    assert r.status == 400, (case, await r.text())
    assert (await r.json())["detail"]
    assert await (await http.get(f"{PREFIX}/operators", headers=admin)).json() == before


async def test_sessions_are_listed_filtered_and_read_with_their_transcript(
    http: aiohttp.ClientSession, tokens: dict[str, str], nc: Any
) -> None:
    sup = bearer(tokens["supervisor"])
    await client_writes(nc, "v-support", "m1", "Where is my parcel?")
    await client_writes(nc, "v-sales", "m1", "Price list please", account="shop")
    buckets = await bus.Buckets(nc.jetstream()).open()

    async def both() -> list[dict[str, Any]] | None:
        r = await http.get(f"{PREFIX}/sessions", headers=sup)
        rows: list[dict[str, Any]] = (await r.json())["sessions"]
        return rows if len(rows) == 2 else None

    rows = await wait_for(both, what="two sessions")
    doc = await _doc(http)
    conforms(doc, "list_sessions", await (await http.get(f"{PREFIX}/sessions", headers=sup)).json())
    assert {r["line_id"] for r in rows} == {"support", "sales"}
    only = await (await http.get(f"{PREFIX}/sessions", headers=sup, params={"line": "sales"})).json()
    assert [s["line_id"] for s in only["sessions"]] == ["sales"] and only["total"] == 1
    none = await (await http.get(f"{PREFIX}/sessions", headers=sup, params={"to": "2001-01-01"})).json()
    assert none == {"total": 0, "sessions": []}
    sid = next(r["id"] for r in rows if r["line_id"] == "support")
    one = await (await http.get(f"{PREFIX}/sessions/{sid}", headers=sup)).json()
    session, _ = await bus.kv_get(buckets.sessions, sid, Session)
    assert session is not None and one["session"]["id"] == sid and one["session"]["line_name"] == "Customer support"
    conforms(doc, "get_session", one)

    async def transcript() -> list[str] | None:
        r = await http.get(f"{PREFIX}/sessions/{sid}/transcript", headers=sup)
        texts = [e["text"] for e in (await r.json())["entries"]]
        return texts if "Where is my parcel?" in texts else None

    await wait_for(transcript, what="the client's message in the transcript")
    conforms(doc, "get_transcript", await (await http.get(f"{PREFIX}/sessions/{sid}/transcript", headers=sup)).json())
    assert (await http.get(f"{PREFIX}/sessions/nope", headers=sup)).status == 404
    for bad in ({"status": "sleeping"}, {"limit": "0"}, {"limit": "x"}, {"from": "yesterday"}, {"line": "a.b"}):
        r = await http.get(f"{PREFIX}/sessions", headers=sup, params=bad)
        assert r.status == 400, bad
        assert msgspec.json.decode(await r.read())["detail"]
