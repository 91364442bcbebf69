"""What this desk replica tells about the operators who have a page open on it.

Two things, so that presence follows reality whatever happens to the replica:

- **Reports.** When an operator's first page opens here, or their last page
  here closes, the router is told (``ol.cmd.presence``). Reports go one at a
  time, the latest wish per operator, and are retried until the router has
  heard (it may be restarting): a page that closes and opens again quickly
  cannot be reported in the wrong order, and a report lost on the way is not
  lost for good.
- **Heartbeat.** The key ``<desk id>`` in ``ol-desk-presence`` is renewed
  every ``OPENLINES_DESK_HEARTBEAT_SECONDS``; the bucket's entries expire after
  ``HEARTBEAT_MISSES`` renewals missed. A replica killed -9 reports nothing;
  its key runs out and the router counts its pages closed (router/presence.py).
  A replica that finds its own key gone (cut off from NATS longer than that)
  reports every page it still holds again, since the router has counted them
  closed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from desk.guard import open_kv
from openlines import subjects
from openlines.commands import CommandFailed, Presence, call
from openlines.pace import backoff
from openlines.state import DeskHeartbeat

log = logging.getLogger("desk.presence")

HEARTBEAT_MISSES = 3  # renewals a replica may miss before the router counts its pages closed (the bucket's TTL)
RETRY_SECONDS = 1.0  # between attempts to report to a router that does not answer


class Reporter:
    """Tells the router, one report at a time and until it has heard, where operators' pages are."""

    def __init__(self, nc: NATS, desk_id: str) -> None:
        self.nc = nc
        self.desk_id = desk_id
        self._want: dict[str, bool] = {}  # operator -> connected, the latest wish not yet reported
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()  # nothing left to report
        self.idle.set()

    def report(self, operator_id: str, *, connected: bool) -> None:
        self._want.pop(operator_id, None)  # to the end of the line: reports go in the order wished
        self._want[operator_id] = connected
        self.idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._want:
                operator_id = next(iter(self._want))
                connected = self._want.pop(operator_id)
                if not await self._send(operator_id, connected) and operator_id not in self._want:
                    self._want[operator_id] = connected  # not heard: again, unless a newer wish replaced it
                    await asyncio.sleep(RETRY_SECONDS)
            self.idle.set()

    async def _send(self, operator_id: str, connected: bool) -> bool:
        """True when the router has the report (or refused it for good: the account is gone)."""
        try:
            await call(self.nc, "presence", Presence(operator_id=operator_id, connected=connected, desk=self.desk_id))
            return True
        except CommandFailed as exc:
            if exc.result.error == "unavailable":
                return False
            log.warning("presence report refused", extra={"operator": operator_id, "error": str(exc)})
            return True
        except Exception as exc:  # no router answering (restarting), NATS away: try again
            log.warning("could not report presence yet; retrying", extra={"operator": operator_id, "error": repr(exc)})
            return False


class Heartbeat:
    """This replica's key in ``ol-desk-presence``, renewed for as long as it runs."""

    def __init__(self, js: JetStreamContext, desk_id: str, every: float, replicas: int, held: Callable[[], list[str]]) -> None:
        self.js = js
        self.desk_id = desk_id
        self.every = every
        self.replicas = replicas
        self.held = held  # the operators with a page open here now
        self.kv: KeyValue | None = None
        self._revision: int | None = None

    async def open(self) -> None:
        """Open (or create) the bucket and write the first heartbeat: before any page can connect.

        While JetStream cannot answer yet - a cluster still electing the bucket's leader ("no responders"),
        a node restarting, a request lost - wait and try again: a replica that gave up here would stay
        down until something restarted it, and one started with the cluster would never serve.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._open()
                return
            except (NatsError, TimeoutError) as exc:
                log.warning("desk heartbeat not written yet; retrying", extra={"error": repr(exc), "attempt": attempt})
                await asyncio.sleep(backoff(attempt, 0.5, 5.0))

    async def _open(self) -> None:
        self.kv = await open_kv(self.js, subjects.KV_DESK_PRESENCE, self.every * HEARTBEAT_MISSES, self.replicas)
        ttl = (await self.kv.status()).ttl
        if ttl and ttl < self.every * HEARTBEAT_MISSES:
            # The bucket was made by a replica with shorter renewals: keep to its TTL, or our key would run out.
            log.warning(
                "desk presence bucket expires sooner than this replica's heartbeat allows; renewing more often",
                extra={"bucket_ttl": ttl, "heartbeat_seconds": self.every},
            )
            self.every = ttl / HEARTBEAT_MISSES
        await self.beat()

    async def beat(self) -> bool:
        """Renew the key; True when it had run out (or was never written), so the router counted our pages closed."""
        assert self.kv is not None
        value = msgspec.json.encode(DeskHeartbeat(id=self.desk_id, operators=self.held(), at=time.time(), every=self.every))
        if self._revision is not None:
            try:
                self._revision = await self.kv.update(self.desk_id, value, last=self._revision)
                return False
            except BadRequestError as exc:  # KeyWrongLastSequenceError is one: the key ran out (or was removed)
                if "wrong last sequence" not in str(exc).lower():
                    raise
        self._revision = await self.kv.put(self.desk_id, value)
        return True

    async def run(self, lapsed: Callable[[], None]) -> None:
        """Renew forever; ``lapsed`` is called after a renewal that found the key gone."""
        while True:
            await asyncio.sleep(self.every)
            try:
                if await self.beat():
                    log.warning("desk heartbeat had run out: reporting every open page again")
                    lapsed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the next renewal tries again
                log.warning("could not renew the desk heartbeat", extra={"error": repr(exc)})

    async def remove(self) -> None:
        """A graceful stop: the router counts our pages closed at its next look, whatever reports got through."""
        if self.kv is not None:
            with contextlib.suppress(NotFoundError, NatsError, TimeoutError):
                await self.kv.delete(self.desk_id)
