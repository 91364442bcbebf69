"""Operators' capacity in KV: the views routing decides on, claims by compare-and-set, stale claims dropped.

The rule (who counts as full, which claim is stale) is ``router.core.capacity``;
this part reads and writes the operators' records around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import msgspec
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from openlines import subjects
from openlines.bus import kv_entries, kv_get, kv_update
from openlines.lines import LineConfig, QueueConfig
from openlines.state import OperatorState, Session
from router.core import capacity
from router.core.capacity import OperatorView
from router.shell.base import Part, Shared

log = logging.getLogger("router.engine")

CLEAN_RECHECK_SECONDS = 10.0  # an operator found with no stale claim is not looked at again sooner, unless changed
CLAIM_ATTEMPTS = 20


class Capacity(Part):
    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self._found_clean: dict[str, tuple[int, float]] = {}  # operator -> (revision, when) with no stale claim
        self._claiming: dict[str, asyncio.Lock] = {}  # one claim per operator at a time in this replica
        # (line, operator) -> (their state, the line's queue, the view made of them): a line of 1,000 operators
        # makes a view only of those whose state changed since its last decision, not of all 1,000 each time.
        self._views: dict[tuple[str, str], tuple[OperatorState, QueueConfig, OperatorView]] = {}
        self._queues: dict[str, QueueConfig] = {}  # line -> the queue its views were last made for

    async def views(self, line: LineConfig, *, live: bool = False) -> list[OperatorView]:
        """The line's operators as routing sees them: from the watch-fed copy, or ``live`` from KV."""
        if live or self.operators is None or not self.operators.loaded.is_set():
            # One round trip for the whole queue, not one per operator: the claim re-checks by compare-and-set.
            found = await asyncio.gather(*(kv_get(self.b.operators, op_id, OperatorState) for op_id in line.queue.operators))
            if self.operators is not None:
                for op_id, (st, rev) in zip(line.queue.operators, found, strict=True):
                    self.operators.put(op_id, st, rev)
            states = [st for st, _ in found]
        else:
            states = [self.operators.get(op_id) for op_id in line.queue.operators]
        queue = line.queue
        if self._queues.get(line.id) is not queue:
            self._forget_unconfigured(line.id, queue)
        made = self._views
        out: list[OperatorView] = []
        for op_id, st in zip(queue.operators, states, strict=True):
            if st is None:
                continue
            key = (line.id, op_id)
            known = made.get(key)
            if known is not None and known[0] is st and known[1] is queue:
                out.append(known[2])
                continue
            view = capacity.view_of(op_id, st, queue)
            made[key] = (st, queue, view)
            out.append(view)
        return out

    def _forget_unconfigured(self, line_id: str, queue: QueueConfig) -> None:
        """The line's queue is new (the router started, or an apply changed it): the views kept of pairs no
        longer configured - this line's operators removed from it, lines removed - are forgotten."""
        self._queues[line_id] = queue
        configured = {(lid, op) for lid, cfg in self.lines.lines.items() for op in cfg.queue.operators}
        configured.update((line_id, op) for op in queue.operators)
        for key in [k for k in self._views if k not in configured]:
            del self._views[key]
        for lid in [lid for lid in self._queues if lid not in self.lines.lines and lid != line_id]:
            del self._queues[lid]

    def claiming(self, op_id: str) -> bool:
        """Whether a claim on the operator is being made in this replica now."""
        lock = self._claiming.get(op_id)
        return lock is not None and lock.locked()

    async def claim(
        self,
        op_id: str,
        sid: str,
        queue: QueueConfig,
        now: datetime,
        *,
        any_status: bool = False,
        decided_on: int | None = None,
    ) -> bool:
        """Reserve capacity on an operator by compare-and-set; False if they can no longer take it.

        The first try writes on the watch-fed copy's value and revision (no read): the write
        fails if the copy was behind, and anything but "take" is decided again on the live value.
        Claims on one operator are made one at a time in this replica (decisions of several chats
        run side by side, decision 029): ``decided_on``, the revision of the copy the choice of this
        operator was made on - a claim of this replica that changed it meanwhile answers False at
        once, without a round trip, and the caller decides again on the copy as it is now.
        """
        lock = self._claiming.get(op_id)
        if lock is None:
            lock = self._claiming[op_id] = asyncio.Lock()
        async with lock:
            return await self._claim(op_id, sid, queue, now, any_status=any_status, decided_on=decided_on)

    async def _claim(
        self, op_id: str, sid: str, queue: QueueConfig, now: datetime, *, any_status: bool, decided_on: int | None
    ) -> bool:
        cached = self.operators.entry(op_id) if self.operators is not None else None
        if decided_on is not None and cached is not None and cached[1] != decided_on:
            return False  # changed since the choice (another chat's claim here): choose again
        st: OperatorState | None
        rev: int | None
        for _ in range(CLAIM_ATTEMPTS):
            if cached is not None:
                (st, rev), from_copy, cached = cached, True, None
            else:
                st, rev = await kv_get(self.b.operators, op_id, OperatorState)
                from_copy = False
                if self.operators is not None:
                    self.operators.put(op_id, st, rev)  # the next decision sees what this claim saw
            if st is None or rev is None:
                return False
            decided = capacity.claim(st, sid, queue, now.timestamp(), any_status=any_status)
            if from_copy and decided.verdict != "take":
                continue  # the copy may be a moment behind: decide on the live value
            if decided.verdict == "full":
                stale = await self._stale_claims(op_id, st, now.timestamp())
                if not stale:
                    return False
                # A crash left claims behind: they do not count.
                decided = capacity.claim(capacity.without(st, stale), sid, queue, now.timestamp(), any_status=any_status)
                if decided.verdict == "full":
                    await self._drop_stale(op_id, stale)
                    return False
            if decided.verdict != "take" or decided.state is None:
                return decided.verdict == "held"
            new = decided.state
            try:
                written = await self.b.operators.update(op_id, msgspec.json.encode(new), last=rev)
                if self.operators is not None:
                    self.operators.put(op_id, new, written)
                return True
            except (KeyWrongLastSequenceError, BadRequestError):
                continue
        return False

    async def _stale_claims(self, op_id: str, st: OperatorState, now: float) -> set[str]:
        """Sessions on an operator's list that are no longer theirs (see ``capacity.stale_claims``)."""
        found = await asyncio.gather(*(kv_get(self.b.sessions, sid, Session) for sid in st.sessions))
        held = {sid: session for sid, (session, _) in zip(st.sessions, found, strict=True)}
        return capacity.stale_claims(op_id, held, now)

    async def prune_full(self, line: LineConfig, now: datetime) -> bool:
        """Nobody can take a chat: drop stale claims of the line's online operators who look full. True if any."""
        dropped = False
        for op_id in line.queue.operators:
            st, rev = await kv_get(self.b.operators, op_id, OperatorState)
            if st is None or not capacity.looks_full(st, line.queue):
                continue
            # Looking at every chat an operator holds costs one read each: with a long queue every
            # new chat would repeat it. An unchanged operator found clean a moment ago is not re-read.
            checked = self._found_clean.get(op_id)
            if checked is not None and checked[0] == rev and time.monotonic() - checked[1] < CLEAN_RECHECK_SECONDS:
                continue
            stale = await self._stale_claims(op_id, st, now.timestamp())
            if not stale and rev is not None:
                self._found_clean[op_id] = (rev, time.monotonic())
            if stale:
                log.warning("dropping stale capacity claims", extra={"operator": op_id, "sessions": sorted(stale)})
                await self._drop_stale(op_id, stale)
                dropped = True
        return dropped

    async def _drop_stale(self, op_id: str, stale: set[str]) -> None:
        await kv_update(self.b.operators, op_id, OperatorState, lambda st: capacity.without(st, stale) if st else None)

    async def sweep(self, now: datetime) -> dict[str, int]:
        """Drop every operator's stale claims; returns how many were dropped, per operator who had any."""
        dropped: dict[str, int] = {}
        for op_id, (_, data) in (await kv_entries(self.js, subjects.KV_OPERATORS)).items():
            st = msgspec.json.decode(data, type=OperatorState)
            stale = await self._stale_claims(op_id, st, now.timestamp())
            if stale:
                log.warning("dropping stale capacity claims", extra={"operator": op_id, "sessions": sorted(stale)})
                await self._drop_stale(op_id, stale)
                dropped[op_id] = len(stale)
        return dropped
