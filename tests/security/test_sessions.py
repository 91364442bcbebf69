"""Desk sessions do not outlive the credentials they were issued for.

Two real desk replicas on one nats-server: a password change, a role change or the removal of an operator -
through the admin page, the REST API or ``openlines.apply`` (the code of ``openlines lines apply``) - ends
that operator's sessions on every replica and closes their open live pages at once; an admin who changes
their own account keeps the session they did it from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher
from support import apply_lines
from support.desk import http_session, try_sign_in
from support.desk import sign_in as sign_in_operator
from support.desk_admin import LINES, bearer, make_token, running_desk, sign_in
from support.timing import scaled

from desk.settings import Settings
from openlines import bus
from openlines.apply import apply
from openlines.lines import parse
from openlines.runner import Service

Launch = Callable[..., Awaitable[Service[Settings]]]


@pytest.fixture
async def desks(nc: Any, nats_server: Any) -> AsyncIterator[Launch]:
    """Desk replicas sharing one secret and one NATS, with the admin test configuration applied."""
    await apply_lines(nc, LINES)
    async with AsyncExitStack() as started:

        async def start(**overrides: Any) -> Service[Settings]:
            return await started.enter_async_context(running_desk(nats_server.url, **overrides))

        yield start


def cookie_of(http: aiohttp.ClientSession) -> str:
    return next(c.value for c in http.cookie_jar if c.key == "ol_desk")


@asynccontextmanager
async def holding(svc: Service[Any], cookie: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of ``svc`` presenting the session cookie ``cookie`` (a copy of someone's sign-in)."""
    async with http_session(svc) as http:
        http.cookie_jar.update_cookies({"ol_desk": cookie})
        yield http


async def live_page(http: aiohttp.ClientSession, svc: Service[Any]) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect("/ws", headers={"Origin": f"http://127.0.0.1:{svc.port}"})
    assert (await ws.receive_json(timeout=scaled(10)))["type"] == "snapshot"
    return ws


