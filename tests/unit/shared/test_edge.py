"""The gateways' edge kit (openlines.edge): the size-limited read at its boundary, counted refusals, drain on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from openlines.admission import Admission, Limits
from openlines.edge import BadUpload, Edge, TooLarge, read_body, read_file_part

LIMIT = 1000


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[tuple[int, str]]]]:
    counted: list[tuple[int, str]] = []
    edge = Edge("test", lambda status, code: counted.append((status, code)))

    async def take(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, LIMIT)
        except TooLarge as exc:
            return edge.refuse(413, "too_large", str(exc))
        return web.json_response({"size": len(body)})

    app = web.Application()
    app.router.add_post("/", take)
    async with TestClient(TestServer(app)) as c:
        yield c, counted


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused_with_413_counted(
    client: tuple[TestClient[web.Request, web.Application], list[tuple[int, str]]],
) -> None:
    c, counted = client
    ok = await c.post("/", data=b"x" * LIMIT)
    assert ok.status == 200 and (await ok.json()) == {"size": LIMIT}
    assert counted == []
    over = await c.post("/", data=b"x" * (LIMIT + 1))
    assert over.status == 413
    assert (await over.json()) == {"error": "too_large", "detail": f"body is larger than {LIMIT} bytes"}
    assert counted == [(413, "too_large")]


async def test_a_chunked_body_without_a_length_is_cut_off_past_the_limit(
    client: tuple[TestClient[web.Request, web.Application], list[tuple[int, str]]],
) -> None:
    c, counted = client

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 400

    over = await c.post("/", data=chunks())
    assert over.status == 413
    assert counted == [(413, "too_large")]


async def test_drain_waits_for_work_in_flight_and_says_stopping() -> None:
    edge = Edge("test", lambda _s, _c: None)
    release = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> None:
        with edge.working():
            await release.wait()
        finished.set()

    task = asyncio.create_task(work())
    await asyncio.sleep(0)  # the work has begun
    assert edge.in_flight == 1
    drain = asyncio.create_task(edge.drain(timeout=60.0))
    await asyncio.sleep(0)
    assert edge.stopping and not drain.done()
    release.set()
    assert await drain is True
    assert finished.is_set() and edge.in_flight == 0
    await task


async def test_drain_gives_up_after_its_timeout_with_work_still_in_flight() -> None:
    edge = Edge("test", lambda _s, _c: None)
    with edge.working():
        assert await edge.drain(timeout=0.01) is False
    assert edge.in_flight == 0


async def test_a_request_the_gate_turns_away_is_answered_503_with_retry_after_and_counted() -> None:
    counted: list[tuple[int, str]] = []
    edge = Edge("test", lambda status, code: counted.append((status, code)))
    gate = Admission("unit-edge", Limits(max_in_flight=1, max_waiting=0, wait=1.0, retry_after=4))

    async def work() -> web.Response:
        return web.json_response({"ok": True})

    admitted = await edge.admitted(gate, work)
    assert admitted.status == 200 and counted == []
    await gate.acquire()  # the one slot is taken
    refused = await edge.admitted(gate, work)
    assert refused.status == 503 and refused.headers["Retry-After"] == "4"
    assert counted == [(503, "overloaded")]
    gate.release()


async def test_admitted_work_gets_its_arguments_and_gives_its_slot_back_whatever_it_ends_with() -> None:
    edge = Edge("test", lambda _status, _code: None)
    gate = Admission("unit-edge-args", Limits(max_in_flight=1, max_waiting=0))

    async def work(text: str, status: int) -> web.Response:
        assert gate.in_flight == 1
        if status >= 500:
            raise RuntimeError(text)
        return web.Response(text=text, status=status)

    answer = await edge.admitted(gate, work, "fine", 202, account="a")
    assert answer.status == 202 and answer.text == "fine" and gate.in_flight == 0
    with pytest.raises(RuntimeError):
        await edge.admitted(gate, work, "broken", 500, account="a")
    assert gate.in_flight == 0


@pytest.fixture
async def uploads() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def take(request: web.Request) -> web.Response:
        try:
            name, mime, data = await read_file_part(request, LIMIT)
        except TooLarge as exc:
            return web.json_response({"refused": 413, "detail": str(exc)})
        except BadUpload as exc:
            return web.json_response({"refused": 400, "detail": str(exc)})
        return web.json_response({"name": name, "mime": mime, "size": len(data)})

    app = web.Application()
    app.router.add_post("/", take)
    async with TestClient(TestServer(app)) as c:
        yield c


def _form(size: int, field: str = "file", name: str = "../../etc/in voice.pdf") -> FormData:
    form = FormData()
    form.add_field("note", "the file is below")
    form.add_field(field, b"z" * size, filename=name, content_type="Application/PDF; charset=x")
    return form


async def test_a_file_part_of_exactly_the_limit_is_read_with_a_clean_name_and_one_byte_more_is_too_large(
    uploads: TestClient[web.Request, web.Application],
) -> None:
    ok = await (await uploads.post("/", data=_form(LIMIT))).json()
    assert ok["size"] == LIMIT and ok["mime"] == "application/pdf"
    assert "/" not in ok["name"] and ok["name"].endswith(".pdf")
    assert await (await uploads.post("/", data=_form(LIMIT + 1))).json() == {
        "refused": 413,
        "detail": f"body is larger than {LIMIT} bytes",
    }


async def test_an_upload_without_the_file_field_or_not_multipart_is_a_bad_upload(
    uploads: TestClient[web.Request, web.Application],
) -> None:
    other = await (await uploads.post("/", data=_form(10, field="attachment"))).json()
    assert other == {"refused": 400, "detail": "no multipart field named file"}
    plain = await (await uploads.post("/", data=b"just bytes", headers={"Content-Type": "multipart/form-data"})).json()
    assert plain == {"refused": 400, "detail": "the upload is not valid multipart/form-data"}
