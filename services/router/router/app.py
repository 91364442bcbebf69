"""Wiring of the router service."""

from __future__ import annotations

import asyncio
import logging

from openlines.bus import Buckets, flush_all
from openlines.runner import Service
from router import commands, timers
from router.engine import Engine
from router.lines_cache import LinesCache
from router.operators_cache import OperatorsCache
from router.partitions import Partitions
from router.places import QueuePlaces
from router.presence import DeskReaper
from router.settings import Settings
from router.shell.base import Shared
from router.sla import SlaWatch
from router.timers import Timer
from router.waiting import Waiting, move_old_queues

log = logging.getLogger("router.app")


async def setup(svc: Service[Settings]) -> None:
    buckets = await Buckets(svc.js).open()
    lines = LinesCache(buckets.lines)
    svc.spawn(lines.run(), "lines-watch")
    await asyncio.wait_for(lines.loaded.wait(), timeout=30)
    operators = OperatorsCache(buckets.operators)
    svc.spawn(operators.run(), "operators-watch")
    waiting = Waiting(svc.js)
    svc.spawn(waiting.run(), "waiting-watch")

    def tells_places(line_id: str) -> bool:
        line = lines.lines.get(line_id)
        return line is not None and line.queue.tell_position

    waiting.on_change = QueuePlaces(svc.nc, waiting, tells_places).changed
    await asyncio.wait_for(waiting.loaded.wait(), timeout=60)
    moved = await move_old_queues(buckets.sessions, waiting, list(lines.lines))
    if moved:
        log.info("waiting chats moved to ol-waiting", extra={"chats": moved})
    shared = Shared(
        svc.nc,
        svc.js,
        buckets,
        lines,
        operators,
        waiting,
        svc.settings.flood_rule(),
        request_timeout=svc.settings.nats_request_timeout,
    )
    engine = Engine(shared)
    running = commands.AtOnce(svc.settings.commands_at_once)
    micro = await commands.serve(svc.nc, engine, running)
    await flush_all(svc.nc)  # the server knows our command subscriptions before we say we are up
    stop_consuming = asyncio.Event()
    partitions = Partitions(
        svc.js,
        engine,
        nc=svc.nc,
        lease_seconds=svc.settings.partition_lease_seconds,
        ack_wait=svc.settings.ack_wait,
        in_hand=svc.settings.in_hand,
        replicas=svc.settings.replicas,
        finish_timeout=svc.settings.shutdown_timeout,
    )
    await partitions.open()
    consumer = svc.spawn(partitions.run(), "partitions")

    async def offer_after_reload() -> None:
        # A changed line (more operators, hours now open, higher capacity) may
        # be able to take chats that wait: offer them at once.
        while True:
            line_id = await lines.changed.get()
            line = lines.lines.get(line_id)
            if line is not None:
                try:
                    await engine.drain(line)
                except Exception as exc:
                    log.warning("drain after reload failed", extra={"line": line_id, "error": repr(exc)})

    svc.spawn(offer_after_reload(), "reload-drain")

    async def sweep() -> None:
        # A replica killed mid-offer can leave a capacity claim behind; never let it block an operator for long.
        while True:
            try:
                await engine.sweep_stale_claims()
            except Exception as exc:
                log.warning("stale-claim sweep failed", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(stop_consuming.wait(), timeout=svc.settings.sweep_seconds)
                return
            except TimeoutError:
                pass

    svc.spawn(sweep(), "sweep")
    reaper = DeskReaper(svc.js, engine)

    async def reap_desks() -> None:
        # A desk replica killed -9 never says its pages closed: its heartbeat runs out instead.
        while True:
            try:
                await reaper.sweep()
            except Exception as exc:
                log.warning("desk presence sweep failed", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(stop_consuming.wait(), timeout=svc.settings.desk_sweep_seconds)
                return
            except TimeoutError:
                pass

    svc.spawn(reap_desks(), "desk-presence")
    sla = await SlaWatch(svc.js, buckets, lines, engine.fx, replicas=svc.settings.replicas).open()
    sla_loop = svc.spawn(sla.run(stop_consuming), "sla-clocks")

    async def fire(timer: Timer) -> None:
        await (sla.fire(timer) if timer.kind == "sla" else engine.fire(timer))

    timer_loop = svc.spawn(timers.consume(svc.js, fire, svc.settings.timer_consumer, stop_consuming), "timers")

    async def ready() -> str | None:
        if not lines.loaded.is_set():
            return "line configs not loaded yet"
        return None if partitions.balanced.is_set() else "inbound partitions not taken yet"

    async def drain() -> None:
        # Finish the message in hand, take no new one, stop answering commands.
        stop_consuming.set()
        partitions.stop()
        try:
            await asyncio.wait_for(
                asyncio.shield(asyncio.gather(consumer, timer_loop, sla_loop)), timeout=svc.settings.shutdown_timeout
            )
        except (TimeoutError, asyncio.CancelledError):
            pass
        await micro.stop()
        await running.finish(svc.settings.shutdown_timeout)

    svc.ready_check(ready)
    svc.on_stop(drain)
