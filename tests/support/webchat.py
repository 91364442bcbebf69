"""Talking to the webchat gateway as the widget does: open /ws/<account>, authenticate with a hello frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from support import apply_lines
from support.servers import ServiceProcess, free_port
from support.timing import wait_for

SECRET = "widget-secret-0123456789abcdef-Kq7Zt9Wm3xRv"

Frame = dict[str, Any]
WS = aiohttp.ClientWebSocketResponse

# A line bound to the widget accounts the tests use: the gateway serves no other account.
WIDGET_LINES = """
[operators.anna]
name = "Anna"

[[lines]]
id = "web"
name = "Website"
channels = [{ channel = "webchat", account = "demo" }, { channel = "webchat", account = "shop" }]
[lines.queue]
operators = ["anna"]
"""

# For tests that measure something else (overload, chaos, benchmarks) with many visitors from one address.
NO_ABUSE_LIMITS = {"OPENLINES_VISITOR_MESSAGES_PER_MINUTE": "0", "OPENLINES_NEW_VISITORS_PER_MINUTE": "0"}


async def bind_widget_accounts(nc: NATS, text: str = WIDGET_LINES) -> None:
    await apply_lines(nc, text)


def hello_frame(token: str = "", since: int | None = None) -> Frame:
    hello: Frame = {"type": "hello"}
    if token:
        hello["token"] = token
    if since is not None:
        hello["since"] = since
    return hello


async def recv(ws: WS, timeout: float = 10.0) -> Frame:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
    frame: Frame = json.loads(msg.data)
    return frame


async def connect(
    http: aiohttp.ClientSession, base: str, *, token: str = "", since: int | None = None, account: str = "demo", **kw: Any
) -> tuple[WS, Frame]:
    """Open a socket and send the hello; the socket and the gateway's first answer (a welcome, or an error)."""
    ws = await http.ws_connect(f"{base}/ws/{account}", **kw)
    await ws.send_json(hello_frame(token, since))
    return ws, await recv(ws)


async def open_visitor(
    http: aiohttp.ClientSession, base: str, *, token: str = "", since: int | None = None, account: str = "demo", **kw: Any
) -> tuple[WS, Frame]:
    """A socket the gateway welcomed."""
    ws, welcome = await connect(http, base, token=token, since=since, account=account, **kw)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


@asynccontextmanager
async def webchat_process(nats_url: str, log_dir: Path, **env: str) -> AsyncIterator[str]:
    """The gateway as a real process (``python -m gateway_webchat``) once /readyz says so; yields its base URL."""
    port, metrics_port = free_port(), free_port()
    proc = ServiceProcess(
        f"webchat-{port}",
        "gateway_webchat",
        {
            "OPENLINES_NATS_URL": nats_url,
            "OPENLINES_HTTP_PORT": str(port),
            "OPENLINES_METRICS_PORT": str(metrics_port),
            "OPENLINES_WEBCHAT_SECRET": SECRET,
            "OPENLINES_SHUTDOWN_TIMEOUT": "3",
            **env,
        },
        log_dir,
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    _METRICS[url] = f"http://127.0.0.1:{metrics_port}"  # /metrics is on the internal port, not the public one
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                assert proc.exited() is None, (log_dir / f"{proc.name}.log").read_text()[-3000:]
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=60, what="gateway-webchat ready")
        yield url
    finally:
        proc.stop()
    log = (log_dir / f"{proc.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


_METRICS: dict[str, str] = {}  # a gateway process's public base URL -> its metrics port's


async def metric(base: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent), read from its internal metrics port."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    async with aiohttp.ClientSession() as http, http.get(f"{_METRICS.get(base, base)}/metrics") as resp:
        assert resp.status == 200, f"no /metrics at {_METRICS.get(base, base)}"
        for line in (await resp.text()).splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
    return 0.0


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


@asynccontextmanager
async def widget_in_chromium(nats_url: str, *, width: int = 1200, height: int = 800) -> AsyncIterator[tuple[Any, Any]]:
    """The router and the webchat gateway running, its demo page open in Chromium: (page, gateway).
    The lines must be applied first (the gateway serves only accounts a line is bound to)."""
    from playwright.async_api import async_playwright

    from gateway_webchat import Settings, setup
    from openlines import runner
    from support import running_router
    from support.servers import creds

    settings = Settings(
        nats_url=nats_url,
        http_port=0,
        webchat_secret="widget-in-chromium-secret-0123456789-Kq7Zt9",
        shutdown_timeout=3.0,
        **creds("gateway-webchat"),
    )
    async with running_router(nats_url), async_playwright() as p:
        gateway = await runner.launch("gateway-webchat", settings, setup, first_attempts=5)
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            await page.goto(f"http://127.0.0.1:{gateway.port}/demo")
            await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
            yield page, gateway
        finally:
            await browser.close()
            await gateway.stop()


@asynccontextmanager
async def customer_site(script_tag: str) -> AsyncIterator[str]:
    """A customer's web site (its own origin) whose page embeds the widget with ``script_tag``: its URL."""
    from aiohttp import web

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=f"<!doctype html><html><body><h1>Acme</h1>{script_tag}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    site_runner = web.AppRunner(app)
    await site_runner.setup()
    site = web.TCPSite(site_runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site_runner.addresses[0][1]}/"
    finally:
        await site_runner.cleanup()
