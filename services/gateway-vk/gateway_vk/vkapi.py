"""Calls to the VK API through ``vk_api`` (synchronous, ``requests``), kept off the event loop.

Each community gets its own small thread pool, its own ``vk_api.VkApi``
clients (one per thread: ``VkApi.method`` holds a lock around the HTTP call)
and its own token bucket, so a slow or throttled community never holds up
another one.

``vk_api`` posts to the hard-coded ``https://api.vk.ru/method/<name>``; the
only place that URL is changed (to reach a local peer in tests, or a proxy) is
:class:`BaseUrlSession`, the ``requests.Session`` it is given.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests
import vk_api
from jconfig.memory import MemoryConfig
from vk_api.exceptions import TOO_MANY_RPS_CODE, ApiError, ApiHttpError, Captcha, VkApiError

from gateway_vk import metrics
from gateway_vk.core.outbound import verdict
from gateway_vk.settings import DEFAULT_API_URL, Community, Settings
from openlines.pace import Pace

log = logging.getLogger("gateway_vk.vkapi")

LIBRARY_METHOD_URL = "https://api.vk.ru/method/"  # what vk_api 11.x posts to


class VkError(Exception):
    """VK answered ``{"error": {...}}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"VK error {code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return verdict(self.code) == "retry"


class VkUnreachable(Exception):
    """No answer from VK: connection failure, timeout, HTTP 5xx, a body that is not JSON. Always retryable."""

    retryable = True


class BaseUrlSession(requests.Session):
    """Sends vk_api's requests to ``base_url`` and never without a timeout (vk_api sets none)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if isinstance(url, str) and url.startswith(LIBRARY_METHOD_URL) and self.base_url != DEFAULT_API_URL:
            url = f"{self.base_url}/method/{url[len(LIBRARY_METHOD_URL) :]}"
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def make_client(token: str, *, api_url: str, version: str, timeout: float) -> Any:
    client = vk_api.VkApi(token=token, api_version=version, config=MemoryConfig, session=BaseUrlSession(api_url, timeout))
    # vk_api paces every client to 3 requests/s (a user-token limit) by sleeping
    # in the calling thread; community tokens allow ~20/s and we pace per token.
    client.RPS_DELAY = 0.0
    # Its handler for error 6 sleeps 0.5 s and retries without end inside the
    # thread; we retry with backoff ourselves and keep the thread free.
    client.error_handlers.pop(TOO_MANY_RPS_CODE, None)
    return client


def _invoke(client: Any, method: str, values: dict[str, Any]) -> Any:
    """Runs in a worker thread. Maps vk_api's and requests' exceptions to ours (no token in any message)."""
    try:
        return client.method(method, values)
    except Captcha:
        raise VkError(14, "Captcha needed") from None
    except ApiError as exc:
        raise VkError(int(exc.code), str(exc.error.get("error_msg", ""))) from None
    except ApiHttpError as exc:
        raise VkUnreachable(f"HTTP {exc.response.status_code}") from None
    except (requests.RequestException, VkApiError, ValueError) as exc:  # ValueError: a body that is not JSON
        raise VkUnreachable(type(exc).__name__) from None


class CommunityApi:
    """The VK API as one community: paced by its token bucket, ``concurrency`` calls at most in flight."""

    def __init__(
        self,
        community: Community,
        settings: Settings,
        *,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "send",
    ) -> None:
        self.community = community
        self._clock = clock
        # VK: about 20 requests a second per token - never more within any second.
        self._bucket = Pace(settings.vk_rate, max(1, int(settings.vk_rate)))
        self._pool = ThreadPoolExecutor(max_workers=settings.vk_concurrency, thread_name_prefix=f"vk-{community.account}-{name}")
        self._clients: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(settings.vk_concurrency):
            self._clients.put_nowait(
                make_client(
                    community.token,
                    api_url=settings.vk_api_url,
                    version=settings.vk_api_version,
                    timeout=timeout or settings.vk_timeout,
                )
            )

    def share_bucket(self, other: CommunityApi) -> None:
        """Use ``other``'s token bucket: both talk with the same token."""
        self._bucket = other._bucket

    async def call(self, method: str, values: dict[str, Any]) -> Any:
        """Call ``method``; raises :class:`VkError` or :class:`VkUnreachable`.

        Cancelling the caller (e.g. a timeout around this call) does not stop
        the HTTP request already running in its thread; its client goes back
        to the pool when it ends.
        """
        wait = self._bucket.reserve(self._clock())
        if wait > 0:
            metrics.THROTTLED.labels(self.community.account).inc()
            await asyncio.sleep(wait)
        client = await self._clients.get()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, functools.partial(_invoke, client, method, values))
        except RuntimeError:  # the pool is shut down: we are stopping
            self._clients.put_nowait(client)
            raise VkUnreachable("stopping") from None
        future.add_done_callback(functools.partial(self._release, client))
        started = time.perf_counter()
        try:
            return await asyncio.shield(future)
        finally:
            metrics.API_SECONDS.labels(method).observe(time.perf_counter() - started)

    def _release(self, client: Any, future: asyncio.Future[Any] | Future[Any]) -> None:
        self._clients.put_nowait(client)
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned call must not log "never retrieved"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
