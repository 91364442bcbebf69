"""Operator replies to VK: a durable pull consumer on ``ol.out.vk.>`` and ``messages.send``.

The consumer is shared by every replica (work-queue style). A message is
acked only when every part of it reached VK, or when VK refused it for good
(then a ``delivery_failed`` event says why). Each part carries a
``random_id`` derived from the outbound id, so a redelivery never doubles a
message: VK drops a send whose ``random_id`` it has already seen.

Messages of one chat are sent in stream order within a replica (one lock per
chat); different chats and communities go in parallel.

Operators' files go as VK attachments (``media.py`` uploads them), on the
last part of the text. A file VK takes in no form is left out, the rest is
sent, and a ``delivery_failed`` event names the file and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from gateway_vk import metrics
from gateway_vk.core.outbound import random_id, split_text
from gateway_vk.media import Media, Refused
from gateway_vk.media import Unavailable as MediaUnavailable
from gateway_vk.normalise import CHANNEL
from gateway_vk.reads import Reads, SentReply
from gateway_vk.settings import Settings
from gateway_vk.vkapi import CommunityApi, VkError, VkUnreachable
from openlines import marks, subjects
from openlines.consume import Durable, outbound_consumer
from openlines.envelopes import Outbound, decoder
from openlines.pace import backoff

log = logging.getLogger("gateway_vk.deliver")

_outbound = decoder(Outbound)
FETCH_BATCH = 32
MAX_IN_FLIGHT = 64


class Permanent(Exception):
    """VK will not take this message whatever we do; the reason goes into ``delivery_failed``."""


class Transient(Exception):
    """VK did not take it now; it may later."""


MAX_ATTACHMENTS = 10  # messages.send takes at most 10 attachments


class Deliverer:
    def __init__(
        self, settings: Settings, js: JetStreamContext, apis: dict[str, CommunityApi], media: Media, reads: Reads | None = None
    ) -> None:
        self.settings = settings
        self.js = js
        self.apis = apis
        self.media = media
        self.reads = reads  # remembers what VK accepted, to mark it read when the client reads it
        self.stopping = asyncio.Event()
        self.consumer = Durable(js, subjects.STREAM_OUT, self.consumer_config(), batch=FETCH_BATCH)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._chat_locks: dict[str, asyncio.Lock] = {}
        self._chat_users: defaultdict[str, int] = defaultdict(int)

    # -- consumer -------------------------------------------------------------

    def consumer_config(self) -> js_api.ConsumerConfig:
        return outbound_consumer(CHANNEL, self.settings.consumer, ack_wait=self.settings.ack_wait, max_ack_pending=1000)

    async def run(self) -> None:
        await self.consumer.run(self._spawn, self.stopping)

    async def _spawn(self, msg: Msg) -> None:
        """Deliver ``msg`` in a task of its own once one of the MAX_IN_FLIGHT slots is free."""
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg), name="vk-deliver")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", extra={"error": repr(task.exception())})

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def ready(self) -> str | None:
        return None if self.consumer.running else "outbound consumer not running"

    async def stop(self) -> None:
        """Stop fetching; let deliveries in hand finish (a backoff wait hands its message back at once)."""
        self.stopping.set()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()  # unacked: JetStream redelivers it after ack_wait; random_id stops doubles
        await self.consumer.close()

    # -- one message ------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        lock = self._chat_locks.setdefault(msg.subject, asyncio.Lock())
        self._chat_users[msg.subject] += 1
        try:
            async with lock:
                await self._deliver(msg)
        finally:
            self._chat_users[msg.subject] -= 1
            if self._chat_users[msg.subject] == 0:
                del self._chat_users[msg.subject]
                self._chat_locks.pop(msg.subject, None)

    async def _deliver(self, msg: Msg) -> None:
        try:
            _channel, account, _chat = subjects.parse_outbound(msg.subject)
            out = _outbound.decode(msg.data)
        except (subjects.BadToken, msgspec.DecodeError) as exc:
            # Nothing to deliver and nobody to tell: drop it, loudly.
            log.error("undecodable outbound message dropped", extra={"subject": msg.subject, "error": str(exc)})
            await msg.ack()
            return
        delivered = msg.metadata.num_delivered or 1
        try:
            await self._send(account, out, msg)
        except Permanent as exc:
            await self._fail(out, account, str(exc), msg)
            return
        except Transient as exc:
            if delivered >= self.settings.max_deliveries:
                await self._fail(out, account, f"gave up after {delivered} deliveries: {exc}", msg)
                return
            delay = 0.0 if self.stopping.is_set() else self.settings.redeliver_delay
            log.warning(
                "delivery postponed",
                extra={"channel": CHANNEL, "account": account, "msg_id": out.id, "error": str(exc), "delay": delay},
            )
            await msg.nak(delay=delay)
            return
        await msg.ack()
        log.info("reply delivered", extra={"channel": CHANNEL, "account": account, "msg_id": out.id, "session": out.session_id})

    async def _send(self, account: str, out: Outbound, msg: Msg) -> None:
        api = self.apis.get(account)
        if api is None:
            raise Permanent(f"no VK community is configured for account {account!r}")
        try:
            peer_id = int(out.chat_id)
        except ValueError:
            raise Permanent(f"chat id {out.chat_id!r} is not a VK peer id") from None
        attachments, left_out = await self._upload_all(api, peer_id, out, msg)
        if not out.text.strip() and not attachments:
            if left_out:
                raise Permanent("; ".join(left_out))
            log.warning("empty outbound message skipped", extra={"channel": CHANNEL, "account": account, "msg_id": out.id})
            return
        parts = split_text(out.text, self.settings.vk_max_text) if out.text.strip() else [""]
        for index, part in enumerate(parts):
            values = {"peer_id": str(peer_id), "random_id": str(random_id(out.id, index)), "message": part}
            if index == len(parts) - 1 and attachments:
                values["attachment"] = ",".join(attachments)
            try:
                vk_id = await self._call_with_retries(api, values, msg)
            except Permanent as exc:
                where = f" (part {index + 1} of {len(parts)})" if len(parts) > 1 else ""
                raise Permanent(f"{exc}{where}") from None
            metrics.SENT.labels(account).inc()
            if self.reads is not None and isinstance(vk_id, int) and not isinstance(vk_id, bool) and vk_id > 0:
                await self.reads.remember(account, peer_id, SentReply(vk_id, out.id, out.session_id, index))
        if left_out:
            # Sent without them: the operator is told which files did not go, and why.
            await self._report(out, account, "sent without " + "; ".join(left_out), msg)

    async def _upload_all(self, api: CommunityApi, peer_id: int, out: Outbound, msg: Msg) -> tuple[list[str], list[str]]:
        """VK attachment strings for the operator's files, and what was left out (with the reason)."""
        attachments: list[str] = []
        left_out: list[str] = []
        for att in out.attachments:
            name = att.name or att.kind
            if len(attachments) >= MAX_ATTACHMENTS:
                left_out.append(f"{name!r}: VK takes at most {MAX_ATTACHMENTS} files per message")
                continue
            try:
                upload = await self.media.read(att)
                attachments.append(await self.media.upload(api, peer_id, upload))
            except Refused as exc:
                left_out.append(str(exc))
            except MediaUnavailable as exc:
                raise Transient(f"file {name!r}: {exc}") from None
            with contextlib.suppress(Exception):
                await msg.in_progress()  # uploads take a while: keep ack_wait from running out
        return attachments, left_out

    async def _report(self, out: Outbound, account: str, reason: str, msg: Msg) -> None:
        metrics.DELIVERY_FAILED.labels(account, "file").inc()
        log.warning("files left out", extra={"channel": CHANNEL, "account": account, "msg_id": out.id, "reason": reason})
        with contextlib.suppress(Exception):  # the message itself is delivered; a lost report must not resend it
            await marks.outbound_failed(self.js, out, channel=CHANNEL, account=account, reason=reason, delivered=True)

    async def _call_with_retries(self, api: CommunityApi, values: dict[str, str], msg: Msg) -> object:
        """messages.send with retries: what VK answered (the new message's id)."""
        last: Exception | None = None
        for attempt in range(1, self.settings.retry_attempts + 1):
            try:
                return await api.call("messages.send", values)
            except VkError as exc:
                if not exc.retryable:
                    raise Permanent(str(exc)) from None
                last = exc
                code = str(exc.code)
            except VkUnreachable as exc:
                last = exc
                code = "unreachable"
            metrics.API_RETRIES.labels(api.community.account, code).inc()
            if attempt == self.settings.retry_attempts or self.stopping.is_set():
                break
            with contextlib.suppress(Exception):
                await msg.in_progress()  # the backoff must not outlast ack_wait
            await self._pause(backoff(attempt, self.settings.retry_base, self.settings.retry_max))
            if self.stopping.is_set():
                break
        raise Transient(str(last))

    async def _fail(self, out: Outbound, account: str, reason: str, msg: Msg) -> None:
        metrics.DELIVERY_FAILED.labels(account, reason.split(":")[0][:40]).inc()
        log.warning(
            "delivery failed",
            extra={"channel": CHANNEL, "account": account, "msg_id": out.id, "session": out.session_id, "reason": reason},
        )
        try:
            await marks.outbound_failed(self.js, out, channel=CHANNEL, account=account, reason=reason)
        except Exception as exc:  # NATS trouble: keep the message, tell later
            log.warning("delivery_failed event not published; will retry", extra={"msg_id": out.id, "error": repr(exc)})
            await msg.nak(delay=self.settings.redeliver_delay)
            return
        await msg.ack()
