"""What every gateway's public edge needs, written once: a size-limited body read,
refusals that answer the house error shape and count themselves, and in-flight
tracking so a stopping gateway answers new requests 503 and lets the ones in
hand finish their publish before it exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import BodyPartReader, StreamReader, web

from openlines import admission, files
from openlines.runner import json_error

log = logging.getLogger("openlines.edge")

R = TypeVar("R", bound=web.StreamResponse)


class TooLarge(Exception):
    """The body is larger than the edge takes (answer 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than {limit} bytes")
        self.limit = limit


async def read_limited(content: StreamReader, limit: int) -> bytes:
    """All of ``content`` (a request's or a download's body), read at most ``limit`` bytes far:
    past it :class:`TooLarge` is raised at the first chunk over, never buffering the rest."""
    # readany, not iter_chunked: this runs for every webhook, and iter_chunked costs an
    # iterator, a lambda, a coroutine and a StopAsyncIteration per body (bench/FINDINGS.md).
    # A body that came in one piece (a webhook's usually does) is returned as it came.
    first = await content.readany()
    if len(first) > limit:
        raise TooLarge(limit)
    if not first:
        return b""
    chunk = await content.readany()
    if not chunk:
        return first
    body = bytearray(first)
    while chunk:
        body += chunk
        if len(body) > limit:
            raise TooLarge(limit)
        chunk = await content.readany()
    return bytes(body)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a larger one raises :class:`TooLarge`
    as soon as it is known (its Content-Length, or the first chunk past the limit)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(limit)
    return await read_limited(request.content, limit)


class BadUpload(Exception):
    """The upload is not multipart/form-data with the file field (answer 400 with this text)."""


async def read_file_part(request: web.Request, limit: int, field: str = "file") -> tuple[str, str, bytes]:
    """The first ``field`` part of a multipart/form-data upload: (its cleaned file name, its MIME type, its bytes),
    read at most ``limit`` bytes far (:class:`TooLarge` past it). :class:`BadUpload` when there is no such part or
    the body is not valid multipart."""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != field:
                continue
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                data += chunk
                if len(data) > limit:
                    raise TooLarge(limit)
            mime = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            return files.clean_name(part.filename), mime, bytes(data)
    except (ValueError, AssertionError):
        raise BadUpload("the upload is not valid multipart/form-data") from None
    raise BadUpload(f"no multipart field named {field}")


class Edge:
    """One gateway's HTTP edge: its refusals (counted by ``count(status, code)``) and its work in flight."""

    def __init__(self, channel: str, count: Callable[[int, str], None]) -> None:
        self.channel = channel
        self._count = count
        self.stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()  # set while nothing is in flight
        self._idle.set()
        self._working = _Working(self)

    def refuse(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, *, quiet: bool = False, **where: str
    ) -> web.Response:
        """Answer ``{"error": code, "detail": detail}`` with ``status``, counted; logged at info unless ``quiet``."""
        self._count(status, code)
        if not quiet:
            log.info("request refused", extra={"channel": self.channel, "status": status, "code": code, **where})
        return json_error(status, code, detail, headers)

    async def admitted(
        self, gate: admission.Admission, work: Callable[..., Awaitable[R]], *args: Any, **where: str
    ) -> R | web.Response:
        """``work(*args)``'s answer once ``gate`` admits the request; 503 with Retry-After (counted) when it will not."""
        # try_take, acquire/release and ``work, *args``, not ``async with gate.slot()`` and a lambda: on the
        # path of every webhook an async generator, a closure or a coroutine more is measurable (bench/FINDINGS.md).
        if not gate.try_take():
            try:
                await gate.acquire()
            except admission.Overloaded as exc:
                return self.overloaded(exc, **where)
        try:
            return await work(*args)
        finally:
            gate.release()

    def overloaded(self, exc: admission.Overloaded, detail: str = "server busy; retry later", **where: str) -> web.Response:
        """The answer when admission control turned the request away: 503 with Retry-After, counted."""
        self._count(503, "overloaded")
        log.debug("request refused: at capacity", extra={"channel": self.channel, "reason": exc.reason, **where})
        return admission.overloaded_response(exc, detail)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def working(self) -> _Working:
        """Count the block (``with edge.working():``) as work in flight: :meth:`drain` waits for it."""
        return self._working

    def _begin(self) -> None:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop taking work (``stopping``) and wait up to ``timeout`` seconds for the work in flight; whether it all ended."""
        self.stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            log.warning("stopping with requests still in flight", extra={"channel": self.channel, "in_flight": self._in_flight})
            return False
        return True


class _Working:
    """What :meth:`Edge.working` returns: one object per edge, reused by every request (a plain class,
    not ``@contextmanager``, whose generator per request showed in the webhook profile)."""

    __slots__ = ("_edge",)

    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    def __enter__(self) -> None:
        self._edge._begin()

    def __exit__(self, *_exc: object) -> None:
        self._edge._end()
