"""What every service shares: NATS connection, HTTP with /healthz /readyz
/metrics, background tasks, a graceful stop on SIGTERM, and on SIGUSR1 a log of
what every asyncio task is waiting on (:mod:`openlines.taskdump`).

Two HTTP ports: the service's own (``OPENLINES_HTTP_PORT``: its routes plus
/healthz and /readyz for load balancers) and an internal one
(``OPENLINES_METRICS_PORT``, default the HTTP port + 1000) with /metrics,
/healthz and /readyz, which the shipped ingress never routes: counters of
sign-ins, refusals and queues are nobody's business outside the cluster.

A service is a ``setup(service)`` coroutine that adds routes and tasks. The
same object runs under ``python -m <service>`` (via :func:`main`) and inside
tests (via :func:`launch` / :meth:`Service.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import nats.errors
import prometheus_client
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from openlines import bus, logs, taskdump
from openlines.natsauth import NatsAuth, NatsAuthError
from openlines.pace import backoff
from openlines.settings import BaseSettings, SettingsError, load_settings

S = TypeVar("S", bound=BaseSettings)

log = logging.getLogger("openlines.runner")


def json_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape every HTTP edge answers with."""
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """No traceback ever reaches a client; HTTP errors keep the JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return json_error(500, "internal", "internal error; see the service log")


class Service(Generic[S]):
    def __init__(self, name: str, settings: S) -> None:
        self.name = name
        self.settings = settings
        self.nc: NATS
        self.js: JetStreamContext
        self.app = web.Application(middlewares=[error_middleware], client_max_size=2 * 1024 * 1024)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.ops_app = web.Application(middlewares=[error_middleware])
        self.ops_app.router.add_get("/metrics", self._metrics)
        self.ops_app.router.add_get("/healthz", self._healthz)
        self.ops_app.router.add_get("/readyz", self._readyz)
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._runner: web.AppRunner | None = None
        self._ops_runner: web.AppRunner | None = None
        self._ready_checks: list[Callable[[], Awaitable[str | None]]] = []
        self.port = settings.http_port
        self.metrics_port = settings.ops_port()

    # -- wiring ---------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task for the life of the service; a crash is logged and stops the service."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed; stopping", extra={"task": task.get_name(), "error": repr(exc)})
            self.stopping.set()

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` when stopping, before NATS is drained (in reverse order of registration)."""
        self._on_stop.append(fn)

    def ready_check(self, fn: Callable[[], Awaitable[str | None]]) -> None:
        """Add a readiness check returning None when fine or a reason when not."""
        self._ready_checks.append(fn)

    # -- life cycle -----------------------------------------------------

    def nats_auth(self) -> NatsAuth:
        s = self.settings
        return NatsAuth.load(
            identity=self.name,
            seed=s.nats_nkey_seed,
            seed_file=s.nats_nkey_seed_file,
            tls_ca=s.nats_tls_ca,
            tls_cert=s.nats_tls_cert,
            tls_key=s.nats_tls_key,
        )

    async def connect(self, first_attempts: int = 0) -> None:
        self.nc = await bus.connect(self.settings.nats_url, self.name, first_attempts=first_attempts, auth=self.nats_auth())
        self.js = self.nc.jetstream(timeout=self.settings.nats_request_timeout)
        await bus.follow_elections(self.nc, self.name)
        if self.settings.bootstrap:
            await self._bootstrap(first_attempts)

    async def _bootstrap(self, first_attempts: int) -> None:
        """Create the streams and buckets; while JetStream cannot answer yet (a cluster electing its
        leaders, a node restarting), wait and try again - forever unless ``first_attempts`` says otherwise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await bus.bootstrap(self.js, replicas=self.settings.replicas)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if first_attempts and attempt >= first_attempts:
                    raise
                log.warning(
                    "JetStream not ready for the streams yet, or this service's NATS identity may not create them"
                    " (run `openlines bootstrap` as admin); retrying",
                    extra={"attempt": attempt, "error": repr(exc), "replicas": self.settings.replicas},
                )
                await asyncio.sleep(backoff(attempt, 0.5, 5.0))

    async def start_http(self) -> None:
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=self.settings.shutdown_timeout
        )
        await self._runner.setup()
        self.port = await _serve(self._runner, self.settings.http_host, self.settings.http_port)
        self._ops_runner = web.AppRunner(self.ops_app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._ops_runner.setup()
        self.metrics_port = await _serve(self._ops_runner, self.settings.http_host, self.settings.ops_port())
        log.info("listening", extra={"host": self.settings.http_host, "port": self.port, "metrics_port": self.metrics_port})

    async def stop(self) -> None:
        """Stop accepting work, finish what is in flight, then disconnect.

        Every step gets ``shutdown_timeout``: a step that has not ended by then (a page that stopped
        reading its socket, an await that never returns) is logged with every task's stack and left
        behind, so a stop always ends and says where it was stuck.
        """
        self.stopping.set()
        for fn in reversed(self._on_stop):
            await self._stop_step(getattr(fn, "__qualname__", repr(fn)), fn())
        if self._runner is not None:
            await self._stop_step("http server", self._runner.cleanup())
        if self._ops_runner is not None:
            await self._stop_step("ops http server", self._ops_runner.cleanup())
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_timeout)
            if pending:
                self._stuck("background tasks", sorted(t.get_name() for t in pending))
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout=self.settings.shutdown_timeout)
            with contextlib.suppress(Exception):
                await self.nc.close()
        log.info("stopped")

    async def _stop_step(self, name: str, step: Awaitable[None]) -> None:
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=self.settings.shutdown_timeout)
        if not done:
            self._stuck(name, [task.get_name()])
            task.cancel()  # not awaited: it may not end, and the stop goes on
            return
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("error while stopping", extra={"step": name, "error": repr(exc)}, exc_info=exc)

    def _stuck(self, step: str, tasks: list[str]) -> None:
        log.error(
            "a stop step did not end in time; stopping the rest anyway",
            extra={"step": step, "tasks": tasks, "seconds": self.settings.shutdown_timeout},
        )
        taskdump.dump(asyncio.get_running_loop(), reason="stop step did not end")

    # -- health ---------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": self.name, "uptime_s": round(time.time() - self.started_at, 1)})

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons: list[str] = []
        if self.stopping.is_set():
            reasons.append("shutting down")
        elif not self.nc.is_connected:
            reasons.append("nats not connected")
        else:
            try:
                missing = await bus.missing_streams(self.js)
                if missing:
                    reasons.append("missing streams: " + ", ".join(missing))
            except Exception as exc:
                reasons.append(f"jetstream not answering: {exc.__class__.__name__}")
            for check in self._ready_checks:
                reason = await check()
                if reason:
                    reasons.append(reason)
        if reasons:
            return web.json_response({"status": "not ready", "service": self.name, "reasons": reasons}, status=503)
        return web.json_response({"status": "ready", "service": self.name})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def _serve(runner: web.AppRunner, host: str, port: int) -> int:
    """Start serving ``runner`` on ``host:port``; the port bound (``port`` 0 = a free one)."""
    before = {tuple(a) for a in runner.addresses}
    site = web.TCPSite(runner, host, port)
    await site.start()
    added = [a for a in runner.addresses if tuple(a) not in before]  # this site's socket(s)
    return int(added[0][1]) if added else port


async def launch(
    name: str, settings: S, setup: Callable[[Service[S]], Awaitable[None]], *, first_attempts: int = 0
) -> Service[S]:
    """Connect, set the service up and start serving HTTP. Returns the running service.

    A set-up that NATS does not answer - a node restarting, a cluster electing a bucket's leader, a
    request lost - is undone and started over on a new connection (forever, unless ``first_attempts``
    says otherwise): a service restarted into such a moment used to exit and wait for its
    orchestrator's back-off.
    """
    attempt = 0
    while True:
        attempt += 1
        svc = Service(name, settings)
        await svc.connect(first_attempts=first_attempts)
        try:
            await setup(svc)
            await svc.start_http()
            return svc
        except (nats.errors.Error, TimeoutError) as exc:
            if first_attempts and attempt >= first_attempts:
                raise
            log.warning("set-up got no answer from NATS; starting over", extra={"error": repr(exc), "attempt": attempt})
            await svc.stop()
            await asyncio.sleep(backoff(attempt, 0.5, 5.0))


YOUNG_THRESHOLD = 10_000  # the collector's generation-0 threshold once a service is up (CPython's default: 700)


def settle_heap() -> None:
    """Move everything the start-up made (imported modules, aiogram's and pydantic's validators, settings)
    out of the garbage collector's sight.

    Those objects live as long as the process, yet every full collection walked all of them again: in the
    webhook benchmark the collector took ~40 us per request of the Telegram gateway (200,000 tracked objects)
    and ~7 us once they were frozen (bench/FINDINGS.md, "P1W at speed"). Objects made later are collected as
    before; frozen ones are only never freed, and start-up objects are not meant to be.
    """
    gc.collect()
    gc.freeze()
    # The young generation is collected when the tracked objects made minus those freed pass the threshold.
    # Objects freed by reference counting never need the collector, but the ones alive across an await (a
    # request's task, coroutines, futures, response) count: at 700, a few dozen requests in flight crossed the
    # line every ~50 webhooks, and each young collection walked every live young object (3-7 us per webhook;
    # bench/FINDINGS.md, "P1W, third round"). 10,000 is crossed by objects that are really left over (cycles),
    # not by the work in hand; what it can delay is the freeing of cyclic garbage, by at most that many objects.
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


def main(name: str, settings_cls: type[S], setup: Callable[[Service[S]], Awaitable[None]]) -> None:
    """Entry point of ``python -m <service>``."""
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        raise SystemExit(f"{name}: configuration error: {exc}") from None
    problem = settings.problem()
    if problem:
        raise SystemExit(f"{name}: configuration error: {problem}")
    logs.setup(name, settings.log_level)
    log.info("starting", extra={"settings": settings.public()})

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # SIGUSR1 logs what every task awaits; set before the set-up, so a start-up that hangs can be looked at too.
        taskdump.dump_on_signal(loop)
        svc = await launch(name, settings, setup)
        settle_heap()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, svc.stopping.set)
        await svc.stopping.wait()
        log.info("stopping: draining in-flight work")
        await svc.stop()

    try:
        asyncio.run(run())
    except NatsAuthError as exc:
        raise SystemExit(f"{name}: {exc}") from None
