"""Connecting to NATS, creating the streams and buckets, and small JetStream helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import kv, pull, subjects
from openlines.envelopes import MSG_ID_HEADER, Inbound, SessionEvent, encode, utcnow
from openlines.natsauth import NatsAuth, NatsAuthError
from openlines.pace import backoff

log = logging.getLogger("openlines.bus")

T = TypeVar("T")

DAY = 24 * 3600.0

# Failures that say "the bus is not there right now" - a time-out, no responders, a stream leader being elected,
# the connection closed - not "this is wrong": what met one is tried again.
UNAVAILABLE: tuple[type[Exception], ...] = (
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionClosedError,
    TimeoutError,
)

# Per stream: how long messages live and the dedup window. The dedup window
# covers messenger retries and widget reconnects; after it, consumers dedup
# on the envelope id themselves.
STREAM_SETTINGS: dict[str, dict[str, Any]] = {
    subjects.STREAM_IN: {"max_age": 7 * DAY, "duplicate_window": 15 * 60.0},
    subjects.STREAM_OUT: {"max_age": 30 * DAY, "duplicate_window": 15 * 60.0},
    subjects.STREAM_EVT: {"max_age": 30 * DAY, "duplicate_window": 15 * 60.0},
    subjects.STREAM_HIST: {"max_age": 0.0, "duplicate_window": 15 * 60.0},
    # Delivery marks are read with their transcript, so they are kept as long.
    subjects.STREAM_MARK: {"max_age": 0.0, "duplicate_window": 15 * 60.0},
    # Timers wait in the server as scheduled messages (decision 039) and arrive
    # in a work queue when due: the router's consumer fires each and acks it
    # (which removes it).
    subjects.STREAM_TIMER: {
        "max_age": 0.0,
        "duplicate_window": 15 * 60.0,
        "retention": js_api.RetentionPolicy.WORK_QUEUE,
        "allow_msg_schedules": True,
    },
}


def stream_config(name: str, replicas: int = 1) -> js_api.StreamConfig:
    s = STREAM_SETTINGS[name]
    return js_api.StreamConfig(
        name=name,
        subjects=subjects.STREAM_SUBJECTS[name],
        retention=s.get("retention", js_api.RetentionPolicy.LIMITS),
        storage=js_api.StorageType.FILE,
        num_replicas=replicas,
        max_age=s["max_age"],
        duplicate_window=s["duplicate_window"],
        allow_direct=True,
        allow_msg_schedules=s.get("allow_msg_schedules"),
    )


async def flush_all(nc: NATS) -> None:
    """Return once the server has read everything this connection sent before the call: a subscription made
    just now is in place, so a message another connection publishes from now on reaches it.

    ``nc.flush()`` alone does not say so. nats-py writes its PING straight to the socket, ahead of what still
    waits in the client's buffer for its flusher task - a SUB made a moment ago, typically - so the PONG may
    come back before the server has read the SUB, and on a busy server a message published meanwhile on
    another connection finds no subscriber (seen: an operator's "typing" lost by a gateway that had just
    said it was up, once in about thirty runs). The flusher runs while the first PING is answered, so the
    second PING is written after everything before the call, and its PONG comes only once all of it was read.
    """
    await nc.flush()
    await nc.flush()


# What a JetStream request waits unless the context is given another (nats-py's default).
JS_TIMEOUT = 5.0


class JetStream(JetStreamContext):
    """nats-py's JetStream context that names its connection (``client``): pull requests are core
    publishes of their own (:class:`openlines.pull.Pull`), and nats-py keeps its connection private.

    Its publishes and its key-value buckets' reads and writes (:mod:`openlines.kv`) are nats-py's with the
    same subjects, headers, answers and errors, made through one inbox (:class:`AckInbox`, decision 042).
    """

    def __init__(self, conn: NATS, **opts: Any) -> None:
        super().__init__(conn, **opts)
        self.client = conn
        self.timeout = float(opts.get("timeout") or JS_TIMEOUT)
        # The lean path speaks to the default API prefix; a context given another keeps nats-py's own.
        self.lean = not opts.get("prefix") and not opts.get("domain")
        self._answers: AckInbox | None = None

    @property
    def answers(self) -> AckInbox:
        if self._answers is None:
            self._answers = AckInbox(self.client)
        return self._answers

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> js_api.PubAck:
        if msg_ttl is not None or not self.lean:
            return await super().publish(subject, payload, timeout=timeout, stream=stream, headers=headers, msg_ttl=msg_ttl)
        return await self.answers.acked(subject, payload, headers=headers, stream=stream, timeout=timeout or self.timeout)

    async def key_value(self, bucket: str) -> KeyValue:
        found = await super().key_value(bucket)  # the bucket checked as nats-py checks it
        return kv.KeyValue(bucket, self) if self.lean else found

    async def create_key_value(self, config: js_api.KeyValueConfig | None = None, **params: Any) -> KeyValue:
        made = await super().create_key_value(config, **params)
        bucket = params["bucket"] if config is None or "bucket" in params else config.bucket
        return kv.KeyValue(bucket, self) if self.lean else made


def answers_of(js: JetStreamContext, nc: NATS) -> AckInbox | None:
    """The inbox of ``js`` if it is a lean :class:`JetStream` of ``nc`` (decision 042), else None."""
    return js.answers if isinstance(js, JetStream) and js.lean and js.client is nc else None


class Client(NATS):
    """The nats-py client of :func:`connect`: its ``jetstream()`` is a :class:`JetStream`."""

    def jetstream(self, **opts: Any) -> JetStream:
        return JetStream(self, **opts)


def client_of(js: JetStreamContext) -> NATS:
    """The connection of a JetStream context made by ``jetstream()`` of a :func:`connect` client."""
    if isinstance(js, JetStream):
        return js.client
    raise TypeError("a JetStream context of an openlines.bus.connect() client is needed (its nc.jetstream())")


async def connect(url: str, name: str, *, first_attempts: int = 0, auth: NatsAuth | None = None) -> NATS:
    """Connect, reconnecting forever once connected.

    ``first_attempts`` = 0 retries the first connection forever (services wait
    for NATS to come up); a positive number gives up after that many tries.
    ``auth`` is who we are (a service's settings); without it the
    ``OPENLINES_NATS_*`` variables of the environment say (the CLI, tools).
    Credentials the server refuses raise :class:`NatsAuthError` at once, naming
    the variable to fix: retrying cannot help.
    """
    who = auth if auth is not None else NatsAuth.from_env()
    options = who.connect_options()

    connected = False

    async def on_error(exc: Exception) -> None:
        if not connected:
            # nats-py retries a first connection inside connect() and reports each failure here; credentials
            # or certificates that are refused will not get better by retrying: end connect() with the reason.
            if "authorization violation" in str(exc).lower():
                raise who.refused(url, str(exc))
            if isinstance(exc, ssl.SSLError):
                raise NatsAuthError(f"TLS to NATS at {url} failed ({exc}); check OPENLINES_NATS_TLS_CA and the URL's host name")
        log.warning(f"nats error ({name})", extra={"connection": name, "error": repr(exc)})

    mine: list[NATS] = []

    async def on_disconnect() -> None:
        if mine and mine[0].is_closed:  # our own close (a CLI command ending, a service stopping): not news
            log.debug(f"nats connection closed ({name})", extra={"connection": name})
            return
        dropped = drop_answers(mine[0]) if mine else 0
        forgot = pull.forget_requests(mine[0]) if mine else 0
        log.warning(
            f"nats disconnected ({name})",
            extra={"connection": name, "requests_failed_at_once": dropped, "pull_requests_asked_again": forgot},
        )

    async def on_reconnect() -> None:
        log.info(f"nats reconnected ({name})", extra={"connection": name})

    attempt = 0
    while True:
        attempt += 1
        try:
            nc = Client()
            await nc.connect(
                [u.strip() for u in url.split(",")] if "," in url else url,  # "nats://a:4222,nats://b:4222"
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                ping_interval=10,
                max_outstanding_pings=3,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                **options,
            )
            mine.append(nc)
            connected = True
            return nc
        except NatsAuthError:
            raise
        except Exception as exc:  # nats raises several unrelated types here
            if "authorization violation" in str(exc).lower():
                raise who.refused(url, str(exc)) from None
            if isinstance(exc, ssl.SSLError):
                raise NatsAuthError(
                    f"TLS to NATS at {url} failed ({exc}); check OPENLINES_NATS_TLS_CA and the URL's host name"
                ) from None
            if first_attempts and attempt >= first_attempts:
                raise
            log.warning("nats not reachable, retrying", extra={"url": url, "attempt": attempt, "error": str(exc)})
            await asyncio.sleep(backoff(attempt, 0.2, 5.0))


_ACK_INBOXES: weakref.WeakSet[AckInbox] = weakref.WeakSet()


def drop_answers(nc: NATS) -> int:
    """Fail now, as timed out, every request of ``nc`` still waiting for its answer; how many.

    Called when the connection is lost (decision 035). A request written to a server that then died is never
    answered, and nats-py would have its caller wait out the request's whole timeout (5 s for the JetStream
    API) - after the client had reconnected to another node in milliseconds. Every caller already treats a
    timed-out request as "not known to be done, try again", and every write is safe to redo (ids, compare-and-
    set), so the same answer is given at once. One that was still in nats-py's buffer is sent after the
    reconnect as well; its late answer is ignored, and the redo is deduplicated like any other.

    nats-py keeps the futures of its requests in ``Client._resp_map``, which has no public accessor: if a
    release renames it, nothing is failed early here and requests time out as before.
    """
    return _fail(_waiting_answers(nc))


def _waiting_answers(nc: NATS) -> list[asyncio.Future[Any]]:
    """The futures of every request of ``nc`` still waiting for its answer (nats-py's and the AckInboxes')."""
    waiting = getattr(nc, "_resp_map", None)
    futures: list[asyncio.Future[Any]] = [f for f in waiting.values() if not f.done()] if isinstance(waiting, dict) else []
    for inbox in list(_ACK_INBOXES):
        if inbox.nc is nc:
            futures += (f for f in inbox._waiting.values() if not f.done())
    return futures


def _fail(futures: list[asyncio.Future[Any]]) -> int:
    """End each future not done yet as timed out; how many."""
    dropped = 0
    for fut in futures:
        if not fut.done():
            fut.set_exception(NatsTimeoutError())
            dropped += 1
    return dropped


# A request still unanswered this long after a stream's new leader was elected, that was already waiting at
# the election, is taken as lost with the old leader (decision 041). Answers take milliseconds; this is the
# margin for a loaded machine.
ELECTION_GRACE = 0.5
LEADER_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.>"
ELECTION_FAILED = Counter(
    "openlines_nats_requests_failed_after_election_total",
    "Requests ended as lost because a stream's new leader was elected after they were sent and did not answer them",
)


async def follow_elections(nc: NATS, name: str) -> Any:
    """Fail the requests a stream's leader election has left unanswered, soon after the new leader is there
    (decision 041); returns the subscription.

    A request written through a live node to a stream whose leader then died, or to a stream between leaders,
    is never answered: its caller waited out the whole request timeout (2 s, decision 035) even when the new
    leader was elected just after it was sent, and retried only then. On each "stream leader elected"
    advisory, the requests of ``nc`` waiting at that moment are looked at again ``ELECTION_GRACE`` later;
    those still unanswered end as timed out, as :func:`drop_answers` ends them when the connection is lost,
    and are tried again at the new leader. A request to another stream, answered meanwhile, is untouched; one
    answered later than the grace is redone, which every write allows (ids, compare-and-set)."""
    loop = asyncio.get_running_loop()

    async def elected(msg: Any) -> None:
        stream = msg.subject.rsplit(".", 1)[-1]
        waiting = _waiting_answers(nc)
        if not waiting:
            log.info("stream leader elected", extra={"connection": name, "stream": stream, "requests_waiting": 0})
            return

        def late() -> None:
            failed = _fail(waiting)
            ELECTION_FAILED.inc(failed)
            log.info(
                "stream leader elected",
                extra={
                    "connection": name,
                    "stream": stream,
                    "requests_waiting": len(waiting),
                    "requests_failed_as_lost": failed,
                },
            )

        loop.call_later(ELECTION_GRACE, late)

    return await nc.subscribe(LEADER_ELECTED, cb=elected)


class BusUnavailable(Exception):
    """A message could not be stored: the sender must retry (a webhook answers 5xx, a widget says "not sent")."""

    def __init__(self, reason: str, error: Exception | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # "disconnected" or the type of the failure
        self.error = error


async def publish_event(js: JetStreamContext, evt: SessionEvent, *, timeout: float | None = None) -> js_api.PubAck:
    """Store one event in OL_EVT on ``ol.evt.<kind>``, deduplicated by its id (a redelivered cause publishes it once).

    Every event is published here, so its subject, stream and dedup header are
    spelled once. ``timeout`` bounds the whole publish (nats-py's own timeout
    applies without it); within it, a publish another one is storing under the
    same id is tried again (:func:`publish_stored`).
    """
    subject, payload, headers = event_message(evt)
    publish = publish_stored(js, subject, payload, headers=headers, stream=subjects.STREAM_EVT, timeout=timeout)
    if timeout is None:
        return await publish
    async with asyncio.timeout(timeout):
        return await publish


def event_message(evt: SessionEvent) -> tuple[str, bytes, dict[str, str]]:
    """The subject, body and headers (its id as Nats-Msg-Id) an event is stored with, on stream OL_EVT."""
    return subjects.event(evt.kind), encode(evt), {MSG_ID_HEADER: evt.id}


async def dead_letter(
    js: JetStreamContext, channel: str, account: str, key: str, reason: str, body: bytes = b"", *, timeout: float
) -> None:
    """Keep an input a gateway could not read or will not open as a chat as a ``dead_letter`` event:
    the reason, and the start of the body when there is one (a signed webhook body).

    ``key`` tells one input from another (the platform's id, or a digest of the body), so a resend is kept once.
    """
    told = f"{reason}; body: {body[:600].decode('utf-8', 'replace')}" if body else reason
    evt = SessionEvent(
        id=f"dead:{channel}:{account}:{key}",
        kind="dead_letter",
        at=utcnow(),
        channel=channel,
        account=account,
        reason=told[:1000],
    )
    await publish_event(js, evt, timeout=timeout)


# A stream whose leader just died answers "no responders" at once until the
# cluster has elected a new one (4-9 s in nats-server's raft). Within its
# deadline a client message is then tried again every quarter second with the
# same message id, so it is stored right after the new leader instead of the
# gateway answering 503 and the sender coming back at its own pace; JetStream's
# duplicate window keeps one copy. A try that gets no answer at all (a server
# too busy to answer in time) is repeated too, each time waiting twice as long,
# so a slow server is not sent the same message over and over.
PUBLISH_ATTEMPT = 1.0  # the first try's wait for an answer
REFUSED_PACE = 0.25  # between tries refused at once
_REFUSED = (NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


# A clustered stream answers a publish whose Nats-Msg-Id another publish is being stored under at that
# moment (a retry overlapping its first try, two replicas doing the same step) with this error instead of
# "duplicate". A moment later the same publish is a duplicate: it is tried again, never treated as a failure.
STORING_ALREADY = 10158  # "duplicate message id is in process"


def storing_already(exc: BaseException) -> bool:
    """JetStream is storing a message under the same Nats-Msg-Id right now: try again in a moment."""
    return isinstance(exc, APIError) and exc.err_code == STORING_ALREADY


async def _storing_pause(exc: BaseException, deadline: float) -> bool:
    """True, after a pause of ``REFUSED_PACE``, when ``exc`` is 10158 and ``deadline`` (loop time) leaves room for another try."""
    if not storing_already(exc):
        return False
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0.05:
        return False
    await asyncio.sleep(min(left, REFUSED_PACE))
    return True


# How long a publish keeps trying while JetStream answers 10158, unless the work in hand says (``deadline_in``):
# nats-py's own publish timeout, the longest the caller would have waited for one answer anyway.
STORING_PATIENCE = 5.0

# The loop time by which the work in hand must be answered (an operator command: its caller stops waiting then).
_DEADLINE: ContextVar[float | None] = ContextVar("openlines_bus_deadline", default=None)


@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """Publishes made in the block (this task's, and tasks it starts) give up trying again ``seconds`` from now.

    The router runs each operator command in one: a command is answered within the time its caller waits
    (``openlines.commands.COMMAND_TIMEOUT``), not after it, when nobody reads the answer. An enclosing
    block's earlier deadline stays in force.
    """
    at = asyncio.get_running_loop().time() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(at if outer is None else min(outer, at))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _deadline(timeout: float | None) -> float:
    now = asyncio.get_running_loop().time()
    at = now + (STORING_PATIENCE if timeout is None else timeout)
    given = _DEADLINE.get()
    return at if given is None else min(at, given)


async def publish_stored(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    headers: dict[str, str],
    stream: str | None = None,
    timeout: float | None = None,
) -> js_api.PubAck:
    """``js.publish`` of a message with a Nats-Msg-Id, tried again while JetStream answers that it is storing
    another publish of that id (10158), at the pace of :func:`publish_inbound`.

    A moment later the same publish is a plain duplicate (or, if the other publish failed, stored): a repeat
    of the same step - a command the desk asked again, a redelivered message - ends as the first does instead
    of failing. Tries end at the deadline of the work in hand (:func:`deadline_in`), else after ``timeout``
    (``STORING_PATIENCE`` without one); every other failure is raised as it comes.
    """
    deadline = _deadline(timeout)
    while True:
        try:
            return await js.publish(subject, payload, stream=stream, headers=dict(headers))
        except APIError as exc:
            if not await _storing_pause(exc, deadline):
                raise


async def publish_inbound(nc: NATS, js: JetStreamContext, env: Inbound, *, timeout: float) -> js_api.PubAck:
    """Store one client message in OL_IN, deduplicated by its id (``ack.duplicate``: it was already there).

    The gateways' one way in. A disconnected client would buffer the publish
    and send it later, so a failure is reported at once instead: the sender
    retries with the same id, and JetStream keeps one copy. Within ``timeout``,
    a stream between two leaders is tried again (see ``REFUSED_PACE``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wait = PUBLISH_ATTEMPT
    task = asyncio.current_task(loop)  # with the loop: on 3.11 each look-up of the running loop is a getpid()
    deadlines = _deadlines_of(loop)
    answers = answers_of(js, nc)
    while True:
        if not nc.is_connected:
            raise BusUnavailable("disconnected")
        now = loop.time()
        attempt = max(0.05, min(wait, deadline - now))
        try:
            subject = subjects.inbound(env.channel, env.account, env.chat_id)
            payload = encode(env)
            headers = {MSG_ID_HEADER: env.id, _EXPECTED_STREAM: subjects.STREAM_IN}
            # nats-py's own timeout answers first; the backstop deadline covers a publish stuck before its
            # request is out (nats-py waits for a full pending buffer to flush without a deadline).
            if task is None:
                async with asyncio.timeout(attempt + 0.5):
                    return await acked_publish(nc, subject, payload, timeout=attempt, headers=headers)
            # acked_publish and Deadlines.within written out here: two coroutine layers fewer on the
            # path of every client message (bench/FINDINGS.md, "P1W, third round").
            entry = deadlines.watch(task, now + attempt + 0.5)
            try:
                if answers is not None:  # through the context's inbox (decision 042)
                    return await answers.acked(subject, payload, headers=headers, timeout=attempt)
                msg = await nc.request(subject, payload, timeout=attempt, headers=headers)
            except NoRespondersError:
                raise NoStreamResponseError from None
            except asyncio.CancelledError:
                if entry.expired and task.uncancel() == 0:  # our cancellation, and nobody else's
                    raise TimeoutError from None
                raise
            finally:
                deadlines.unwatch(task)
            return _pub_ack_of(msg.data)
        except asyncio.CancelledError:
            raise
        except (*_REFUSED, TimeoutError, NatsTimeoutError) as exc:
            left = deadline - loop.time()
            if left <= 0.05:
                raise BusUnavailable(type(exc).__name__, exc) from None
            if isinstance(exc, _REFUSED):
                await asyncio.sleep(min(left, REFUSED_PACE))
            else:
                wait *= 2
        except Exception as exc:  # connection lost, stream errors
            if await _storing_pause(exc, deadline):
                continue
            raise BusUnavailable(type(exc).__name__, exc) from None


_EXPECTED_STREAM = js_api.Header.EXPECTED_STREAM


class _PubAckAnswer(msgspec.Struct):
    """What JetStream answers a publish: the PubAck's fields a caller reads, or the API's error."""

    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_pub_ack = msgspec.json.Decoder(_PubAckAnswer)


async def acked_publish(nc: NATS, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str]) -> js_api.PubAck:
    """``js.publish``'s exchange (one request, JetStream's PubAck or API error in reply) with the answer read by msgspec.

    nats-py reads the PubAck with ``json.loads`` and a dataclass-field walk (``PubAck.from_response``):
    about a tenth of a gateway's own Python per webhook (bench/FINDINGS.md, "P1W at speed"). The errors
    are nats-py's own: no stream answering -> ``NoStreamResponseError``, an API error -> its ``APIError``.
    """
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except NoRespondersError:
        raise NoStreamResponseError from None
    return _pub_ack_of(msg.data)


def _pub_ack_of(data: bytes) -> js_api.PubAck:
    """JetStream's answer to a publish, or its API error raised (as nats-py's own type)."""
    answer = _pub_ack.decode(data)
    if answer.error is not None:
        raise APIError.from_error(answer.error)  # from_error raises the error of its code
    return js_api.PubAck(stream=answer.stream, seq=answer.seq, domain=answer.domain, duplicate=answer.duplicate)


class AckInbox:
    """Requests on one connection answered through one wildcard inbox: publishes whose acknowledgements are
    awaited later, together (the router's ``Effects.together``), and the lean requests of :class:`JetStream`
    (its publishes, and its key-value buckets' reads and writes, :mod:`openlines.kv`).

    nats-py's ``js.publish_async`` does the first, but leaves a publish that JetStream answers with an error
    pending for ever: its reply handler calls ``APIError.from_error``, which raises instead of returning,
    so the error escapes into the subscription task ("nats error ... APIError()") and never reaches the
    future (nats-io/nats.py#985). A refused publish - 10158 among them - then looked like a lost answer
    and held its block for the block's whole timeout. Here the answer, error or not, always ends the future.

    nats-py's ``request`` pays for a new unique token, an ``asyncio.wait_for`` (a task's timer and callbacks)
    and ``json.loads`` with a dataclass walk per answer; here a counter names the request, one timer every
    ``TICK`` seconds ends those past their time, and msgspec reads the answer (decision 042: about 60 % less
    client CPU per key-value read and write).
    """

    TICK = 0.25  # how often requests past their time are looked for: one ends at most this late

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._raw: set[str] = set()  # requests answered with the message itself, not a PubAck
        self._due: dict[str, float] = {}  # the loop's time each timed request ends at
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0
        _ACK_INBOXES.add(self)  # its answers lost with a connection fail at once (drop_answers)

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str], stream: str | None = None
    ) -> asyncio.Future[js_api.PubAck]:
        """Write the publish now (in call order on the connection); the future ends with its acknowledgement or
        failure - as timed out at once when the connection is lost (:func:`drop_answers`), never if the answer
        alone is lost: wait for it with a timeout.
        ``stream``: the stream that must store it (else JetStream refuses it)."""
        return (await self._write(subject, payload, headers, stream=stream, raw=False))[1]

    async def acked(
        self, subject: str, payload: bytes, *, headers: dict[str, str] | None, timeout: float, stream: str | None = None
    ) -> js_api.PubAck:
        """``js.publish``: publish and wait for JetStream's acknowledgement, at most ``timeout`` seconds (then
        nats-py's ``TimeoutError``). No stream taking the subject: ``NoStreamResponseError``; refused: the
        API's error (``APIError`` and its kinds, as nats-py raises them)."""
        token, ack = await self._write(subject, payload, headers, stream=stream, raw=False)
        self._expire(token, timeout)
        return await ack  # type: ignore[no-any-return]

    async def ask(self, subject: str, payload: bytes, *, timeout: float) -> Any:
        """A request answered with a message (``nc.request``): the answer, or nats-py's ``TimeoutError`` after
        ``timeout`` seconds, ``NoRespondersError`` when nobody listens on ``subject``."""
        token, answer = await self._write(subject, payload, None, stream=None, raw=True)
        self._expire(token, timeout)
        return await answer

    async def _write(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, *, stream: str | None, raw: bool
    ) -> tuple[str, asyncio.Future[Any]]:
        if stream is not None:
            headers = {**(headers or {}), _EXPECTED_STREAM: stream}
        if not self._prefix:
            inbox = self.nc.new_inbox()
            await self.nc.subscribe(inbox + ".*", cb=self._answer)
            self._prefix = inbox + "."
        self._next += 1
        token = str(self._next)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        if raw:
            self._raw.add(token)
        fut.add_done_callback(lambda _: self._forget(token))
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            fut.cancel()
            raise
        return token, fut

    def _forget(self, token: str) -> None:
        self._waiting.pop(token, None)
        self._raw.discard(token)
        self._due.pop(token, None)

    def _expire(self, token: str, timeout: float) -> None:
        if token not in self._waiting:
            return  # answered already
        self._due[token] = asyncio.get_running_loop().time() + timeout
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.TICK, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for token, at in list(self._due.items()):
            if at <= now:
                fut = self._waiting.get(token)
                if fut is not None and not fut.done():
                    fut.set_exception(NatsTimeoutError())  # its done callback forgets it
                else:
                    self._due.pop(token, None)
        if self._due:
            self._timer = asyncio.get_running_loop().call_later(self.TICK, self._sweep)

    async def _answer(self, msg: Any) -> None:
        token = msg.subject[len(self._prefix) :]
        fut = self._waiting.get(token)
        if fut is None or fut.done():
            return
        no_responders = msg.headers is not None and msg.headers.get(js_api.Header.STATUS) == "503"
        if token in self._raw:
            if no_responders:
                fut.set_exception(NoRespondersError())
            else:
                fut.set_result(msg)
            return
        if no_responders:  # no stream took the subject
            fut.set_exception(NoStreamResponseError())
            return
        try:
            fut.set_result(_pub_ack_of(msg.data))
        except Exception as exc:  # the API's error, or an answer that is not a PubAck
            fut.set_exception(exc)


