"""The router's compare-and-set that starts from a value already in hand: one round trip when
it is current, never a lost or wrong write when it is not (real nats-server KV)."""

from __future__ import annotations

from typing import Any

import msgspec

from openlines import bus
from openlines.state import OperatorState
from router.shell.kv import cas


def _with(st: OperatorState | None, sid: str) -> OperatorState:
    cur = st or OperatorState(id="anna")
    return msgspec.structs.replace(cur, sessions=[*cur.sessions, sid])


async def test_a_current_known_value_is_written_on_its_revision(nc: Any, nats_server: Any) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    rev = await b.operators.put("anna", msgspec.json.encode(OperatorState(id="anna")))
    new, written = await cas(
        b.operators, "anna", OperatorState, lambda st: _with(st, "s1"), known=(OperatorState(id="anna"), rev)
    )
    assert new is not None and new.sessions == ["s1"] and written == rev + 1
    stored, _ = await bus.kv_get(b.operators, "anna", OperatorState)
    assert stored == new


async def test_a_stale_known_value_is_decided_again_on_what_is_stored(nc: Any, nats_server: Any) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    old = await b.operators.put("anna", msgspec.json.encode(OperatorState(id="anna")))
    await b.operators.put("anna", msgspec.json.encode(OperatorState(id="anna", sessions=["other"])))  # someone else wrote
    new, _ = await cas(b.operators, "anna", OperatorState, lambda st: _with(st, "s1"), known=(OperatorState(id="anna"), old))
    assert new is not None and new.sessions == ["other", "s1"]  # nothing the other writer did is lost
    stored, _ = await bus.kv_get(b.operators, "anna", OperatorState)
    assert stored == new


async def test_known_absent_creates_and_an_existing_key_is_not_overwritten(nc: Any, nats_server: Any) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    fresh = OperatorState(id="anna", sessions=["first"])
    created, _ = await cas(b.operators, "anna", OperatorState, lambda cur: fresh if cur is None else None, known=(None, None))
    assert created == fresh
    again = OperatorState(id="anna", sessions=["second"])
    found, rev = await cas(b.operators, "anna", OperatorState, lambda cur: again if cur is None else None, known=(None, None))
    assert found == fresh and rev is not None  # it existed: the first one stays, as stored


async def test_no_change_decided_on_a_stale_value_is_checked_on_what_is_stored(nc: Any, nats_server: Any) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    rev = await b.operators.put("anna", msgspec.json.encode(OperatorState(id="anna", sessions=["s1"])))
    await b.operators.put("anna", msgspec.json.encode(OperatorState(id="anna")))  # s1 released meanwhile

    def add_once(st: OperatorState | None) -> OperatorState | None:
        return None if st is not None and "s1" in st.sessions else _with(st, "s1")

    known = (OperatorState(id="anna", sessions=["s1"]), rev)
    new, _ = await cas(b.operators, "anna", OperatorState, add_once, known=known)
    assert new is not None and new.sessions == ["s1"]
    stored, _ = await bus.kv_get(b.operators, "anna", OperatorState)
    assert stored is not None and stored.sessions == ["s1"]
