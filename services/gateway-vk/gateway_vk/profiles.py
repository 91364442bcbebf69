"""Client names from ``users.get``, cached in memory; a lookup never holds the webhook answer for long."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway_vk import metrics
from gateway_vk.vkapi import CommunityApi, VkError, VkUnreachable

log = logging.getLogger("gateway_vk.profiles")

MAX_ENTRIES = 100_000
_HITS = metrics.PROFILE_LOOKUPS.labels("hit")  # resolved once: every event of a known author counts one
FAILURE_TTL = 60.0  # after a failed lookup, do not ask again for this long (VK down: no 1.5 s wait per message)


class Profiles:
    def __init__(self, *, ttl: float, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()

    def known(self, api: CommunityApi, user_id: int) -> str | None:
        """What :meth:`name` answers without asking VK (a cached name, or "" for a non-user); None: ask :meth:`name`.

        The webhook calls this first: most events come from a known author, and a coroutine less per event
        shows at webhook rates (bench/FINDINGS.md)."""
        if user_id <= 0:
            return ""  # another community writing, or a chat: users.get knows only users
        hit = self._cache.get((api.community.account, user_id))
        if hit is not None and hit[1] > self._clock():
            _HITS.inc()
            return hit[0]
        return None

    async def name(self, api: CommunityApi, user_id: int) -> str:
        """'First Last' of a VK user, or "" when unknown (communities, failures, timeouts)."""
        known = self.known(api, user_id)
        if known is not None:
            return known
        key = (api.community.account, user_id)
        now = self._clock()
        try:
            answer = await asyncio.wait_for(api.call("users.get", {"user_ids": str(user_id)}), timeout=self.timeout)
        except (TimeoutError, VkError, VkUnreachable) as exc:
            metrics.PROFILE_LOOKUPS.labels("failed").inc()
            log.info("users.get failed; publishing without a name", extra={"account": key[0], "error": str(exc) or "timeout"})
            self._store(key, "", now + FAILURE_TTL)
            return ""
        name = _full_name(answer)
        metrics.PROFILE_LOOKUPS.labels("fetched").inc()
        self._store(key, name, now + self.ttl)
        return name

    def _store(self, key: tuple[str, int], name: str, until: float) -> None:
        self._cache[key] = (name, until)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)


def _full_name(answer: Any) -> str:
    if not isinstance(answer, list) or not answer or not isinstance(answer[0], dict):
        return ""
    user = answer[0]
    parts = [user.get("first_name"), user.get("last_name")]
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())[:100]
