"""``openlines whatsapp check-webhook | numbers``: Meta's checks played against a running gateway, and each
number's token tried against the local Cloud API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from support.whatsapp import APP_SECRET, SHOP, VERIFY_TOKEN, accounts_json, fake_whatsapp, running_gateway

from openlines.cli import main


async def openlines(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))  # main() runs its own event loop


async def test_check_webhook_passes_against_the_gateway_and_never_prints_a_secret(
    nats_server: Any, nc: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENLINES_WHATSAPP_ACCOUNTS", accounts_json())
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer) as svc:
        assert await openlines("whatsapp", "check-webhook", "--public-url", f"http://127.0.0.1:{svc.port}/") == 0
        out = capsys.readouterr().out
        assert f"main: ok - http://127.0.0.1:{svc.port}/whatsapp/main (numbers: shop_wa, sales_wa)" in out
        assert "warning: Meta calls only https://" in out
        assert APP_SECRET not in out and VERIFY_TOKEN not in out


async def test_check_webhook_names_each_thing_a_wrong_endpoint_gets_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An endpoint that answers 200 to everything (a gateway with another app's secret, a proxy's default page)."""

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        monkeypatch.setenv("OPENLINES_WHATSAPP_ACCOUNTS", accounts_json())
        assert await openlines("whatsapp", "check-webhook", "--public-url", f"http://127.0.0.1:{port}") == 1
        out = capsys.readouterr().out
        assert "main: FAILED" in out
        assert "verification: answered 200 'ok', expected the challenge back" in out
        assert "forged signature: answered 200, expected 401 - the gateway must refuse it" in out
        assert await openlines("whatsapp", "check-webhook", "--public-url", "http://127.0.0.1:9", "--app", "nope") == 2
    finally:
        await runner.cleanup()


async def test_numbers_shows_each_profile_and_a_token_whatsapp_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_whatsapp() as peer:
        monkeypatch.setenv("OPENLINES_WHATSAPP_ACCOUNTS", accounts_json())
        monkeypatch.setenv("OPENLINES_WHATSAPP_API_BASE", peer.base)
        assert await openlines("whatsapp", "numbers") == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if x.startswith("shop_wa"))
        assert json.loads(line.split(": ", 1)[1])["verified_name"] == "Test Shop"
        peer.expire_token(SHOP["phone_number_id"])
        assert await openlines("whatsapp", "numbers", "--account", "shop_wa") == 1
        out = capsys.readouterr().out
        assert "shop_wa (106540352242922): FAILED" in out and "code 190" in out and "sales_wa" not in out
        assert SHOP["token"] not in out
