"""The Bitrix24 client and backend against the local REST peer: documented
shapes, rate limits, token refresh, errors."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from peers.bitrix24 import parse_php_query, running_bitrix24
from support.corpus import CORPUS

from crm_sync.backends.base import Activity, CrmRejected, CrmUnavailable, Entity, Matches
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


# -- the portal's limits and refusals, as the real API answers them ------------------------------------


async def test_a_create_refused_for_the_request_rate_is_not_repeated_by_the_client() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100, limit_retries=3, backoff=0.01))
        peer.limited = True
        with pytest.raises(CrmUnavailable, match="QUERY_LIMIT_EXCEEDED") as refused:
            await crm.create(Entity(kind="lead", title="T", origin="o-limited"))
        assert refused.value.retry_after > 0
        # Sent once: whoever retries it searches by ORIGIN_ID first (decision 015). Reads are retried here.
        assert peer.methods() == ["crm.lead.add"]
        with pytest.raises(CrmUnavailable):
            await crm.find_by_origin("lead", "o-limited")
        assert peer.methods().count("crm.lead.list") == 4
        await crm.close()


async def test_operation_time_limit_blocks_only_that_method_until_the_reset_the_portal_named() -> None:
    async with running_bitrix24() as peer:
        peer.operating_window, peer.operating_limit = 3600.0, 1.0
        peer.operating_cost["crm.lead.add"] = 2.0  # one call uses the method's budget up for the hour
        client = Bitrix24Client(webhook=peer.webhook, rate=100, backoff=0.01)
        crm = Bitrix24Backend(client)
        answer = await client.raw("crm.lead.add", {"fields": {"TITLE": "first"}})
        assert answer["time"]["operating"] == 2.0
        reset_at = answer["time"]["operating_reset_at"]
        assert reset_at > time.time() + 3000
        with pytest.raises(CrmUnavailable, match="OPERATION_TIME_LIMIT") as blocked:
            await crm.create(Entity(kind="lead", title="second", origin="o-2"))
        assert peer.answers[-1] == ("crm.lead.add", 429, "OPERATION_TIME_LIMIT")
        assert blocked.value.retry_after > 3000  # until operating_reset_at, not a blind back-off
        calls = len(peer.calls)
        with pytest.raises(CrmUnavailable, match=r"blocks crm\.lead\.add"):
            await crm.create(Entity(kind="lead", title="second", origin="o-2"))
        assert len(peer.calls) == calls  # not asked again while blocked: that would only spend more
        assert await crm.find_by_origin("lead", "o-2") is None  # other methods keep working
        await crm.close()


async def test_the_guard_runs_right_before_a_create_is_sent_and_can_stop_it() -> None:
    class Lost(Exception):
        pass

    async def lost() -> None:
        raise Lost

    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100))
        with pytest.raises(Lost):
            await crm.create(Entity(kind="lead", title="T", origin="o-g"), guard=lost)
        with pytest.raises(Lost):
            await crm.add_activity(Activity(owner_kind="lead", owner_id="1", session_id="s", origin="x"), guard=lost)
        assert peer.calls == []
        await crm.close()


async def test_refusals_in_the_portals_own_shapes_not_found_and_access_denied() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100))
        assert await crm.get("lead", "999") is None  # {"error": "", "error_description": "Not found"}
        assert peer.answers[-1] == ("crm.lead.get", 400, "")
        peer.deny("crm.lead.add")
        with pytest.raises(CrmRejected, match="Access denied"):
            await crm.create(Entity(kind="lead", title="T", origin="o-d"))
        peer.deny("crm.duplicate.findbycomm")
        with pytest.raises(CrmRejected, match="Access denied"):
            await crm.find_by_comm(["+37126123456"], ["a@example.com"])
        await crm.close()


def _corpus(name: str) -> Any:
    path = CORPUS / "bitrix24" / name
    if not path.exists():
        pytest.skip(f"corpus not beside the repository: {path}")
    return msgspec.json.decode(path.read_bytes())


@pytest.mark.parametrize(
    ("file", "method"),
    [
        ("b24restdocs__crm.lead.add__error.json", "crm.lead.add"),
        ("b24restdocs__crm.activity.add__error.json", "crm.activity.add"),
        ("b24restdocs__crm.contact.list__error.json", "crm.contact.list"),
        ("b24restdocs__crm.duplicate.findbycomm__error.json", "crm.duplicate.findbycomm"),
    ],
)
async def test_the_documented_error_answers_are_refusals_never_retried_as_outages(file: str, method: str) -> None:
    body = _corpus(file)
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100, limit_retries=3, backoff=0.01))
        peer.script(method, 400, body)
        calls: dict[str, Any] = {
            "crm.lead.add": lambda: crm.create(Entity(kind="lead", title="T", origin="o")),
            "crm.activity.add": lambda: crm.add_activity(Activity(owner_kind="lead", owner_id="1", session_id="s", origin="o")),
            "crm.contact.list": lambda: crm.find_by_origin("contact", "o"),
            "crm.duplicate.findbycomm": lambda: crm.find_by_comm(["+37126123456"], []),
        }
        with pytest.raises(Exception) as refused:
            await calls[method]()
        assert not isinstance(refused.value, CrmUnavailable)
        assert str(body["error_description"]).rstrip(".") in str(refused.value)
        assert peer.methods() == [method]  # asked once
        await crm.close()


async def test_the_documented_success_answers_are_read() -> None:
    async with running_bitrix24() as peer:
        crm = Bitrix24Backend(Bitrix24Client(webhook=peer.webhook, rate=100))
        peer.script("crm.lead.add", 200, _corpus("b24restdocs__crm.lead.add__response.json"))
        assert await crm.create(Entity(kind="lead", title="T", origin="o")) == "3465"
        peer.script("crm.activity.add", 200, _corpus("b24restdocs__crm.activity.add__response.json"))
        assert await crm.add_activity(Activity(owner_kind="lead", owner_id="1", session_id="s", origin="o")) == "999"
        peer.script("crm.contact.list", 200, _corpus("b24restdocs__crm.contact.list__response.json"))
        found = await crm.find_by_origin("contact", "o")
        assert found is not None and (found.id, found.assigned_by) == ("73", "1")  # the oldest of them
        peer.script("crm.duplicate.findbycomm", 200, _corpus("b24restdocs__crm.duplicate.findbycomm__response.json"))
        assert await crm.find_by_comm(["+37126123456"], []) == Matches(contacts=["275", "2297"])
        # Element not found in the ERROR_CORE shape (crm.item.* and newer methods) is not found, too.
        peer.script("crm.lead.get", 400, _corpus("b24restdocs__crm.quote.delete__ERROR_CORE.json"))
        assert await crm.get("lead", "1") is None
        await crm.close()
