"""The bare ceilings: the least an aiohttp server can do for the same job.

    python bench/bare_server.py ws-publish PORT NATS_URL   # per WebSocket text frame: one acked publish, then an ack
    python bench/bare_server.py http-publish PORT NATS_URL # per POST (a Telegram update): one acked JetStream publish, then 200
    python bench/bare_server.py vk-publish PORT NATS_URL   # per POST (a VK Callback API event): one acked publish, then "ok"
    python bench/bare_server.py ws-idle PORT NATS_URL      # accept WebSockets, send a welcome, hold them open

Same wire protocol as the webchat gateway (welcome frame, ``{"type":"ack","id":...,"status":"sent"}``)
so the same load generator drives both.
"""

from __future__ import annotations

import sys

import msgspec
import nats
from aiohttp import WSMsgType, web

from openlines import subjects
from openlines.natsauth import NatsAuth

# Which gateway each ceiling stands for: it connects as that gateway's NATS identity.
IDENTITY = {
    "ws-publish": "gateway-webchat",
    "http-publish": "gateway-telegram",
    "vk-publish": "gateway-vk",
    "ws-idle": "gateway-webchat",
}

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


async def main_app(mode: str, nats_url: str) -> web.Application:
    app = web.Application()
    auth = NatsAuth.from_env(identity=IDENTITY[mode])
    nc = await nats.connect(nats_url, name=f"bare-{mode}", **auth.connect_options())
    js = nc.jetstream(timeout=5.0)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def ws_publish(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        account = request.match_info["account"]
        visitor = request.query.get("v", "anon")
        await ws.receive()  # the hello frame, as the gateway reads it
        await ws.send_str('{"type":"welcome"}')
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = _dec.decode(msg.data)
            ack = await js.publish(
                subjects.inbound("webchat", account, visitor),
                msg.data.encode(),
                stream=subjects.STREAM_IN,
                headers={"Nats-Msg-Id": f"bare:{account}:{visitor}:{frame['id']}"},
            )
            await ws.send_str(
                _enc.encode({"type": "ack", "id": frame["id"], "status": "sent", "duplicate": ack.duplicate}).decode()
            )
        return ws

    async def http_publish(request: web.Request) -> web.Response:
        body = await request.read()
        account = request.match_info["account"]
        upd = _dec.decode(body)
        await js.publish(
            subjects.inbound("telegram", account, "bare"),
            body,
            stream=subjects.STREAM_IN,
            headers={"Nats-Msg-Id": f"bare:{account}:{upd.get('update_id')}"},
        )
        return web.json_response({"ok": True})

    async def vk_publish(request: web.Request) -> web.Response:
        body = await request.read()
        account = request.match_info["account"]
        event = _dec.decode(body)
        await js.publish(
            subjects.inbound("vk", account, "bare"),
            body,
            stream=subjects.STREAM_IN,
            headers={"Nats-Msg-Id": f"bare:{account}:{event.get('event_id')}"},
        )
        return web.Response(text="ok")

    async def ws_idle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the hello frame
        await ws.send_str('{"type":"welcome"}')
        async for _ in ws:
            pass
        return ws

    app.router.add_get("/readyz", readyz)
    if mode == "ws-publish":
        app.router.add_get("/ws/{account}", ws_publish)
    elif mode == "http-publish":
        app.router.add_post("/telegram/{account}", http_publish)
    elif mode == "vk-publish":
        app.router.add_post("/vk/{account}", vk_publish)
    elif mode == "ws-idle":
        app.router.add_get("/ws/{account}", ws_idle)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return app


if __name__ == "__main__":
    mode, port, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    web.run_app(main_app(mode, url), host="127.0.0.1", port=port, access_log=None, print=None)