class _Deadline:
    __slots__ = ("at", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False


class Deadlines:
    """The deadlines of the client-message publishes in flight on one event loop, watched by one timer.

    ``asyncio.timeout`` per message put a timer handle into the loop's heap, cancelled it again and
    looked the loop and the task up several times: measurable at webhook rates (bench/FINDINGS.md,
    "P1W at speed"). These deadlines are a backstop behind nats-py's own request timeout, so one
    check every ``tick`` seconds over the publishes in flight is enough: a stuck publish is cut off
    at most ``tick`` after its deadline, raising ``TimeoutError`` as ``asyncio.timeout`` would.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.25) -> None:
        self._loop = loop
        self._tick = tick
        self._due: dict[asyncio.Task[Any], _Deadline] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def within(self, task: asyncio.Task[Any], at: float, work: Awaitable[T]) -> T:
        """``await work`` in ``task`` (the current one), cut off with ``TimeoutError`` once the loop's clock passes ``at``."""
        entry = self.watch(task, at)
        try:
            return await work
        except asyncio.CancelledError:
            if entry.expired and task.uncancel() == 0:  # our cancellation, and nobody else's
                raise TimeoutError from None
            raise
        finally:
            self.unwatch(task)

    def watch(self, task: asyncio.Task[Any], at: float) -> _Deadline:
        """:meth:`within` taken apart, for a caller that awaits in its own frame: from now ``task`` is cancelled once
        the clock passes ``at`` (the entry's ``expired`` then says so). Always :meth:`unwatch` it after the await."""
        entry = self._due[task] = _Deadline(at)
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._check)
        return entry

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        del self._due[task]

    def _check(self) -> None:
        self._timer = None
        now = self._loop.time()
        for task, entry in list(self._due.items()):
            if entry.at <= now and not entry.expired:
                entry.expired = True
                task.cancel()
        if self._due:
            self._timer = self._loop.call_later(self._tick, self._check)


