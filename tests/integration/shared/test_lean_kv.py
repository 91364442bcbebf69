"""The buckets and publishes of ``openlines.bus.JetStream`` (decision 042) answer as nats-py's own do.

Each case runs the same calls on a bucket opened by nats-py's plain JetStream context and on one opened
by ours, against a real nats-server, and compares what comes back: values, revisions, the errors and
their kinds. Then what only the lean path has: its own timeout and the refusal of a hostile key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    BadRequestError,
    InvalidKeyError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from peers.natsproxy import NatsProxy
from support.timing import wait_for

from openlines import bus, kv, subjects


async def _both(nc: Any, bucket: str) -> tuple[Any, Any]:
    """The same new bucket opened by nats-py's JetStream context and by ours."""
    plain = JetStreamContext(nc, timeout=5.0)
    made = await plain.create_key_value(bucket=bucket, history=1)
    ours = await nc.jetstream(timeout=5.0).key_value(bucket)
    assert not isinstance(made, kv.KeyValue) and isinstance(ours, kv.KeyValue)
    return made, ours


async def _outcome(call: Any) -> tuple[str, Any]:
    try:
        got = await call
    except Exception as exc:  # the kind of error is the outcome compared
        return "raised", type(exc).__name__
    if hasattr(got, "revision"):
        return "entry", (got.key, got.value, got.revision, got.operation)
    return "value", got


async def test_every_call_answers_as_nats_py_does(nc: Any) -> None:
    plain, ours = await _both(nc, "leancmp")
    steps: list[tuple[str, Any]] = [
        ("get absent", lambda b, k: b.get(k)),
        ("create", lambda b, k: b.create(k, b"one")),
        ("create again", lambda b, k: b.create(k, b"two")),
        ("get", lambda b, k: b.get(k)),
        ("update on a wrong revision", lambda b, k: b.update(k, b"two", last=1_000_000)),
        ("put", lambda b, k: b.put(k, b"three")),
        ("put empty", lambda b, k: b.put(k, b"")),
        ("get empty", lambda b, k: b.get(k)),
        ("delete", lambda b, k: b.delete(k)),
        ("get deleted", lambda b, k: b.get(k)),
        ("update deleted on revision 0", lambda b, k: b.update(k, b"x", last=0)),
        ("create over the delete marker", lambda b, k: b.create(k, b"four")),
        ("get recreated", lambda b, k: b.get(k)),
        ("purge", lambda b, k: b.purge(k)),
        ("create over the purge marker", lambda b, k: b.create(k, b"five")),
    ]
    seen: dict[str, list[tuple[str, Any]]] = {"plain": [], "ours": []}
    for name, step in steps:
        for label, bucket, key in (("plain", plain, "p.key"), ("ours", ours, "o.key")):
            kind, got = await _outcome(step(bucket, key))
            seen[label].append((name, kind, _key_free(got)))
    # Revisions differ between the two keys (one stream); compare them as steps apart from the first write.
    assert _relative(seen["ours"]) == _relative(seen["plain"])
    # And spelled out, the answers the router's compare-and-set depends on:
    ours_by = {name: (kind, got) for name, kind, got in seen["ours"]}
    assert ours_by["get absent"] == ("raised", "KeyNotFoundError")
    assert ours_by["create again"] == ("raised", "KeyWrongLastSequenceError")
    assert ours_by["update on a wrong revision"] == ("raised", "KeyWrongLastSequenceError")
    assert ours_by["get deleted"] == ("raised", "KeyNotFoundError")
    assert ours_by["get empty"][1][0] is None  # an empty value reads as None, as nats-py gives it
    assert ours_by["create over the delete marker"][0] == "value"
    assert ours_by["create over the purge marker"][0] == "value"
    entry = await ours.get("o.key")
    assert entry.value == b"five" and entry.revision == ours_by["create over the purge marker"][1]


def _key_free(got: Any) -> Any:
    if isinstance(got, tuple) and len(got) == 4:
        return got[1:]  # (value, revision, operation): the key is the label's own
    return got


