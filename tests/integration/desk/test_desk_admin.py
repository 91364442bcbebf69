"""The admin pages over HTTP (real desk and nats-server): who may open them, CSRF, the doctor before a save,
two admins editing at once, operators created and explained."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher
from support import apply_lines
from support.desk_admin import LINES, http_session, in_line, running_desk, sign_in

from openlines import bus
from openlines.apply import line_key
from openlines.lines import LineConfig
from openlines.state import OperatorAccount


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    await apply_lines(nc, LINES)
    async with running_desk(nats_server.url) as svc:
        yield svc


@pytest.fixture
async def admin(desk: Any) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with http_session(desk) as http:
        csrf = await sign_in(http, "root")
        yield http, csrf


def _field(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no field {name}"
    return m.group(1)


def _textarea(page: str) -> str:
    import html

    m = re.search(r'<textarea name="toml"[^>]*>(.*?)</textarea>', page, re.S)
    assert m
    return html.unescape(m.group(1))


async def _line(nc: Any, line_id: str) -> LineConfig | None:
    line, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).lines, line_key(line_id), LineConfig)
    return line


async def test_only_admins_open_the_admin_pages(desk: Any) -> None:
    async with http_session(desk) as anon:
        r = await anon.get("/admin/lines", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login"
    async with http_session(desk) as anna:
        await sign_in(anna, "anna")  # operator and supervisor, not admin
        for path in ("/admin/lines", "/admin/operators", "/admin/roles", "/admin/operators/carl"):
            r = await anna.get(path)
            assert r.status == 403, path
            assert "needs the admin role" in await r.text()


async def test_a_save_shows_the_doctor_first_then_goes_live(admin: tuple[aiohttp.ClientSession, str], nc: Any) -> None:
    http, csrf = admin
    page = await (await http.get("/admin/lines")).text()
    text = _textarea(page)
    text = in_line(text, "support", 'welcome = "Hello {client_name}, this is support."', 'welcome = "Hi {client_name}!"')
    # Five seconds to accept: the doctor recommends 30-60.
    text = in_line(text, "support", "[lines.queue]\n", "[lines.queue]\nwait_seconds = 5\n")
    assert "wait_seconds = 5" in text
    form = {"csrf_token": csrf, "version": _field(page, "version"), "toml": text, "action": "save"}
    first = await http.post("/admin/lines", data=form)
    assert first.status == 200
    shown = await first.text()
    assert 'data-code="queue-wait-seconds"' in shown and 'data-testid="confirm-note"' in shown
    line = await _line(nc, "support")
    assert line is not None and line.queue.wait_seconds == 45  # not saved yet

    done = await http.post("/admin/lines", data={**form, "confirm": _field(shown, "confirm")}, allow_redirects=False)
    assert done.status == 303, await done.text()
    line = await _line(nc, "support")
    assert line is not None and line.queue.wait_seconds == 5 and line.auto_replies.welcome == "Hi {client_name}!"


async def test_an_invalid_config_is_refused_per_key_and_changes_nothing(
    admin: tuple[aiohttp.ClientSession, str], nc: Any
) -> None:
    http, csrf = admin
    page = await (await http.get("/admin/lines")).text()
    text = in_line(_textarea(page), "sales", '"boris",\n]', '"boris",\n    "ghost",\n]')
    form = {"csrf_token": csrf, "version": _field(page, "version"), "toml": text, "action": "save"}
    r = await http.post("/admin/lines", data=form)
    assert r.status == 400
    assert "queue.operators: &#x27;ghost&#x27; is not declared under [operators]" in await r.text()
    bad_toml = await http.post("/admin/lines", data={**form, "toml": "[[lines]\nid="})
    assert bad_toml.status == 400 and "not valid TOML" in await bad_toml.text()
    line = await _line(nc, "sales")
    assert line is not None and line.queue.operators == ["boris"]


async def test_a_form_without_the_csrf_token_is_refused(admin: tuple[aiohttp.ClientSession, str], nc: Any) -> None:
    http, _ = admin
    page = await (await http.get("/admin/lines")).text()
    text = _textarea(page).replace('name = "Sales"', 'name = "Hijacked"')
    r = await http.post("/admin/lines", data={"version": _field(page, "version"), "toml": text, "action": "save"})
    assert r.status == 403
    line = await _line(nc, "sales")
    assert line is not None and line.name == "Sales"


async def test_two_admins_on_the_same_page_cannot_overwrite_each_other(desk: Any, nc: Any) -> None:
    async with http_session(desk) as one, http_session(desk) as two:
        csrf1, csrf2 = await sign_in(one, "root"), await sign_in(two, "root")
        page1 = await (await one.get("/admin/lines")).text()
        page2 = await (await two.get("/admin/lines")).text()
        assert _field(page1, "version") == _field(page2, "version")
        text1 = _textarea(page1).replace('name = "Sales"', 'name = "Sales by one"')
        text2 = _textarea(page2).replace('name = "Sales"', 'name = "Sales by two"')
        saved = await one.post(
            "/admin/lines",
            data={"csrf_token": csrf1, "version": _field(page1, "version"), "toml": text1, "action": "save"},
            allow_redirects=False,
        )
        assert saved.status == 303  # a rename brings no new doctor finding: saved at once
        form2 = {"csrf_token": csrf2, "version": _field(page2, "version"), "toml": text2, "action": "save"}
        late = await two.post("/admin/lines", data=form2)
        assert late.status == 409
        assert "Someone else changed the configuration" in await late.text()
    line = await _line(nc, "sales")
    assert line is not None and line.name == "Sales by one"


async def test_the_operators_page_says_why_an_operator_sees_no_chats(admin: tuple[aiohttp.ClientSession, str]) -> None:
    http, _ = admin
    page = await (await http.get("/admin/operators")).text()
    carl = page[page.index('data-operator="carl"') :]
    carl = carl[: carl.index("</tr>")]
    assert "Sees no chats" in carl
    assert "lacks the &#x27;openlines&#x27; (open lines) permission" in carl
    assert "is not a member of any line&#x27;s queue" in carl
    anna = page[page.index('data-operator="anna"') :]
    assert "sees the chats of its lines" in anna[: anna.index("</tr>")]
    roles = await (await http.get("/admin/roles")).text()
    assert re.search(r'data-role="admin">.*?<td>root</td>', roles, re.S)


async def test_an_operator_created_on_the_page_gets_an_argon2_password(admin: tuple[aiohttp.ClientSession, str], nc: Any) -> None:
    http, csrf = admin
    page = await (await http.get("/admin/operators")).text()
    version = _field(page, "version")
    form = aiohttp.FormData()
    for key, value in (
        ("csrf_token", csrf),
        ("version", version),
        ("id", "dina"),
        ("name", "Dina New"),
        ("roles", "operator"),
        ("permissions", "openlines"),
        ("password", "correct horse battery"),
    ):
        form.add_field(key, value)
    r = await http.post("/admin/operators", data=form, allow_redirects=False)
    assert r.status == 303, await r.text()
    account, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).accounts, "dina", OperatorAccount)
    assert account is not None and account.roles == ["operator"] and account.permissions == ["openlines"]
    assert PasswordHasher().verify(account.password_hash, "correct horse battery")
    again = await http.post(
        "/admin/operators",
        data={"csrf_token": csrf, "version": version, "id": "anna", "name": "Impostor", "password": "12345678"},
    )
    assert again.status == 400
    assert "exists already" in await again.text()


async def test_an_admin_cannot_lock_themselves_out(admin: tuple[aiohttp.ClientSession, str], nc: Any) -> None:
    http, csrf = admin
    page = await (await http.get("/admin/operators/root")).text()
    version = _field(page, "version")
    demoted = await http.post(
        "/admin/operators/root", data={"csrf_token": csrf, "version": version, "name": "Root Admin", "roles": "supervisor"}
    )
    assert demoted.status == 400
    assert "cannot take the admin role from yourself" in await demoted.text()
    removed = await http.post("/admin/operators/root/delete", data={"csrf_token": csrf, "version": version})
    assert removed.status == 400
    account, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).accounts, "root", OperatorAccount)
    assert account is not None and account.roles == ["admin", "supervisor"]