_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


_LAST: Deadlines | None = None  # the last loop's, found without the weak dictionary (one loop per service)


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> Deadlines:
    global _LAST
    last = _LAST
    if last is not None and last._loop is loop:
        return last
    found = _DEADLINES.get(loop)
    if found is None:
        found = _DEADLINES[loop] = Deadlines(loop)
    _LAST = found
    return found


async def bootstrap(js: JetStreamContext, replicas: int = 1, report: Callable[[str], None] | None = None) -> None:
    """Create or update every stream and bucket. Safe to run any number of times."""
    say = report or (lambda _m: None)
    for name in subjects.STREAMS:
        cfg = stream_config(name, replicas)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            made = await js.add_stream(cfg)
            check_stream_kept(made.config, cfg)
            say(f"stream {name}: created")
            continue
        current = info.config.num_replicas or 1
        if current > replicas:  # never shrink a cluster's replication by running a tool with the default
            cfg.num_replicas = current
        if _same_stream(info.config, cfg):
            # Nothing to write: a service whose identity may not change shared streams starts as well.
            say(f"stream {name}: up to date")
            continue
        changed = await js.update_stream(cfg)
        check_stream_kept(changed.config, cfg)
        say(f"stream {name}: updated")
    for bucket in subjects.KV_BUCKETS:
        try:
            await js.key_value(bucket)
            say(f"bucket {bucket}: present")
        except (NotFoundError, BadRequestError):
            history = subjects.KV_HISTORY.get(bucket, 5)
            await js.create_key_value(bucket=bucket, history=history, replicas=replicas, storage=js_api.StorageType.FILE)
            say(f"bucket {bucket}: created")


