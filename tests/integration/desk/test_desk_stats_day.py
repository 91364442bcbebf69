"""A scripted day of traffic with known answers: every figure of the statistics, per line and per operator,
through the API and the CSV export of two desk replicas folding the same events (real NATS, real HTTP)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from support.desk import desk_with_router, running_desk
from support.desk_admin import LINES, bearer, conforms, http_session, make_token, sign_in
from support.stats_day import DAY, EXPECTED_OPERATORS, EXPECTED_SALES, EXPECTED_SUPPORT, check_figures, events, publish_day
from support.timing import wait_for

from desk.api import PREFIX
from desk.stats import Aggregator, Trace, read_days, summarise
from openlines import subjects
from openlines.bus import kv_get
from openlines.envelopes import encode
from openlines.runner import Service


@pytest.fixture
async def desks(nc: Any, nats_server: Any) -> AsyncIterator[tuple[Service[Any], Service[Any]]]:
    async with desk_with_router(nc, nats_server.url, lines=LINES) as one, running_desk(nats_server.url) as two:
        yield one, two


async def _settled(http: aiohttp.ClientSession, token: str, **params: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await http.get(f"{PREFIX}/stats", headers=bearer(token), params={"from": DAY, "to": DAY, **params})
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body if body["behind"] == 0 and body["lines"] and body["lines"][0]["sessions"] else None

    return await wait_for(done, timeout=30, what="every event of the scripted day folded in")


async def test_a_scripted_day_gives_the_known_figures_on_every_replica(nc: Any, desks: Any) -> None:
    one, two = desks
    token = await make_token(nc, "supervisor")
    await publish_day(nc)
    # Both replicas share one consumer: neither folds an event the other did.
    info = await nc.jetstream().consumer_info(subjects.STREAM_EVT, subjects.DESK_STATS_CONSUMER)
    assert info.config.max_ack_pending == 1
    for svc in (one, two):
        async with http_session(svc) as http:
            body = await _settled(http, token)
            doc = await (await http.get(f"{PREFIX}/openapi.json")).json()
            conforms(doc, "stats", body)
            lines = {x["line_id"]: x for x in body["lines"]}
            check_figures(lines["support"], EXPECTED_SUPPORT)
            check_figures(lines["sales"], EXPECTED_SALES)
            ops = {o["operator_id"]: o for o in lines["support"]["operators"]}
            assert sorted(ops) == ["anna", "boris"]
            for op_id, want in EXPECTED_OPERATORS.items():
                check_figures(ops[op_id], want)
            assert ops["anna"]["name"] == "Anna Petrova"

    async with http_session(one) as http:
        # One line asked for; an unknown line is a 404, not an empty answer.
        only = await _settled(http, token, line="sales")
        assert [x["line_id"] for x in only["lines"]] == ["sales"]
        unknown = await http.get(f"{PREFIX}/stats", headers=bearer(token), params={"line": "nope"})
        assert unknown.status == 404
        # The day after counts none of it; a range of a few hours counts the sessions opened in them.
        after = await _settled_empty(http, token, {"from": "2026-03-03", "to": "2026-03-03"})
        assert all(x["sessions"] == 0 for x in after["lines"])
        morning = await (
            await http.get(
                f"{PREFIX}/stats",
                headers=bearer(token),
                params={"from": f"{DAY}T09:00:00", "to": f"{DAY}T10:00:00", "line": "support"},
            )
        ).json()
        assert morning["lines"][0]["sessions"] == 2 and morning["lines"][0]["by_channel"] == {"telegram": 1, "webchat": 1}
        # The same day in Moscow (UTC+3) starts at 21:00 UTC the evening before: s8 is in, s7 (23:50 UTC) is not.
        moscow = await _settled(http, token, line="support", tz="Europe/Moscow")
        assert moscow["tz"] == "Europe/Moscow"
        local = moscow["lines"][0]
        assert (local["sessions"], local["answered"], local["by_day"]) == (7, 5, {DAY: 7})
        assert {h: n for h, n in enumerate(local["by_hour"]) if n} == {2: 1, 12: 2, 13: 2, 17: 2}
        for zone in ("Mars/Olympus", "Europe", "../../etc/passwd", "zone.tab"):
            bad = await http.get(f"{PREFIX}/stats", headers=bearer(token), params={"tz": zone})
            assert bad.status == 400 and "IANA" in (await bad.json())["detail"], zone

        # The CSV a supervisor downloads: a row per line, a row per operator, the same figures.
        await sign_in(http, "anna")
        r = await http.get("/stats.csv", params={"from": DAY, "to": DAY})
        assert r.status == 200 and r.content_type == "text/csv"
        assert "attachment" in r.headers["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(await r.text())))
        # anna supervises support only (the sales queue does not list her)
        assert [(x["line_id"], x["operator_id"]) for x in rows] == [("support", ""), ("support", "anna"), ("support", "boris")]
        line = rows[0]
        assert (line["sessions"], line["answered"], line["missed"], line["open_unanswered"]) == ("7", "4", "1", "1")
        assert (line["first_response_median_seconds"], line["first_response_p90_seconds"]) == ("30.0", "90.0")
        assert (line["resolution_median_seconds"], line["resolution_p90_seconds"]) == ("645.0", "1800.0")
        assert (line["rating_avg"], line["offers_missed"], line["offers_passed"], line["sla_met_percent"]) == (
            "3.667",
            "1",
            "1",
            "83.3",  # 5 of 6 chats (spam aside) passed no target
        )
        assert (line["chats_webchat"], line["chats_telegram"], line["chats_vk"]) == ("4", "2", "1")
        boris = rows[2]
        assert (boris["operator_name"], boris["first_response_median_seconds"], boris["sla_met_percent"]) == (
            "Boris Ivanov",
            "55.0",
            "50.0",
        )
        refused = await http.get("/stats.csv", params={"from": DAY, "to": DAY, "line": "sales"})
        assert refused.status == 403


async def _settled_empty(http: aiohttp.ClientSession, token: str, params: dict[str, str]) -> dict[str, Any]:
    r = await http.get(f"{PREFIX}/stats", headers=bearer(token), params=params)
    assert r.status == 200
    body: dict[str, Any] = await r.json()
    return body


async def test_a_desk_started_after_the_events_folds_them_all(nc: Any, nats_server: Any) -> None:
    """The consumer starts at the beginning of OL_EVT: a desk deployed onto a running system counts its history."""
    from support import apply_lines

    await apply_lines(nc, LINES)
    await publish_day(nc)
    token = await make_token(nc, "admin")
    async with running_desk(nats_server.url) as svc, http_session(svc) as http:
        body = await _settled(http, token, line="support")
        check_figures(body["lines"][0], EXPECTED_SUPPORT)


async def test_events_folded_again_after_a_crash_count_once_in_the_real_buckets(nc: Any) -> None:
    """Redelivery as after a replica died before its ack: every event folded a second time, and one folded
    again after the replica wrote its day but not its trace, leaves the stored figures as they were."""
    agg = Aggregator(nc.jetstream())
    await agg.open()
    assert agg.days is not None and agg.traces is not None
    days_kv, traces_kv = agg.days, agg.traces
    script = [(seq, e, encode(e)) for seq, e in enumerate(events(), start=1)]
    start = datetime.fromisoformat(f"{DAY}T00:00:00+00:00")
    end = start + timedelta(days=1)

    async def stored() -> dict[str, Any]:
        (line,) = summarise(await read_days(days_kv, ["support"], start, end), start, end, ["support"])
        out: dict[str, Any] = msgspec.to_builtins(line)
        return out

    try:
        for seq, _e, data in script:
            await agg.fold_one(data, seq)
        first = await stored()
        check_figures(first, EXPECTED_SUPPORT)
        for seq, _e, data in script:
            await agg.fold_one(data, seq)
        assert await stored() == first

        # s5's trace set back to before its close: the day holds the close, the trace does not.
        seq, _e, data = next(x for x in script if x[1].session_id == "days5" and x[1].kind == "session_closed")
        trace, _ = await kv_get(traces_kv, "days5", Trace)
        assert trace is not None and trace.closed
        await traces_kv.put("days5", msgspec.json.encode(msgspec.structs.replace(trace, closed=False, seq=seq - 1)))
        await agg.fold_one(data, seq)
        assert await stored() == first
        healed, _ = await kv_get(traces_kv, "days5", Trace)
        assert healed is not None and healed.closed and healed.seq == seq
    finally:
        await agg.close()
