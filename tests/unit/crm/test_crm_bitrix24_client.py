"""The Bitrix24 client and backend against the local REST peer: documented
shapes, rate limits, token refresh, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
from peers.bitrix24 import parse_php_query, running_bitrix24

from crm_sync.backends.base import CrmRejected, CrmUnavailable, Entity
from crm_sync.backends.bitrix24 import Bitrix24Backend, Bitrix24Client, LeakyBucket, Tokens, query_string


def test_batch_commands_are_written_as_php_queries_the_portal_reads_back() -> None:
    params = {"filter": {"ORIGIN_ID": "imol|telegram|bot|1 2"}, "values": ["+371 2", "a&b"], "type": "PHONE"}
    assert parse_php_query(query_string(params)) == params


async def test_a_lead_is_created_found_by_origin_and_by_phone_through_one_batch() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100))
        lead_id = await crm.create(
            Entity(
                kind="lead",
                title="T",
                name="Ann",
                phones=["+37126123456"],
                emails=["ann@example.com"],
                source_id="VK",
                origin="o-1",
            )
        )
        assert peer.calls[-1][1]["fields"]["SOURCE_ID"] == "VK"
        found = await crm.find_by_origin("lead", "o-1")
        assert found is not None and found.id == lead_id and found.source_id == "VK"
        peer.calls.clear()
        matches = await crm.find_by_comm(["+37126123456"], ["ann@example.com"])
        assert matches.leads == [lead_id] and matches.contacts == []
        assert peer.methods() == ["batch"]
        assert (await crm.find_by_comm(["+15550000000"], [])).leads == []  # nothing found is an empty list
        assert await crm.get("lead", "999") is None  # NOT_FOUND
        await crm.close()


async def test_query_limit_exceeded_is_retried_with_back_off_then_reported_unavailable() -> None:
    async with running_bitrix24() as peer:
        client = Bitrix24Client(webhook=peer.webhook, rate=100, limit_retries=2, backoff=0.01)
        peer.limited = True
        with pytest.raises(CrmUnavailable, match="QUERY_LIMIT_EXCEEDED"):
            await client.call("profile")
        assert peer.methods() == ["profile"] * 3
        peer.limited = False
        assert (await client.call("profile"))["ID"] == "1"
        await client.close()


async def test_the_portal_rate_limit_is_respected_by_the_client_side_bucket() -> None:
    async with running_bitrix24() as peer:
        peer.rate, peer.burst = 20.0, 3  # the portal: 3 at once, then 20/s
        # Configured below the portal's limit, as docs/crm.md advises: timer jitter
        # on a busy machine must not push the client over it.
        client = Bitrix24Client(webhook=peer.webhook, rate=12.0, burst=2, limit_retries=0)
        for _ in range(8):
            await client.call("profile")  # never QUERY_LIMIT_EXCEEDED: we keep under the limit
        await client.close()


async def test_leaky_bucket_spaces_requests_after_the_burst() -> None:
    bucket = LeakyBucket(rate=50.0, burst=2)
    started = time.monotonic()
    for _ in range(6):
        await bucket.acquire()
    assert time.monotonic() - started >= 4 / 50 * 0.9


async def test_an_expired_oauth_token_is_refreshed_once_and_the_new_pair_kept() -> None:
    kept: list[Tokens] = []

    async def keep(t: Tokens) -> None:
        kept.append(t)

    async with running_bitrix24() as peer:
        client = Bitrix24Client(
            portal=peer.base,
            tokens=Tokens(access_token=peer.access_token, refresh_token=peer.refresh_token),
            oauth_url=f"{peer.base}/oauth/token/",
            client_id=peer.client_id,
            client_secret=peer.client_secret,
            on_tokens=keep,
            rate=100,
        )
        assert (await client.call("scope")) == ["crm", "user", "imopenlines"]
        peer.expire_token()  # the portal now says expired_token to what we hold
        assert (await client.call("scope")) == ["crm", "user", "imopenlines"]
        assert [t.refresh_token for t in kept] == ["refresh-2"]
        assert client.tokens is not None and client.tokens.access_token == peer.access_token
        await client.close()


async def test_expired_token_without_refresh_credentials_waits_instead_of_failing_the_event() -> None:
    async with running_bitrix24() as peer:
        client = Bitrix24Client(portal=peer.base, tokens=Tokens(access_token="token-0"), rate=100)
        with pytest.raises(CrmUnavailable, match="no refresh token"):
            await client.call("scope")
        await client.close()


async def test_a_refused_field_is_a_rejection_not_a_retry() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100))
        from crm_sync.backends.base import Activity

        bad: Any = Activity(owner_kind="lead", owner_id="", session_id="s1", origin="x")
        with pytest.raises(CrmRejected, match="OWNER_ID"):
            await crm.add_activity(bad)
        await crm.close()


async def test_a_wrong_webhook_code_is_refused() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook.replace("secretcode", "wrong"), rate=100))
        with pytest.raises(CrmRejected):
            await crm.check()
        await crm.close()