async def closed_by_the_desk(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The desk closes the page (the receive waits for it; nothing is sent to the page meanwhile)."""
    msg = await ws.receive(timeout=scaled(10))
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert (msg.data, msg.extra) == (aiohttp.WSCloseCode.POLICY_VIOLATION, "credentials changed")


async def signed_out_everywhere(cookie: str, *replicas: Service[Any]) -> None:
    for svc in replicas:
        async with holding(svc, cookie) as http:
            assert (await http.get("/api/chats")).status == 401
            page = await http.get("/", allow_redirects=False)
            assert page.status == 303 and page.headers["Location"] == "/login"


async def save_operator_on_the_page(
    http: aiohttp.ClientSession, csrf: str, op_id: str, *, name: str, roles: list[str], password: str = ""
) -> aiohttp.ClientResponse:
    page = await (await http.get(f"/admin/operators/{op_id}")).text()
    version = re.search(r'name="version" value="([^"]*)"', page)
    assert version, page[:300]
    form = aiohttp.FormData()
    for key, value in [
        ("csrf_token", csrf),
        ("version", version.group(1)),
        ("name", name),
        *(("roles", r) for r in roles),
        ("permissions", "openlines"),
        ("password", password),
    ]:
        form.add_field(key, value)
    return await http.post(f"/admin/operators/{op_id}", data=form, allow_redirects=False)


async def version_of(http: aiohttp.ClientSession, token: str) -> str:
    got = await http.get("/api/v1/operators", headers=bearer(token))
    assert got.status == 200
    return str((await got.json())["version"])


async def test_a_password_changed_on_one_replica_ends_the_sessions_on_both_and_closes_live_pages(desks: Launch) -> None:
    one, two = await desks(), await desks()
    async with http_session(one) as b1, http_session(two) as b2, http_session(one) as admin:
        await sign_in_operator(b1, "boris")
        await sign_in_operator(b2, "boris")
        first, second = cookie_of(b1), cookie_of(b2)
        ws = await live_page(b2, two)  # Boris's live page on the other replica
        csrf = await sign_in(admin, "root")

        saved = await save_operator_on_the_page(
            admin, csrf, "boris", name="Boris Ivanov", roles=["operator"], password="a new secret"
        )
        assert saved.status == 303, await saved.text()

        await closed_by_the_desk(ws)
        await signed_out_everywhere(first, one, two)
        await signed_out_everywhere(second, one, two)
        # The admin's own session is untouched.
        assert (await admin.get("/admin/operators")).status == 200
    async with http_session(two) as again:
        assert (await try_sign_in(again, "boris", "demo")).status == 401
        assert (await try_sign_in(again, "boris", "a new secret")).status == 303
        assert (await again.get("/api/chats")).status == 200


async def test_a_role_change_or_removal_through_the_api_ends_the_sessions(desks: Launch, nc: Any) -> None:
    one, two = await desks(), await desks()
    token = await make_token(nc, "admin")
    async with http_session(one) as api:
        dina = {"name": "Dina", "roles": ["operator", "supervisor"], "permissions": ["openlines"], "password": "dina's secret"}
        made = await api.put(
            "/api/v1/operators/dina", json=dina, headers={**bearer(token), "If-Match": await version_of(api, token)}
        )
        assert made.status == 201, await made.text()
        async with http_session(two) as browser:
            assert (await try_sign_in(browser, "dina", "dina's secret")).status == 303
            ws = await live_page(browser, two)
            cookie = cookie_of(browser)
            # No longer a supervisor: the session issued with that role ends.
            changed = await api.put(
                "/api/v1/operators/dina",
                json={**dina, "roles": ["operator"], "password": None},
                headers={**bearer(token), "If-Match": await version_of(api, token)},
            )
            assert changed.status == 200, await changed.text()
            await closed_by_the_desk(ws)
            await signed_out_everywhere(cookie, one, two)

            assert (await try_sign_in(browser, "dina", "dina's secret")).status == 303  # as an operator now
            ws = await live_page(browser, two)
            cookie = cookie_of(browser)
            removed = await api.delete(
                "/api/v1/operators/dina", headers={**bearer(token), "If-Match": await version_of(api, token)}
            )
            assert removed.status == 200, await removed.text()
            await closed_by_the_desk(ws)
            await signed_out_everywhere(cookie, one, two)


async def test_a_password_changed_with_lines_apply_ends_the_sessions(desks: Launch, nc: Any) -> None:
    desk = await desks()
    async with http_session(desk) as browser:
        await sign_in(browser, "anna")
        ws = await live_page(browser, desk)
        cookie = cookie_of(browser)
        new_hash = PasswordHasher().hash("anna's new secret")
        changed = LINES.replace('[operators.anna]\nname = "Anna Petrova"\npassword_hash = "', "", 1)
        changed = '[operators.anna]\nname = "Anna Petrova"\npassword_hash = "' + new_hash + '"\n' + changed.split('"\n', 1)[1]
        await apply(await bus.Buckets(nc.jetstream()).open(), parse(changed))
        await closed_by_the_desk(ws)
        await signed_out_everywhere(cookie, desk)


async def test_renaming_an_operator_keeps_their_session(desks: Launch, nc: Any) -> None:
    desk = await desks()
    token = await make_token(nc, "admin")
    async with http_session(desk) as browser, http_session(desk) as api:
        await sign_in_operator(browser, "boris")
        body = {"name": "Boris I.", "roles": ["operator"], "permissions": ["openlines"]}
        renamed = await api.put(
            "/api/v1/operators/boris", json=body, headers={**bearer(token), "If-Match": await version_of(api, token)}
        )
        assert renamed.status == 200, await renamed.text()
        assert (await browser.get("/api/chats")).status == 200


async def test_an_admin_changing_their_own_password_keeps_this_session_and_ends_the_others(desks: Launch) -> None:
    one, two = await desks(), await desks()
    async with http_session(one) as here, http_session(two) as elsewhere:
        csrf = await sign_in(here, "root")
        await sign_in(elsewhere, "root")
        other_page = await live_page(elsewhere, two)
        old_cookie = cookie_of(here)

        saved = await save_operator_on_the_page(
            here, csrf, "root", name="Root Admin", roles=["admin", "supervisor"], password="root's new secret"
        )
        assert saved.status == 303, await saved.text()
        assert "ol_desk=" in saved.headers.get("Set-Cookie", "")

        await closed_by_the_desk(other_page)
        await signed_out_everywhere(cookie_of(elsewhere), one, two)
        await signed_out_everywhere(old_cookie, one, two)  # the cookie from before the change, copied, is refused too
        # This browser goes on, on both replicas, with the same CSRF token, and may open live pages.
        assert (await here.get("/admin/operators")).status == 200
        async with holding(two, cookie_of(here)) as same:
            assert (await same.get("/api/chats")).status == 200
            page = await live_page(same, two)
            await page.close()
        assert (await save_operator_on_the_page(here, csrf, "root", name="Root A.", roles=["admin", "supervisor"])).status == 303


async def change_own_password(
    http: aiohttp.ClientSession, csrf: str | None, current: str, new: str, again: str | None = None
) -> aiohttp.ClientResponse:
    data = {"current": current, "new": new, "again": new if again is None else again}
    if csrf is not None:
        data["csrf_token"] = csrf
    return await http.post("/account/password", data=data, allow_redirects=False)


async def test_an_operator_changing_their_own_password_stays_signed_in_here_and_nowhere_else(desks: Launch) -> None:
    one, two = await desks(login_failures_per_source=3), await desks(login_failures_per_source=3)
    async with http_session(one) as here, http_session(two) as elsewhere:
        csrf = (await sign_in_operator(here, "boris"))["X-CSRF-Token"]
        await sign_in_operator(elsewhere, "boris")
        other_page = await live_page(elsewhere, two)
        page = await (await here.get("/account/password")).text()
        assert 'data-testid="password-form"' in page and 'autocomplete="current-password"' in page

        # Refusals, each saying why; nothing changes.
        assert (await change_own_password(here, None, "demo", "a new secret")).status == 403  # no CSRF token
        for current, new, again, why in [
            ("wrong", "a new secret", None, "The current password is wrong."),
            ("demo", "short", None, "The new password must be 8-1024 characters."),
            ("demo", "a new secret", "another secret", "The two new passwords differ."),
        ]:
            refused = await change_own_password(here, csrf, current, new, again)
            assert refused.status == 400 and why in await refused.text()
        assert (await elsewhere.get("/api/chats")).status == 200  # nothing changed yet

        changed = await change_own_password(here, csrf, "demo", "boris's new secret")
        assert changed.status == 303 and changed.headers["Location"] == "/account/password?changed=1"
        await closed_by_the_desk(other_page)
        await signed_out_everywhere(cookie_of(elsewhere), one, two)
        # This browser goes on, with the same CSRF token.
        assert "Password changed" in await (await here.get("/account/password?changed=1")).text()
        status = await here.post("/api/status", json={"status": "away"}, headers={"X-CSRF-Token": csrf})
        assert status.status == 503  # session and CSRF token accepted; only the router is missing in this test
        async with holding(two, cookie_of(here)) as same:
            assert (await same.get("/api/chats")).status == 200
    async with http_session(two) as fresh:
        assert (await try_sign_in(fresh, "boris", "demo")).status == 401
        assert (await try_sign_in(fresh, "boris", "boris's new secret")).status == 303


async def test_guessing_the_current_password_in_a_left_open_session_runs_into_the_sign_in_limit(desks: Launch) -> None:
    desk = await desks(login_failures_per_source=2)
    async with http_session(desk) as http:
        csrf = (await sign_in_operator(http, "boris"))["X-CSRF-Token"]
        for _ in range(2):
            assert (await change_own_password(http, csrf, "guess", "a new secret")).status == 400
        limited = await change_own_password(http, csrf, "demo", "a new secret")  # even the right one, now
        assert limited.status == 429 and "Too many wrong passwords" in await limited.text()
