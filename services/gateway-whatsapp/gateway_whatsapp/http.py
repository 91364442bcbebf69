"""The webhook edge: ``GET|POST /whatsapp/{app}``, one path per Meta app.

``GET`` is the verification handshake Meta makes when the webhook is set up
(``hub.mode=subscribe``, ``hub.verify_token``, ``hub.challenge``): the
challenge comes back as the body when the token is the app's, else 403.

A ``POST`` is handled top to bottom: find the app -> a well-formed
``X-Hub-Signature-256`` header or 401 (nothing read) -> an admission slot or
503 -> read at most ``max_body`` bytes -> HMAC-SHA256 of the **raw** body with
the app secret, compared in constant time, or 401 (nothing parsed, nothing
published) -> parse -> fetch and keep clients' files -> publish the messages
with ``Nats-Msg-Id`` (the wamid) -> publish the status marks -> 200 **only
after every PubAck**. Anything not stored answers 503, and WhatsApp sends the
whole notification again (for up to 7 days); what was stored is deduplicated.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

import msgspec
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway_whatsapp import metrics
from gateway_whatsapp.accounts import Accounts, App
from gateway_whatsapp.core.errors import GraphFailure
from gateway_whatsapp.core.errors import reason as failure_reason
from gateway_whatsapp.marks import publish_failed, publish_mark
from gateway_whatsapp.media import ClientFiles, FetchLater
from gateway_whatsapp.normalise import CHANNEL, BadWebhook, ClientMessage, StatusUpdate, parse_webhook
from gateway_whatsapp.settings import Settings
from openlines import admission, bus
from openlines.edge import Edge, TooLarge, read_body
from openlines.envelopes import utcnow

log = logging.getLogger("gateway_whatsapp.http")

SIGNATURE_HEADER = "X-Hub-Signature-256"
WEBHOOK_PATH = "/whatsapp/{app}"
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")


def webhook_path(app: str) -> str:
    return WEBHOOK_PATH.format(app=app)


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Unavailable(Exception):
    """Something was not stored: answer 503 so WhatsApp sends the notification again."""


class WhatsAppHttp:
    def __init__(self, settings: Settings, nc: NATS, js: JetStreamContext, accounts: Accounts, files: ClientFiles) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.accounts = accounts
        self.files = files
        self.edge = Edge(CHANNEL, lambda _status, code: metrics.REJECTED.labels(code).inc())
        self.admission = admission.Admission("whatsapp", settings.limits())

    def routes(self, app: web.Application) -> None:
        app.router.add_get(WEBHOOK_PATH, self.verify)
        app.router.add_post(WEBHOOK_PATH, self.webhook)

    def _refuse(self, status: int, code: str, detail: str, app: str, headers: dict[str, str] | None = None) -> web.Response:
        return self.edge.refuse(status, code, detail, headers, app=app)

    # -- the verification handshake ------------------------------------------------

    async def verify(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        app = self.accounts.apps.get(name)
        if app is None:
            return self._refuse(404, "unknown_app", "no Meta app is configured for this webhook path", name)
        mode = request.query.get("hub.mode", "")
        token = request.query.get("hub.verify_token", "")
        challenge = request.query.get("hub.challenge", "")
        if mode != "subscribe":
            return self._refuse(400, "invalid", "hub.mode must be subscribe", name)
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), app.verify_token.encode()):
            return self._refuse(403, "bad_verify_token", "hub.verify_token is not this app's verify token", name)
        if not _CHALLENGE.match(challenge):
            return self._refuse(400, "invalid", "hub.challenge is missing or not a plain token", name)
        metrics.WEBHOOKS.labels(name, "verified").inc()
        log.info("webhook verification answered", extra={"channel": CHANNEL, "app": name})
        return web.Response(text=challenge, content_type="text/plain")

    # -- notifications -------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        app = self.accounts.apps.get(name)
        if app is None:
            return self._refuse(404, "unknown_app", "no Meta app is configured for this webhook path", name)
        match = _SIGNATURE.match(request.headers.get(SIGNATURE_HEADER, ""))
        if match is None:
            return self._refuse(401, "bad_signature", f"missing or malformed {SIGNATURE_HEADER} header", name)
        given = bytes.fromhex(match.group(1))
        return await self.edge.admitted(self.admission, self._handle, request, app, given, app=name)

    async def _handle(self, request: web.Request, app: App, given: bytes) -> web.Response:
        try:
            body = await read_body(request, self.settings.max_body)
        except TooLarge as exc:
            return self._refuse(413, "too_large", str(exc), app.id)
        expected = hmac.new(app.app_secret.encode(), body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, given):
            return self._refuse(401, "bad_signature", f"{SIGNATURE_HEADER} does not match the body and the app secret", app.id)
        if self.edge.stopping:
            retry_after = admission.retry_after_header(self.settings.retry_after)
            return self._refuse(503, "unavailable", "gateway is stopping; retry", app.id, retry_after)
        try:
            with self.edge.working():
                return await self._store(app, body)
        except Unavailable as exc:
            retry_after = admission.retry_after_header(self.settings.retry_after)
            return self._refuse(503, "unavailable", str(exc), app.id, retry_after)

    async def _store(self, app: App, body: bytes) -> web.Response:
        try:
            parsed = parse_webhook(body, self.accounts, app.id, utcnow())
        except BadWebhook as exc:
            # Signed by Meta (the signature matched) but unreadable: kept as a dead letter, answered 200,
            # as a 5xx would make WhatsApp send it again for days.
            await self._dead_letter("", hashlib.sha256(body).hexdigest()[:48], exc.detail, body)
            metrics.WEBHOOKS.labels(app.id, "dead_letter").inc()
            return web.json_response({"ok": True, "dead_letter": exc.detail})
        duplicates = 0
        for message in parsed.messages:
            duplicates += await self._message(message)
        for status in parsed.statuses:
            await self._status(status)
        for dead in parsed.dead:
            await self._dead_letter(dead.account, dead.key, dead.reason, body)
        for what in parsed.ignored:
            metrics.IGNORED.labels(what.split(":", 1)[0]).inc()
            log.info("webhook content ignored", extra={"channel": CHANNEL, "app": app.id, "kind": what})
        metrics.WEBHOOKS.labels(app.id, "stored").inc()
        return web.json_response(
            {
                "ok": True,
                "messages": len(parsed.messages),
                "duplicates": duplicates,
                "statuses": len(parsed.statuses),
                "dead_letters": len(parsed.dead),
            }
        )

    async def _message(self, message: ClientMessage) -> int:
        inbound = message.inbound
        if message.media:
            # The client's files are fetched and kept before the message is published; one WhatsApp will never
            # give stays in the message with the reason (``extra.omitted``), which the desk shows.
            atts = list(inbound.attachments)
            for media in message.media:
                try:
                    atts[media.index] = await self.files.keep(message.number, media, atts[media.index])
                except FetchLater as exc:
                    log.warning(
                        "client file not fetched yet; asking WhatsApp to send the message again",
                        extra={"channel": CHANNEL, "account": inbound.account, "msg_id": inbound.id, "error": str(exc)},
                    )
                    raise Unavailable("a client's file could not be fetched now; retry") from None
            inbound = msgspec.structs.replace(inbound, attachments=atts)
        if not self.nc.is_connected:
            metrics.REJECTED.labels("nats_disconnected").inc()
            raise Unavailable("message bus unavailable; retry")
        try:
            ack = await bus.publish_inbound(self.nc, self.js, inbound, timeout=self.settings.publish_timeout)
        except bus.BusUnavailable as exc:
            log.warning(
                "publish failed",
                extra={
                    "channel": CHANNEL,
                    "account": inbound.account,
                    "msg_id": inbound.id,
                    "error": repr(exc.error or exc.reason),
                },
            )
            raise Unavailable("message not stored; retry") from None
        duplicate = bool(ack.duplicate)
        metrics.MESSAGES.labels(inbound.account, message.wa_type, str(duplicate).lower()).inc()
        log.debug(
            "message published",
            extra={"channel": CHANNEL, "account": inbound.account, "msg_id": inbound.id, "seq": ack.seq, "duplicate": duplicate},
        )
        return int(duplicate)

    async def _status(self, st: StatusUpdate) -> None:
        cb = st.callback
        if cb is None:
            # Sent from elsewhere (WhatsApp Manager, another tool), or before the gateway tagged its sends.
            metrics.STATUSES.labels(st.status, "untracked").inc()
            log.info("status of a message the gateway did not send", extra={"channel": CHANNEL, "account": st.number.account})
            return
        reason = failure_reason(st.failure or GraphFailure(message="failed")) if st.status == "failed" else ""
        try:
            await publish_mark(
                self.js,
                session_id=cb.session_id,
                message_id=cb.message_id,
                part=cb.part,
                status=st.status,
                at=st.at,
                account=st.number.account,
                reason=reason,
                timeout=self.settings.publish_timeout,
            )
            if st.status == "failed":
                await publish_failed(
                    self.js,
                    session_id=cb.session_id,
                    message_id=cb.message_id,
                    account=st.number.account,
                    chat_id=st.recipient,
                    reason=reason,
                    timeout=self.settings.publish_timeout,
                )
        except Exception as exc:  # timeout, NATS away: WhatsApp sends the status again
            log.warning("status not stored", extra={"channel": CHANNEL, "account": st.number.account, "error": repr(exc)})
            raise Unavailable("status not stored; retry") from None
        metrics.STATUSES.labels(st.status, "marked").inc()

    async def _dead_letter(self, account: str, key: str, reason: str, body: bytes) -> None:
        try:
            await bus.dead_letter(
                self.js, CHANNEL, account or "unknown", key, reason, body, timeout=self.settings.publish_timeout
            )
        except Exception as exc:  # not even the dead letter is stored: WhatsApp must send it again
            log.warning("dead letter not stored", extra={"channel": CHANNEL, "account": account, "error": repr(exc)})
            raise Unavailable("not stored; retry") from None
        metrics.REJECTED.labels("dead_letter").inc()
        log.warning(
            "unreadable webhook content kept as a dead letter", extra={"channel": CHANNEL, "account": account, "reason": reason}
        )

    async def shutdown(self) -> None:
        """Refuse new notifications (503: WhatsApp retries them), let the in-flight ones answer."""
        await self.edge.drain(self.settings.publish_timeout + self.settings.whatsapp_media_timeout)
