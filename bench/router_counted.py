"""``python -m router`` with a count of its KV operations, compare-and-set conflicts and JetStream publishes.

The counts (no change to what the router does) are written to
``$BENCH_COUNT_FILE`` on SIGUSR2 (numbered snapshots; SIGUSR1 is every service's task dump) and when the process
exits: P3 reports KV operations per routing decision and the share of
compare-and-set writes that lost to another writer (``conflict:<bucket>``).
"""

from __future__ import annotations

import atexit
import cProfile
import json
import os
import signal
import time
from collections import Counter
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from openlines import bus, kv

COUNTS: Counter[str] = Counter()


def _counted(cls: Any, name: str) -> None:
    orig = getattr(cls, name)
    writes = name in ("update", "create")

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        bucket = getattr(self, "bucket", "?")
        COUNTS[f"{name}:{bucket}"] += 1
        try:
            return await orig(self, *args, **kwargs)
        except (KeyWrongLastSequenceError, BadRequestError) as exc:
            # a compare-and-set that lost: the key changed since it was read (create: it exists)
            if writes and (isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc).lower()):
                COUNTS[f"conflict:{bucket}"] += 1
            raise

    setattr(cls, name, wrapper)


for _m in ("get", "put", "update", "create", "delete"):
    _counted(kv.KeyValue, _m)  # every bucket the router opens (decision 042)
_publish = bus.JetStream.publish


async def _publish_counted(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
    if subject.startswith("$KV.ol-waiting."):  # the waiting queue writes its keys directly (put or purge)
        COUNTS["put:ol-waiting"] += 1
    elif not subject.startswith("$KV."):  # KV writes are counted above
        COUNTS[f"publish:{subject.split('.')[1] if '.' in subject else subject}"] += 1
    return await _publish(self, subject, *args, **kwargs)


bus.JetStream.publish = _publish_counted  # type: ignore[method-assign]
_publish_async = JetStreamContext.publish_async


async def _publish_async_counted(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
    COUNTS[f"publish:{subject.split('.')[1] if '.' in subject else subject}"] += 1  # the router's together blocks
    return await _publish_async(self, subject, *args, **kwargs)


JetStreamContext.publish_async = _publish_async_counted  # type: ignore[method-assign]

# Every message the router writes to NATS (requests, KV writes, acks, fetches, the trail): "wire:publish";
# the trail's stored writes (events, transcript lines, outbound), one round trip per step: "trail:<kind>".
_wire_publish = NATS.publish


async def _wire_counted(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
    COUNTS["wire:publish"] += 1
    return await _wire_publish(self, subject, *args, **kwargs)


NATS.publish = _wire_counted  # type: ignore[method-assign]
_trail_publish = bus.AckInbox.publish


async def _trail_counted(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
    COUNTS[f"trail:{subject.split('.')[1] if '.' in subject else subject}"] += 1
    return await _trail_publish(self, subject, *args, **kwargs)


bus.AckInbox.publish = _trail_counted  # type: ignore[method-assign]


_snap = 0
# BENCH_PROFILE=<file>: cProfile the process from its start, statistics written with each snapshot
# (``<file>.<n>``, each since the one before) and at exit; read with ``python -m pstats``. Off unless asked: it slows the router.
_profile = cProfile.Profile(time.thread_time) if os.environ.get("BENCH_PROFILE") else None


def _dump(*_: Any) -> None:
    """On SIGUSR2: write a numbered snapshot; at exit: the final counts."""
    global _snap, _profile
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        _snap += 1
        with open(f"{path}.{_snap}" if _ else path, "w") as f:
            json.dump(dict(COUNTS), f)
    if _profile is not None:  # each file covers the time since the one before (dumping ends a profile)
        _profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{_snap}" if _ else os.environ["BENCH_PROFILE"])
        _profile = cProfile.Profile(time.thread_time)
        _profile.enable()


atexit.register(_dump)
signal.signal(signal.SIGUSR2, _dump)


from openlines.runner import main  # noqa: E402
from router.app import setup  # noqa: E402
from router.settings import Settings  # noqa: E402

if _profile is not None:
    _profile.enable()

main("router", Settings, setup)
