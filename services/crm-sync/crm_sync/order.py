"""Per-client order while several events are in hand (decision 030).

crm-sync works on up to ``OPENLINES_CRM_CONCURRENCY`` events at once, over all
replicas (the consumer's ``max_ack_pending``), so that one client's slow CRM
calls do not hold up every other client. What must stay in order is one
client's events: its close never overtakes its opening.

The rule: an event starts only when no earlier event of the same client is
still unacknowledged (an event of the consumer's: one of the kinds crm-sync
handles). The consumer's ack floor says up to which stream
sequence everything is acknowledged; every event between the floor and this
one is looked at (read once by sequence, then remembered) and if one of them
belongs to the same client, this one waits until the floor has passed it.
The earliest unacknowledged event never waits, so the events always move on;
an event waits for the same client's earlier ones wherever they are in hand
(this replica, another one, or none - redelivered after ``ack_wait``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

POLL = 0.05  # seconds between looks at the ack floor while an event waits for its client's earlier one


class _Client(msgspec.Struct):
    client_id: str = ""


_decode = msgspec.json.Decoder(_Client)


class ClientOrder:
    def __init__(self, js: JetStreamContext, stream: str, durable: str, kinds: set[str]) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.kinds = kinds  # the subjects the consumer takes: only these are acknowledged
        self._client_at: dict[int, str] = {}  # stream sequence -> its client ("" none); all above the floor
        self._floor = 0
        self._floor_read = 0.0
        self._reading = asyncio.Lock()

    def saw(self, seq: int, client: str) -> None:
        """An event this replica was given: no need to read it again."""
        if seq > self._floor:
            self._client_at[seq] = client

    async def floor(self) -> int:
        """Every event up to this stream sequence is acknowledged (read at most every ``POLL`` seconds)."""
        async with self._reading:  # one read at a time; the others take what it found
            if time.monotonic() - self._floor_read >= POLL:
                info = await self.js.consumer_info(self.stream, self.durable)
                self._floor_read = time.monotonic()
                floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
                if floor > self._floor:
                    self._floor = floor
                    for seq in [s for s in self._client_at if s <= floor]:
                        del self._client_at[seq]
            return self._floor

    async def acked(self, seq: int) -> bool:
        """Whether the event at stream sequence ``seq`` is known to be acknowledged (at or below the ack floor);
        False when the floor cannot be read now (NATS away)."""
        try:
            return seq <= await self.floor()
        except Exception:  # nats raises several unrelated types
            return False

    async def _client(self, seq: int) -> str:
        got = self._client_at.get(seq)
        if got is not None:
            return got
        try:
            raw: Any = await self.js.get_msg(self.stream, seq)
            # Another kind is never acknowledged by this consumer: waiting for it would wait for ever.
            client = _decode.decode(raw.data or b"{}").client_id if raw.subject in self.kinds else ""
        except NotFoundError:  # removed from the stream: nothing to wait for
            client = ""
        except msgspec.DecodeError:  # not an event crm-sync would handle (it is dead-lettered when delivered)
            client = ""
        if seq > self._floor:
            self._client_at[seq] = client
        return client

    async def earlier(self, client: str, seq: int) -> int | None:
        """The first unacknowledged event of ``client`` before ``seq``, or None."""
        for s in range(await self.floor() + 1, seq):
            if s > self._floor and await self._client(s) == client:
                return s
        return None

    async def wait_turn(self, client: str, seq: int, stop: asyncio.Event) -> bool:
        """Wait until every earlier event of ``client`` is acknowledged; False if ``stop`` came first."""
        while not stop.is_set():
            if await self.earlier(client, seq) is None:
                return True
            try:
                await asyncio.wait_for(stop.wait(), timeout=POLL)
            except TimeoutError:
                pass
        return False
