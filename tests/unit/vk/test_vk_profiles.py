"""Client names: what the webhook knows without asking VK (Profiles.known) and what it asks users.get for."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway_vk.profiles import Profiles


class _Api:
    """users.get as one community sees it, counting the calls."""

    def __init__(self) -> None:
        self.community = SimpleNamespace(account="club")
        self.calls = 0

    async def call(self, method: str, params: dict[str, str]) -> Any:
        assert method == "users.get"
        self.calls += 1
        return [{"id": int(params["user_ids"]), "first_name": "Vera", "last_name": "Bench"}]


async def test_a_name_is_asked_for_once_and_then_known_until_it_expires() -> None:
    now = [100.0]
    profiles = Profiles(ttl=60, timeout=1, clock=lambda: now[0])
    api: Any = _Api()
    assert profiles.known(api, 7) is None  # never asked: the webhook must ask
    assert await profiles.name(api, 7) == "Vera Bench" and api.calls == 1
    assert profiles.known(api, 7) == "Vera Bench"
    assert await profiles.name(api, 7) == "Vera Bench" and api.calls == 1
    now[0] += 61
    assert profiles.known(api, 7) is None
    assert await profiles.name(api, 7) == "Vera Bench" and api.calls == 2


async def test_a_community_or_a_chat_writing_is_known_to_have_no_name_without_a_call() -> None:
    profiles = Profiles(ttl=60, timeout=1)
    api: Any = _Api()
    assert profiles.known(api, -42) == "" and await profiles.name(api, 0) == ""
    assert api.calls == 0
