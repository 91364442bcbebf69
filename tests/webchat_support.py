"""Talking to the webchat gateway as the widget does: open /ws/<account>, authenticate with a hello frame."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from support import apply_lines

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
