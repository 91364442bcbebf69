"""Sign-in guards: nobody can lock an account out from everywhere, logs never hold what was typed into the
login form, and the session cookie is Secure unless the desk runs on plain http on this machine."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import apply_lines
from support.desk import http_session
from support.desk_admin import LINES, SECRET, bearer, running_desk
from support.servers import NatsServer, ServiceProcess, free_port
from support.timing import wait_for

from desk.settings import Settings
from openlines.runner import Service
from openlines.settings import SettingsError, load_settings

Launch = Callable[..., Awaitable[Service[Settings]]]
ADDRESS_A = "203.0.113.5"
ADDRESS_B = "198.51.100.7"


@pytest.fixture
async def desks(nc: Any, nats_server: Any) -> AsyncIterator[Launch]:
    await apply_lines(nc, LINES)
    async with AsyncExitStack() as started:

        async def start(**overrides: Any) -> Service[Settings]:
            return await started.enter_async_context(running_desk(nats_server.url, **overrides))

        yield start


async def sign_in_from(
    http: aiohttp.ClientSession, address: str, login: str, password: str, **headers: str
) -> aiohttp.ClientResponse:
    """The login form, filled and posted by a client at ``address`` (behind the desk's trusted proxy)."""
    forwarded = {"X-Forwarded-For": f"10.9.9.9, {address}", **headers}  # the proxy appends the real peer last
    form = await (await http.get("/login", headers=forwarded)).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, form
    data = {"login": login, "password": password, "csrf_token": token.group(1)}
    return await http.post("/login", data=data, headers=forwarded, allow_redirects=False)


async def metric(svc: Service[Any], name: str, **labels: str) -> float:
    """One sample from the desk's /metrics (on its internal port)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{svc.metrics_port}/metrics") as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


# -- lockout ----------------------------------------------------------------------------------------


async def test_failures_from_one_address_lock_only_that_address_out_of_the_account(desks: Launch) -> None:
    one, two = await desks(trust_forwarded_for=True), await desks(trust_forwarded_for=True)
    async with http_session(one) as attacker, http_session(two) as admin:
        for _ in range(5):
            assert (await sign_in_from(attacker, ADDRESS_A, "root", "guess")).status == 401
        # From A, even the right password now waits (on every replica) ...
        limited = await sign_in_from(admin, ADDRESS_A, "root", "demo")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
        assert "Too many failed sign-ins" in await limited.text()
        # ... but the admin at another address signs in.
        assert (await sign_in_from(admin, ADDRESS_B, "root", "demo")).status == 303
        assert (await admin.get("/admin/operators")).status == 200


async def test_failures_from_many_addresses_slow_the_login_but_never_lock_it(desks: Launch) -> None:
    desk = await desks(trust_forwarded_for=True, login_failures_per_login=3, login_slow_seconds=0.1)
    slowed_before = await metric(desk, "openlines_desk_logins_total", result="slowed")
    async with http_session(desk) as http:
        for i in range(6):  # a crowd of addresses, each below its own limits
            assert (await sign_in_from(http, f"192.0.2.{10 + i}", "root", "guess")).status == 401
        http.cookie_jar.clear()
        signed_in = await sign_in_from(http, ADDRESS_B, "root", "demo")
        assert signed_in.status == 303, await signed_in.text()
    # Every attempt past the per-login ceiling was slowed, the right one too - none was refused.
    assert await metric(desk, "openlines_desk_logins_total", result="slowed") - slowed_before == 4


async def test_the_client_address_comes_from_x_forwarded_for_only_when_trusted(desks: Launch) -> None:
    desk = await desks(login_failures_per_source=2)  # trust_forwarded_for off: every request is 127.0.0.1
    async with http_session(desk) as http:
        for address in (ADDRESS_A, ADDRESS_B):
            assert (await sign_in_from(http, address, "boris", "guess")).status == 401
        # A forged header does not give the attacker a fresh budget.
        assert (await sign_in_from(http, "192.0.2.99", "boris", "demo")).status == 429


# -- logs -------------------------------------------------------------------------------------------


@pytest.fixture
async def desk_process(nc: Any, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """(base URL, log file) of the desk as a real process, logging at debug level."""
    await apply_lines(nc, LINES)
    port = free_port()
    env = {
        "OPENLINES_NATS_URL": nats_server.url,
        "OPENLINES_HTTP_PORT": str(port),
        "OPENLINES_COOKIE_SECRET": SECRET,
        "OPENLINES_LOG_LEVEL": "debug",
        "OPENLINES_LOGIN_FAILURES_PER_SOURCE": "2",
    }
    proc = ServiceProcess("desk", "desk", env, tmp_path)
    proc.start()
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        assert proc.exited() is None, (tmp_path / "desk.log").read_text()[-3000:]
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_for(ready, timeout=60, what="the desk process ready")
        yield base, tmp_path / "desk.log"
    finally:
        proc.stop()


async def test_no_typed_login_password_or_token_reaches_the_log(desk_process: tuple[str, Path]) -> None:
    base, log = desk_process
    typed_password = "Tr0ub4dor&3-typed-as-login"
    bad_token = "olt_0123456789ab_" + "S" * 43
    async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # Someone types their password into the login field: refused, then rate limited (both logged).
        for expected in (401, 401, 429):
            assert (await sign_in_from(http, ADDRESS_A, typed_password, "the real password?")).status == expected
        # An unknown login with the right shape, a wrong password of a real account, a bogus API token.
        assert (await sign_in_from(http, ADDRESS_A, "root", "root's wrong password")).status == 401
        assert (await http.get("/api/v1/lines", headers=bearer(bad_token))).status == 401
        # A right sign-in, so the log has something about this client at all.
        assert (await sign_in_from(http, ADDRESS_B, "anna", "demo")).status == 303

    async def logged_the_sign_in() -> bool:
        return '"signed in"' in log.read_text(errors="replace")  # the last event: everything before is written

    await wait_for(logged_the_sign_in, what="the sign-in log line")
    text = log.read_text(errors="replace")
    assert "sign-in rate limited" in text and "sign-in refused" in text  # the log is there and in use
    for secret in (typed_password, "the real password?", "root's wrong password", bad_token, "S" * 43):
        assert secret not in text, f"{secret!r} is in the desk's log"


# -- Secure cookie ----------------------------------------------------------------------------------


def _set_cookie(resp: aiohttp.ClientResponse, name: str) -> str:
    return next(v for v in resp.headers.getall("Set-Cookie", []) if v.startswith(f"{name}="))


@pytest.mark.parametrize(
    ("settings", "headers", "secure"),
    [
        ({}, {}, False),  # development: plain http on this machine, no public URL
        ({"desk_public_url": "http://127.0.0.1:8080"}, {}, False),
        ({"desk_public_url": "https://desk.example.com"}, {}, True),
        ({"trust_forwarded_for": True}, {"X-Forwarded-Proto": "https"}, True),  # TLS ends at our proxy
        ({}, {"X-Forwarded-Proto": "https"}, False),  # the header counts only from a trusted proxy
        ({"desk_public_url": "https://desk.example.com", "cookie_secure": False}, {}, False),  # said explicitly
    ],
)
async def test_cookies_are_secure_unless_the_desk_is_plain_http_on_this_machine(
    desks: Launch, settings: dict[str, Any], headers: dict[str, str], secure: bool
) -> None:
    desk = await desks(**settings)
    async with http_session(desk) as http:
        form = await http.get("/login", headers=headers)
        assert ("; Secure" in _set_cookie(form, "ol_desk_login")) is secure
        token = re.search(r'name="csrf_token" value="([^"]+)"', await form.text())
        assert token
        # Sent by hand: the test client, like a browser, keeps a Secure cookie away from plain http.
        done = await http.post(
            "/login",
            data={"login": "anna", "password": "demo", "csrf_token": token.group(1)},
            headers=headers,
            cookies={"ol_desk_login": form.cookies["ol_desk_login"].value},
            allow_redirects=False,
        )
        assert done.status == 303, await done.text()
        assert ("; Secure" in _set_cookie(done, "ol_desk")) is secure


def test_a_plain_http_public_url_on_another_host_is_refused_at_start_up() -> None:
    env = {"OPENLINES_COOKIE_SECRET": SECRET, "OPENLINES_DESK_PUBLIC_URL": "http://desk.example.com"}
    with pytest.raises(SettingsError, match="OPENLINES_COOKIE_SECURE=false"):
        load_settings(Settings, env=env)
    # Said on purpose: accepted, and not Secure.
    ok = load_settings(Settings, env={**env, "OPENLINES_COOKIE_SECURE": "false"})
    assert ok.secure_cookies(request_https=False) is False
    for url in ("http://localhost:8080", "http://127.0.0.1", "http://[::1]:8080"):
        assert load_settings(Settings, env={**env, "OPENLINES_DESK_PUBLIC_URL": url}).secure_cookies(request_https=True) is False
