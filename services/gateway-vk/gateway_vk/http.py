"""The edge: ``POST /vk/{account}``, the Callback API endpoint of one community.

A request is handled top to bottom: read (1 MiB at most) -> parse the
envelope -> verify group and secret -> confirmation or event -> normalise ->
keep the client's files (``media.py``) -> publish with ``Nats-Msg-Id`` ->
answer ``ok`` only after the PubAck.

Anything but ``ok`` makes VK send the event again (with ``X-Retry-Counter``),
so a replica at capacity (``OPENLINES_MAX_IN_FLIGHT`` being handled,
``OPENLINES_MAX_WAITING`` waiting) answers 503 with ``Retry-After`` before it
reads the body: nothing is stored and VK retries later.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import Counter

from gateway_vk import metrics
from gateway_vk.media import Media
from gateway_vk.normalise import (
    CHANNEL,
    Callback,
    CallbackError,
    VkMessage,
    event_key,
    parse_callback,
    parse_message_new,
    plain_message,
    to_inbound,
)
from gateway_vk.profiles import Profiles
from gateway_vk.reads import Reads
from gateway_vk.settings import Community, Settings
from gateway_vk.vkapi import CommunityApi, VkError, VkUnreachable
from openlines import admission, bus, subjects
from openlines.edge import Edge, TooLarge, read_body
from openlines.envelopes import utcnow
from openlines.runner import json_error

log = logging.getLogger("gateway_vk.http")

RETRY_HEADER = "X-Retry-Counter"
CONFIRMATION_TIMEOUT = 5.0
OK = "ok"
_OK = OK.encode()


def _ok() -> web.Response:
    """The answer VK waits for: what ``web.Response(text=OK)`` gives, without encoding it per event."""
    return web.Response(body=_OK, content_type="text/plain", charset="utf-8")


class CallbackHttp:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        communities: dict[str, Community],
        lookups: dict[str, CommunityApi],
        profiles: Profiles,
        media: Media,
        reads: Reads | None = None,
    ) -> None:
        self.reads = reads  # message_read -> read marks on the replies it covers
        self.settings = settings
        self.nc = nc
        self.js = js
        self.communities = communities
        self.lookups = lookups
        self.profiles = profiles
        self.media = media
        self.edge = Edge(CHANNEL, lambda status, code: metrics.REFUSED.labels(str(status), code).inc())
        self._confirmations: dict[str, str] = {}
        self._events: dict[tuple[str, str], Counter] = {}  # (account, outcome) -> its EVENTS child
        self.admission = admission.Admission("vk", settings.limits())

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/vk/{account}", self.callback)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        account = request.match_info["account"]
        community = self.communities.get(account)
        if community is None:
            return self.edge.refuse(404, "unknown_account", "no VK community is configured for this URL", quiet=True)
        return await self.edge.admitted(self.admission, self._handle, request, community, account=account)

    async def _handle(self, request: web.Request, community: Community) -> web.StreamResponse:
        account = community.account
        plain: VkMessage | None = None
        try:
            body = await read_body(request, self.settings.max_body)
            fast = plain_message(body)  # a client's plain text, read in one typed decode; None: the full path
            if fast is not None:
                event, plain = fast
            else:
                event = parse_callback(body)
            self._verify(community, event)
        except TooLarge as exc:
            return self.edge.refuse(413, "too_large", str(exc), account=account, reason=str(exc))
        except CallbackError as exc:
            return self.edge.refuse(exc.status, exc.code, exc.detail, account=account, reason=exc.detail)
        retry = request.headers.get(RETRY_HEADER, "")
        if retry:
            metrics.RETRIED_EVENTS.inc()
        if event.type == "confirmation":
            return await self._confirm(community)
        if event.type == "message_typing_state":
            await self._typing(account, event.object)
            metrics.EVENTS.labels(account, "typing").inc()
            return web.Response(text=OK)
        if event.type == "message_read":
            return await self._read_up_to(account, event.object)
        if event.type != "message_new":
            # message_reply / message_edit echo our own sends; read, allow/deny... are not messages.
            metrics.EVENTS.labels(account, "ignored").inc()
            log.debug("event ignored", extra={"channel": CHANNEL, "account": account, "type": event.type})
            return web.Response(text=OK)
        key = event_key(event, body)
        try:
            message = plain if plain is not None else parse_message_new(event.object)
        except CallbackError as exc:
            # Signed by VK (the secret matched) but not a message we can read: VK counts every
            # answer but "ok" as a failure and switches a failing server off, so answer "ok" and
            # keep the event, with the reason, as a dead letter for whoever looks after the gateway.
            return await self._dead_letter(account, key, exc.detail, body)
        if message is None:
            metrics.EVENTS.labels(account, "ignored").inc()
            return web.Response(text=OK)
        with self.edge.working():
            return await self._publish(community, key, message, retry)

    async def _typing(self, account: str, obj: object) -> None:
        """The client is typing in the community's dialog: the operator sees "typing..." (core NATS, never stored)."""
        if not isinstance(obj, dict) or obj.get("state") != "typing":
            return
        user = obj.get("from_id")
        if not isinstance(user, int) or isinstance(user, bool) or user <= 0:
            return
        if not self.nc.is_connected:  # not buffered for a reconnect: it would be stale by then
            log.debug("client typing not told: NATS not connected", extra={"channel": CHANNEL, "account": account})
            return
        chat = subjects.chat_key(CHANNEL, account, str(user))
        try:
            await self.nc.publish(subjects.typing_in(CHANNEL, account, chat), b"{}")
        except Exception as exc:  # a lost "typing" costs nothing; VK gets its "ok" regardless
            log.debug("client typing not told", extra={"channel": CHANNEL, "account": account, "error": repr(exc)[:200]})

    async def _read_up_to(self, account: str, obj: object) -> web.Response:
        """The client read the dialog up to a message: our replies up to it get a read mark (reads.py)."""
        peer = obj.get("peer_id") if isinstance(obj, dict) else None
        upto = obj.get("read_message_id") if isinstance(obj, dict) else None
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**53 for v in (peer, upto)) or self.reads is None:
            metrics.EVENTS.labels(account, "ignored").inc()
            return web.Response(text=OK)
        assert isinstance(peer, int) and isinstance(upto, int)
        try:
            marked = await self.reads.read(account, peer, upto)
        except Exception as exc:  # marks not stored: VK retries the callback (10 s, 3 min, ...)
            metrics.EVENTS.labels(account, "unavailable").inc()
            log.warning("read marks not stored; answering 503", extra={"account": account, "error": repr(exc)[:200]})
            retry_after = admission.retry_after_header(self.settings.retry_after)
            return json_error(503, "unavailable", "read marks not stored; retry later", retry_after)
        metrics.EVENTS.labels(account, "read").inc()
        log.debug("read marks stored", extra={"channel": CHANNEL, "account": account, "marked": marked})
        return web.Response(text=OK)

    # -- steps ----------------------------------------------------------------

    def _verify(self, community: Community, event: Callback) -> None:
        if event.group_id != community.group_id:
            raise CallbackError(403, "forbidden", "group_id does not belong to this URL")
        # The confirmation request may come without the secret; every event must carry it.
        if event.secret is None and event.type == "confirmation":
            return
        given = (event.secret or "").encode("utf-8")
        if not hmac.compare_digest(given, community.secret.encode("utf-8")):
            raise CallbackError(403, "forbidden", "wrong or missing secret")

    async def _confirm(self, community: Community) -> web.Response:
        code = community.confirmation or self._confirmations.get(community.account, "")
        if not code:
            api = self.lookups[community.account]
            try:
                answer = await asyncio.wait_for(
                    api.call("groups.getCallbackConfirmationCode", {"group_id": str(community.group_id)}),
                    timeout=CONFIRMATION_TIMEOUT,
                )
                code = str(answer["code"]) if isinstance(answer, dict) and answer.get("code") else ""
            except (TimeoutError, VkError, VkUnreachable) as exc:
                log.warning(
                    "confirmation code not available",
                    extra={"channel": CHANNEL, "account": community.account, "error": str(exc) or "timeout"},
                )
            if not code:
                metrics.EVENTS.labels(community.account, "unavailable").inc()
                detail = "confirmation string not available; set it in OPENLINES_VK_GROUPS"
                return json_error(503, "unavailable", detail, admission.retry_after_header(self.settings.retry_after))
            self._confirmations[community.account] = code
        metrics.EVENTS.labels(community.account, "confirmation").inc()
        log.info("confirmation answered", extra={"channel": CHANNEL, "account": community.account})
        return web.Response(text=code)

    async def _dead_letter(self, account: str, key: str, reason: str, body: bytes) -> web.StreamResponse:
        try:
            await bus.dead_letter(self.js, CHANNEL, account, key, reason, body, timeout=self.settings.publish_timeout)
        except Exception as exc:  # not even the dead letter is stored: VK must send it again
            log.warning("dead letter not stored", extra={"channel": CHANNEL, "account": account, "error": repr(exc)})
            return json_error(
                503, "unavailable", "not stored; retry later", admission.retry_after_header(self.settings.retry_after)
            )
        metrics.EVENTS.labels(account, "dead_letter").inc()
        log.warning("unreadable event kept as a dead letter", extra={"channel": CHANNEL, "account": account, "reason": reason})
        return web.Response(text=OK)

    async def _publish(self, community: Community, key: str, message: VkMessage, retry: str) -> web.StreamResponse:
        account = community.account

        def unavailable() -> web.Response:  # built only when needed: it is on the path of every event
            retry_after = admission.retry_after_header(self.settings.retry_after)
            return json_error(503, "unavailable", "message not stored; retry later", retry_after)

        # A disconnected client would buffer the publish and we would wait for
        # nothing: fail fast so VK retries (10 s, 3 min, 10 min, ...).
        if self.edge.stopping or not self.nc.is_connected:
            metrics.EVENTS.labels(account, "unavailable").inc()
            return unavailable()
        api = self.lookups[account]
        name = self.profiles.known(api, message.from_id)
        if name is None:
            name = await self.profiles.name(api, message.from_id)
        inbound = to_inbound(account, key, message, name, utcnow())
        if inbound.attachments:
            # The client's photos, documents and voice messages are fetched and kept first (media.py says why).
            inbound = await self.media.keep(account, inbound)
        try:
            ack = await bus.publish_inbound(self.nc, self.js, inbound, timeout=self.settings.publish_timeout)
        except bus.BusUnavailable as exc:
            metrics.EVENTS.labels(account, "unavailable").inc()
            log.warning(
                "publish failed; answering 503 so VK retries",
                extra={"channel": CHANNEL, "account": account, "msg_id": inbound.id, "error": repr(exc.error or exc.reason)},
            )
            return unavailable()
        duplicate = bool(ack.duplicate)
        self._counted(account, "duplicate" if duplicate else "published").inc()
        if log.isEnabledFor(logging.DEBUG):  # hot path: the published counter counts these
            log.debug(
                "message published",
                extra={
                    "channel": CHANNEL,
                    "account": account,
                    "msg_id": inbound.id,
                    "seq": ack.seq,
                    "duplicate": duplicate,
                    "retry_counter": retry or "0",
                },
            )
        return _ok()

    def _counted(self, account: str, outcome: str) -> Counter:
        """The EVENTS counter of (account, outcome), looked up once per pair (the hot path counts every event)."""
        child = self._events.get((account, outcome))
        if child is None:
            child = self._events[(account, outcome)] = metrics.EVENTS.labels(account, outcome)
        return child

    async def shutdown(self) -> None:
        """Answer 503 to new events (VK retries them elsewhere or later) and let in-flight publishes finish."""
        await self.edge.drain(self.settings.publish_timeout + self.settings.profile_timeout + self.settings.vk_file_timeout + 1)
