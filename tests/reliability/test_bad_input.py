"""Bad input, generated: the widget socket and the desk API never answer 5xx,
never leak a traceback, and change nothing when they refuse.

Examples per target: 60 in `make test`, OPENLINES_FUZZ_EXAMPLES=10000 in
`make chaos`. (The Telegram and VK webhook bodies are fuzzed in their own
suites, tests/integration/telegram/test_telegram_fuzz.py and test_vk_callback.py.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import apply_lines
from support.servers import creds
from support.timing import scaled
from support.webchat import bind_widget_accounts, hello_frame

from openlines import subjects
from openlines.runner import launch

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("OPENLINES_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
frames = st.one_of(
    st.text(max_size=300),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "hello", "", "x"]), "id": st.text(max_size=80), "text": st.text(max_size=200)}
    ).map(json.dumps),
)


async def stored_inbound(nc: Any) -> int:
    return int((await nc.jetstream().stream_info(subjects.STREAM_IN)).state.messages)


@pytest.fixture
async def widget(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    from gateway_webchat import Settings, setup

    await bind_widget_accounts(nc)
    settings_ = Settings(
        nats_url=nats_server.url,
        http_port=0,
        webchat_secret="fuzz-secret-0123456789-Kq7Zt9Wm3xRv",
        **creds("gateway-webchat"),
    )
    svc = await launch("gateway-webchat", settings_, setup)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{svc.port}/ws/demo") as ws:
            await ws.send_json(hello_frame())
            assert json.loads((await ws.receive()).data)["type"] == "welcome"
            yield ws
            assert not ws.closed  # the visitor's session survived everything
    finally:
        await svc.stop()


@FUZZ
@given(frame=frames)
async def test_widget_socket_survives_generated_frames_and_publishes_nothing_bad(nc: Any, widget: Any, frame: str) -> None:
    before = await stored_inbound(nc)
    await widget.send_str(frame)
    answer = json.loads((await widget.receive(timeout=scaled(10))).data)
    assert answer["type"] in ("ack", "error"), answer
    assert "Traceback" not in json.dumps(answer)
    if answer["type"] == "error":
        assert await stored_inbound(nc) == before  # refused: nothing published
        assert answer["code"] in ("bad_frame", "too_large", "rate_limited"), answer


@pytest.fixture
async def desk_client(nc: Any, nats_server: Any) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    from support import running_router

    from desk.app import setup
    from desk.settings import Settings

    await apply_lines(nc)
    async with running_router(nats_server.url):
        settings_ = Settings(
            nats_url=nats_server.url,
            http_port=0,
            cookie_secret="fuzz-cookie-secret-0123-Kq7Zt9Wm3xRv",
            **creds("desk"),
        )
        svc = await launch("desk", settings_, setup)
        base = f"http://127.0.0.1:{svc.port}"
        try:
            async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                form = await (await http.get("/login")).text()
                token = re.search(r'name="csrf_token" value="([^"]+)"', form)
                assert token
                await http.post("/login", data={"login": "anna", "password": "demo", "csrf_token": token.group(1)})
                page = await (await http.get("/")).text()
                csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
                assert csrf
                yield http, csrf.group(1)
        finally:
            await svc.stop()


PATHS = [
    "/api/status",
    "/api/chats",
    "/api/sessions/{}/history",
    "/api/sessions/{}/accept",
    "/api/sessions/{}/reply",
    "/api/sessions/{}/close",
    "/login",
    "/logout",
]


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    sid=st.text(max_size=40),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    body=json_values,
    with_csrf=st.booleans(),
)
async def test_desk_api_never_answers_5xx_to_generated_requests(
    desk_client: tuple[aiohttp.ClientSession, str], path: str, sid: str, method: str, body: Any, with_csrf: bool
) -> None:
    http, csrf = desk_client
    target = path.format(quote(sid, safe="") or "x") if "{}" in path else path
    headers = {"X-CSRF-Token": csrf} if with_csrf else {}
    async with http.request(method, target, json=body, headers=headers, allow_redirects=False) as r:
        text = await r.text()
        assert r.status < 500, (method, target, body, r.status, text[:300])
        assert "Traceback" not in text