def _relative(rows: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """Revisions as their order among this key's writes, so two keys' stories compare."""
    revisions: list[int] = []
    for _, kind, got in rows:
        rev = got if kind == "value" and isinstance(got, int) and not isinstance(got, bool) else None
        if kind == "entry":
            rev = got[1]
        if rev is not None and rev not in revisions:
            revisions.append(rev)
    order = {rev: i for i, rev in enumerate(sorted(revisions))}

    def norm(kind: str, got: Any) -> Any:
        if kind == "value" and isinstance(got, int) and not isinstance(got, bool):
            return ("rev", order[got])
        if kind == "entry":
            return (got[0], ("rev", order[got[1]]), got[2])
        return got

    return [(name, kind, norm(kind, got)) for name, kind, got in rows]


async def test_a_compare_and_set_written_by_another_client_is_refused(nc: Any) -> None:
    plain, ours = await _both(nc, "leancas")
    first = await ours.create("k", b"1")
    second = await plain.update("k", b"2", last=first)  # another writer got there first
    with pytest.raises(KeyWrongLastSequenceError):
        await ours.update("k", b"3", last=first)
    assert (await ours.get("k")).value == b"2"
    assert await ours.update("k", b"3", last=second) > second
    assert (await plain.get("k")).value == b"3"


@pytest.mark.parametrize("key", ["", ".a", "a.", "a b", "a.*", "a.>", "a\n", "a\r\nPUB x 1", "ключ"])
async def test_a_hostile_key_is_refused_and_nothing_is_written(nc: Any, key: str) -> None:
    _, ours = await _both(nc, "leankeys")
    for call in (ours.get(key), ours.put(key, b"x"), ours.create(key, b"x"), ours.update(key, b"x", last=1)):
        with pytest.raises(InvalidKeyError):
            await call
    assert (await ours.status()).values == 0


async def test_a_request_nobody_answers_ends_after_its_timeout(nc: Any) -> None:
    js = nc.jetstream(timeout=0.3)
    silent = await nc.subscribe("test.lean.silent")  # takes the request, never answers
    await nc.flush()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(NatsTimeoutError):
            await js.answers.ask("test.lean.silent", b"?", timeout=0.3)
        took = asyncio.get_running_loop().time() - started
        assert 0.3 <= took < 0.3 + 2 * bus.AckInbox.TICK + 1.0, took
        assert js.answers._waiting == {} and js.answers._due == {}  # nothing kept of it
    finally:
        await silent.unsubscribe()


async def test_no_stream_and_no_responder_are_told_apart_at_once(nc: Any) -> None:
    js = nc.jetstream(timeout=30.0)
    with pytest.raises(NoStreamResponseError):  # a publish no stream takes: nats-py's js.publish raises the same
        await asyncio.wait_for(js.publish("test.lean.nostream", b"x"), 10)
    with pytest.raises(NoRespondersError):  # a request nobody listens to
        await asyncio.wait_for(js.answers.ask("test.lean.nobody", b"?", timeout=30.0), 10)


async def test_a_publish_the_stream_refuses_raises_the_api_error_of_nats_py(nc: Any) -> None:
    plain = JetStreamContext(nc, timeout=5.0)
    ours = nc.jetstream(timeout=5.0)
    subject = subjects.inbound("webchat", "acc", "visitor")
    errors = []
    for js in (plain, ours):
        with pytest.raises(BadRequestError) as refused:  # stored only if OL_OUT takes it: it does not
            await js.publish(subject, b"{}", stream=subjects.STREAM_OUT)
        errors.append((type(refused.value), refused.value.err_code))
    assert errors[0] == errors[1]
    ack = await ours.publish(subject, b"{}", stream=subjects.STREAM_IN, headers={"Nats-Msg-Id": "lean-1"})
    again = await ours.publish(subject, b"{}", stream=subjects.STREAM_IN, headers={"Nats-Msg-Id": "lean-1"})
    assert ack.stream == subjects.STREAM_IN and again.seq == ack.seq and again.duplicate


async def test_a_lost_connection_fails_the_lean_requests_at_once(nc: Any, nats_server: Any) -> None:
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    client = await bus.connect(proxy.url, "test-lean-lost", first_attempts=3)
    silent = await nc.subscribe("test.lean.lost")
    await nc.flush()
    try:
        js = client.jetstream(timeout=600.0)
        asked = asyncio.create_task(js.answers.ask("test.lean.lost", b"?", timeout=600.0))
        await client.flush()
        await wait_for(lambda: silent.pending_msgs >= 1, what="the request at the silent responder")
        assert proxy.drop_connections() >= 1
        with pytest.raises(NatsTimeoutError):
            await asyncio.wait_for(asked, 30)  # not the request's own 600 s (decision 035)
    finally:
        await silent.unsubscribe()
        await client.close()
        await proxy.stop()


async def test_buckets_the_services_context_makes_or_opens_are_lean_and_one_with_its_own_prefix_keeps_nats_py(
    nc: Any,
) -> None:
    js = nc.jetstream(timeout=5.0)
    made = await js.create_key_value(bucket="leanmade", history=1)
    by_config = await js.create_key_value(js_api.KeyValueConfig(bucket="leanmade2", history=1))
    opened = await js.key_value("leanmade")
    for bucket in (made, by_config, opened):
        assert isinstance(bucket, kv.KeyValue)
    revision = await made.put("k", b"v")
    assert (await opened.get("k")).revision == revision
    assert (await by_config.create("k", b"w")) == 1  # its own bucket (its own stream): the key is new there

    own_prefix = nc.jetstream(timeout=5.0, prefix="$JS.API")  # the lean path speaks to the default prefix only
    kept = await own_prefix.key_value("leanmade")
    assert not isinstance(kept, kv.KeyValue)
    assert (await kept.get("k")).value == b"v"
    ack = await own_prefix.publish(subjects.inbound("webchat", "acc", "v"), b"{}", stream=subjects.STREAM_IN)
    assert ack.stream == subjects.STREAM_IN
