"""Helpers shared by the desk tests: the desk (and router) on a real nats-server, sign-in over HTTP and in
headless Chromium (a client writing is support.client_writes)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from desk.app import setup
from desk.settings import Settings
from openlines.runner import Service, launch
from support import apply_lines, running_router
from support.servers import creds

SECRET = "desk-test-cookie-secret-0123456-Kq7Zt9Wm3xRv"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
# pytestmark of a module that drives the desk in Chromium.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"chromium is not installed at {CHROMIUM}"),
]


@asynccontextmanager
async def running_desk(url: str, cookie_secret: str = SECRET, **overrides: Any) -> AsyncIterator[Service[Settings]]:
    settings = Settings(nats_url=url, http_port=0, cookie_secret=cookie_secret, **{**creds("desk"), **overrides})
    svc = await launch("desk", settings, setup, first_attempts=5)
    try:
        yield svc
    finally:
        await svc.stop()


@asynccontextmanager
async def desk_with_router(
    nc: NATS, url: str, cookie_secret: str = SECRET, lines: str | None = None
) -> AsyncIterator[Service[Settings]]:
    """``lines`` (TOML; by default deploy/lines.example.toml) applied, the router and a desk running against ``url``."""
    await apply_lines(nc, lines)
    async with running_router(url), running_desk(url, cookie_secret) as desk:
        yield desk


def desk_url(svc: Service[Any]) -> str:
    return f"http://127.0.0.1:{svc.port}"


def http_session(svc: Service[Any]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=desk_url(svc), cookie_jar=aiohttp.CookieJar(unsafe=True))


async def try_sign_in(http: aiohttp.ClientSession, login: str, password: str = "demo") -> aiohttp.ClientResponse:
    """Posts the login form with its CSRF token; the answer, not followed."""
    form = await (await http.get("/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, form
    return await http.post(
        "/login", data={"login": login, "password": password, "csrf_token": token.group(1)}, allow_redirects=False
    )


async def sign_in(http: aiohttp.ClientSession, login: str) -> dict[str, str]:
    """Signs in through the login form; the CSRF header the workspace's API calls need."""
    done = await try_sign_in(http, login)
    assert done.status == 303, await done.text()
    page = await (await http.get("/")).text()
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert csrf
    return {"X-CSRF-Token": csrf.group(1)}


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Any]:
    """Headless Chromium through Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any, base_url: str, errors: list[str] | None = None, width: int = 1280, height: int = 760) -> Any:
    """A page in a fresh browser context; JavaScript errors go to ``errors`` when given."""
    context = await browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    page = await context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


async def submit_login(page: Any, login: str, password: str = "demo") -> None:
    """Fills and submits the desk's login form."""
    await page.goto("/login")
    await page.get_by_test_id("login-user").fill(login)
    await page.get_by_test_id("login-password").fill(password)
    await page.get_by_test_id("login-submit").click()


async def sign_in_live(page: Any, login: str) -> None:
    """Signs in in the browser and waits for the workspace's live connection."""
    from playwright.async_api import expect

    await submit_login(page, login)
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")


async def go_online(page: Any) -> None:
    """The operator sets the status "online" in the workspace."""
    from playwright.async_api import expect

    await page.get_by_test_id("status-online").click()
    await expect(page.get_by_test_id("status-online")).to_have_attribute("aria-pressed", "true")
