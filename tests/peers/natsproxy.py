"""A TCP relay between NATS clients and a real nats-server that reads the
clients' protocol (``PUB``/``HPUB``) and injects the network faults real
deployments have, at the exact publish a test names:

- ``stall_replies_after(subject, seconds)``: the publish reaches the server
  (its effect happens) but everything the server sends back is held for
  ``seconds`` - the client's request times out although it worked;
- ``drop(subject)``: the publish never reaches the server (a lost packet
  the client learns of only by its timeout);
- ``cut_after(subject, seconds)`` / ``cut(seconds)``: both directions held
  for ``seconds`` - a partition that heals (nothing is lost, everything late);
- ``drop_connections()``: every connection through the relay reset at once,
  both ends (a load balancer or NAT table dropping them); clients reconnect.

Subjects use NATS wildcards (``*`` one token, ``>`` the rest), one pattern
or a tuple of them (any matches; the nth counts over all); ``payloads``
narrows a rule to publishes whose payload is one of them (an acknowledgement
is empty or ``+ACK``, an in-progress heartbeat on the same subject ``+WPI``).
``published`` lists (subject, first bytes of the payload) of every client publish, ``commands`` every
other protocol line the clients sent (``SUB <subject> <sid>``, ``PING``...), each in the order written.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def matches_any(patterns: str | tuple[str, ...], subject: str) -> bool:
    return any(subject_matches(p, subject) for p in ((patterns,) if isinstance(patterns, str) else patterns))


@dataclass
class Rule:
    pattern: str | tuple[str, ...]
    action: str  # stall | drop | cut
    seconds: float = 0.0
    nth: int = 1  # act on the nth matching publish
    payloads: tuple[bytes, ...] | None = None  # None: any payload
    times: int = 1  # how many matching publishes (from the nth on) it acts on
    seen: int = 0
    fired: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def hit(self, subject: str, payload: bytes) -> bool:
        if self.fired >= self.times or not matches_any(self.pattern, subject):
            return False
        if self.payloads is not None and payload not in self.payloads:
            return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.fired += 1
        return True


class NatsProxy:
    """``inspect=False``: the relay does not read the protocol (no rules, nothing in ``published``); what
    the clients send is passed on as it comes - the cheap relay for load that only drops or cuts."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1", *, inspect: bool = True) -> None:
        self.upstream = (host, upstream_port)
        self.inspect = inspect
        self.host = host
        self.port = 0
        self.rules: list[Rule] = []
        self.published: list[tuple[str, bytes]] = []
        self.commands: list[str] = []
        self._to_client = asyncio.Event()  # cleared = what the server sends is held
        self._to_server = asyncio.Event()  # cleared = what the clients send is held
        self._to_client.set()
        self._to_server.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._refusing_until = 0.0  # loop time until which new connections are closed at once

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._to_client.set()
        self._to_server.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- faults ----------------------------------------------------------------

    def stall_replies_after(
        self,
        pattern: str | tuple[str, ...],
        seconds: float,
        *,
        nth: int = 1,
        payloads: tuple[bytes, ...] | None = None,
        times: int = 1,
    ) -> Rule:
        return self._add(Rule(pattern, "stall", seconds, nth, payloads, times))

    def drop(
        self, pattern: str | tuple[str, ...], *, nth: int = 1, payloads: tuple[bytes, ...] | None = None, times: int = 1
    ) -> Rule:
        return self._add(Rule(pattern, "drop", 0.0, nth, payloads, times))

    def cut_after(
        self, pattern: str | tuple[str, ...], seconds: float, *, nth: int = 1, payloads: tuple[bytes, ...] | None = None
    ) -> Rule:
        return self._add(Rule(pattern, "cut", seconds, nth, payloads))

    def cut(self, seconds: float) -> asyncio.Event:
        """Hold every byte both ways for ``seconds`` (a partition that heals); the event is set when it has healed."""
        healed = asyncio.Event()
        self._hold(self._to_client, seconds)
        self._hold(self._to_server, seconds, healed)
        return healed

    def drop_connections(self) -> int:
        """Reset every relayed connection (both ends, no goodbye); returns how many client connections it cut."""
        writers = list(self._writers)
        for w in writers:
            w.transport.abort()
        return len(writers) // 2

    def refuse(self, seconds: float) -> None:
        """Close every new connection at once for ``seconds`` (the server unreachable for a moment)."""
        self._refusing_until = asyncio.get_running_loop().time() + seconds

    def _add(self, rule: Rule) -> Rule:
        assert self.inspect, "a rule needs a relay that reads the protocol (inspect=True)"
        self.rules.append(rule)
        return rule

    def _hold(self, gate: asyncio.Event, seconds: float, done: asyncio.Event | None = None) -> None:
        gate.clear()

        def reopen() -> None:
            gate.set()
            if done is not None:
                done.set()

        asyncio.get_running_loop().call_later(seconds, reopen)

    # -- relay -----------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if asyncio.get_running_loop().time() < self._refusing_until:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        up = asyncio.create_task(self._client_to_server(client_r, server_w))
        down = asyncio.create_task(self._server_to_client(server_r, client_w))
        self._tasks |= {up, down}
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            for w in (client_w, server_w):
                w.close()
                self._writers.discard(w)
            self._tasks -= {up, down}

    async def _server_to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await self._to_client.wait()
            writer.write(data)
            await writer.drain()

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.inspect:
            while data := await reader.read(65536):
                await self._to_server.wait()
                writer.write(data)
                await writer.drain()
            return
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            while True:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    break
                line = buf[:nl]
                op = line.split(b" ", 1)[0].upper()
                rule: Rule | None = None
                if op in (b"PUB", b"HPUB"):
                    parts = line.split()
                    size = int(parts[-1])
                    end = nl + 2 + size + 2
                    if len(buf) < end:
                        break
                    subject = parts[1].decode()
                    headers = int(parts[-2]) if op == b"HPUB" else 0
                    payload = buf[nl + 2 + headers : nl + 2 + size]
                    self.published.append((subject, payload[:8]))
                    rule = next((r for r in self.rules if r.hit(subject, payload)), None)
                else:
                    end = nl + 2
                    self.commands.append(line[:200].decode(errors="replace"))
                chunk, buf = buf[:end], buf[end:]
                await self._to_server.wait()
                if rule is not None and rule.action == "drop":
                    rule.done.set()
                    continue
                if rule is not None and rule.action in ("stall", "cut"):
                    # Held before the publish leaves: its answer cannot slip through first.
                    self._hold(self._to_client, rule.seconds, rule.done)
                    if rule.action == "cut":
                        self._hold(self._to_server, rule.seconds)
                writer.write(chunk)
                await writer.drain()