class StreamSettingIgnored(RuntimeError):
    """nats-server stored a stream without a setting the product needs: it is too old to know it."""


def check_stream_kept(got: js_api.StreamConfig, want: js_api.StreamConfig) -> None:
    """Raise :class:`StreamSettingIgnored` if the server dropped a setting it does not know.

    A server older than 2.12 takes ``allow_msg_schedules`` without a word and then stores a timer as a plain
    message that never falls due (decision 039): better no start at all than chats never passed on.
    """
    if want.allow_msg_schedules and not got.allow_msg_schedules:
        raise StreamSettingIgnored(
            f"stream {want.name}: nats-server did not keep allow_msg_schedules; the router's timers need"
            " nats-server 2.12 or later (scheduled messages)"
        )


def _same_stream(have: js_api.StreamConfig, want: js_api.StreamConfig) -> bool:
    """Whether a stream already has every setting :func:`stream_config` gives it."""
    return (
        sorted(have.subjects or []) == sorted(want.subjects or [])
        and have.retention == want.retention
        and have.storage == want.storage
        and (have.num_replicas or 1) == (want.num_replicas or 1)
        and float(have.max_age or 0) == float(want.max_age or 0)
        and float(have.duplicate_window or 0) == float(want.duplicate_window or 0)
        and bool(have.allow_direct) == bool(want.allow_direct)
        and bool(have.allow_msg_schedules) == bool(want.allow_msg_schedules)
    )


async def missing_streams(js: JetStreamContext) -> list[str]:
    """Names of streams and buckets that do not exist (readiness check)."""
    missing: list[str] = []
    for name in subjects.STREAMS:
        try:
            await js.stream_info(name)
        except NotFoundError:
            missing.append(name)
    return missing


class Buckets:
    """The KV buckets, opened once."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.lines: KeyValue
        self.accounts: KeyValue
        self.operators: KeyValue
        self.sessions: KeyValue
        self.clients: KeyValue
        self.waiting: KeyValue

    async def open(self) -> Buckets:
        self.lines = await self.js.key_value(subjects.KV_LINES)
        self.accounts = await self.js.key_value(subjects.KV_ACCOUNTS)
        self.operators = await self.js.key_value(subjects.KV_OPERATORS)
        self.sessions = await self.js.key_value(subjects.KV_SESSIONS)
        self.clients = await self.js.key_value(subjects.KV_CLIENTS)
        self.waiting = await self.js.key_value(subjects.KV_WAITING)
        return self


async def own_bucket(
    js: JetStreamContext, bucket: str, *, history: int = 1, ttl: float | None = None, replicas: int = 1
) -> KeyValue:
    """A service's own KV bucket: opened, or created on first use (file storage) with these settings.

    An existing bucket is taken as it is (its settings are the operator's once made); two replicas
    starting together both try to create it, and the one that loses opens the winner's.
    """
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BadRequestError):  # BucketNotFoundError is a NotFoundError
        pass
    try:
        return await js.create_key_value(
            js_api.KeyValueConfig(
                bucket=bucket, history=history, ttl=ttl or None, replicas=replicas, storage=js_api.StorageType.FILE
            )
        )
    except BadRequestError:  # made meanwhile with other settings (another replica, another release)
        return await js.key_value(bucket)


async def kv_get(kv: KeyValue, key: str, typ: type[T]) -> tuple[T | None, int | None]:
    """(value, revision), or (None, None) when the key is absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None, None
    if entry.value is None or entry.operation in ("DEL", "PURGE"):
        return None, entry.revision
    return msgspec.json.decode(entry.value, type=typ), entry.revision


async def kv_update(
    kv: KeyValue,
    key: str,
    typ: type[T],
    change: Callable[[T | None], T | None] | Callable[[T | None], Awaitable[T | None]],
    *,
    attempts: int = 50,
) -> T | None:
    """Read-modify-write one key with compare-and-set, retrying on conflict.

    ``change`` gets the current value (None if absent) and returns the new
    one, or None to leave the key as it is. Returns what is stored after.
    """
    for _ in range(attempts):
        current, revision = await kv_get(kv, key, typ)
        result = change(current)
        new = await result if asyncio.iscoroutine(result) else result
        if new is None:
            return current
        data = msgspec.json.encode(new)
        try:
            if revision is None:
                await kv.create(key, data)
            else:
                await kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            continue
        except BadRequestError as exc:
            # create() on a key that exists (or was deleted) answers "wrong last sequence"
            if "wrong last sequence" in str(exc).lower():
                continue
            raise
        return new  # type: ignore[return-value]
    raise RuntimeError(f"kv {key}: too much contention, gave up after {attempts} attempts")


async def close_reader(js: JetStreamContext, psub: Any, stream: str, consumer: str) -> None:
    """Unsubscribe a one-off pull reader and delete its ephemeral consumer at once.

    Left to its inactivity threshold, every read would keep a consumer alive for
    that long; a burst of reads (an API script, a page reloaded by many people)
    then reaches nats-server's limit of consumers per stream (error 10026,
    "maximum consumers limit reached") and every further read fails.
    """
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    with contextlib.suppress(Exception):  # gone already, or NATS away: the threshold removes it
        await js.delete_consumer(stream, consumer)


async def kv_entries(js: JetStreamContext, bucket: str) -> dict[str, tuple[int, bytes]]:
    """Every live key of a bucket: key -> (revision, value).

    A pull consumer knows exactly how much it has to read, unlike
    ``KeyValue.keys()`` / ``watchall()`` whose "initial values done" marker can
    come before values already on their way (seen under load: an empty
    answer for a full bucket).
    """
    prefix = f"$KV.{bucket}."
    cfg = js_api.ConsumerConfig(
        name=uuid.uuid4().hex,
        filter_subject=prefix + ">",
        deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    stream = f"KV_{bucket}"
    # Created by name (the create request's subject carries the filter, as for a
    # pull subscription), then bound: its pending count comes with the creation.
    info = await js.add_consumer(stream, cfg)
    psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
    out: dict[str, tuple[int, bytes]] = {}
    try:
        remaining = info.num_pending or 0
        while remaining > 0:
            for m in await psub.fetch(batch=min(256, remaining), timeout=5.0):
                key = m.subject[len(prefix) :]
                headers = m.headers or {}
                if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
                    out.pop(key, None)
                else:
                    out[key] = (m.metadata.sequence.stream, m.data)
                remaining = m.metadata.num_pending or 0
    finally:
        await close_reader(js, psub, stream, info.name)
    return out


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    start_seq: int = 0,
    limit: int = 10_000,
) -> list[tuple[int, bytes]]:
    """All messages of one subject from ``start_seq`` on, as (stream seq, data).

    Uses an ephemeral consumer named in its create request, so the request's
    subject carries the filter (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<subject>``)
    and a NATS identity can be allowed to read only its own subjects of a stream
    (deploy/nats/auth.conf). It reads what the subject held when the consumer was
    made (its pending count) and stops there.
    """
    cfg = js_api.ConsumerConfig(
        name=uuid.uuid4().hex,
        filter_subject=subject,
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE if start_seq > 0 else js_api.DeliverPolicy.ALL,
        opt_start_seq=start_seq if start_seq > 0 else None,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    out: list[tuple[int, bytes]] = []
    info = await js.add_consumer(stream, cfg)
    remaining = min(limit, info.num_pending or 0)
    if remaining == 0:
        with contextlib.suppress(Exception):  # gone already, or NATS away: the threshold removes it
            await js.delete_consumer(stream, info.name)
        return out
    psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
    unavailable = 0
    try:
        while remaining > 0:
            try:
                msgs = await psub.fetch(batch=min(256, remaining), timeout=2.0)
            except (ServiceUnavailableError, NoRespondersError):
                # On a cluster a just-created consumer may not answer for a moment (its
                # placement is still being made known): ask again, briefly.
                unavailable += 1
                if unavailable > 20:
                    raise
                await asyncio.sleep(0.05 * unavailable)
                continue
            for m in msgs[:remaining]:
                out.append((m.metadata.sequence.stream, m.data))
            remaining -= len(msgs)
    finally:
        await close_reader(js, psub, stream, info.name)
    return out
