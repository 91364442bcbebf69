"""The views routing decides on, kept per line and operator (router.shell.capacity): made again only when an
operator's state or the line's queue changed, and forgotten when an apply removes the pair."""

from __future__ import annotations

from typing import Any

from openlines.lines import LineConfig, QueueConfig
from openlines.state import OperatorState
from router.lines_cache import LinesCache
from router.operators_cache import OperatorsCache
from router.shell.base import Shared
from router.shell.capacity import Capacity


def _line(line_id: str, *operators: str) -> LineConfig:
    return LineConfig(id=line_id, name=line_id, queue=QueueConfig(operators=list(operators)))


def _capacity(*lines: LineConfig, online: tuple[str, ...]) -> tuple[Capacity, LinesCache, OperatorsCache]:
    none: Any = None  # views() reads only the two in-memory copies: no connection is made
    cache, ops = LinesCache(none), OperatorsCache(none)
    cache.lines = {line.id: line for line in lines}
    for i, op in enumerate(online):
        ops.put(op, OperatorState(id=op, status="online"), i + 1)
    ops.loaded.set()
    return Capacity(Shared(none, none, none, cache, ops, none)), cache, ops


async def test_a_view_is_made_again_only_for_an_operator_whose_state_changed() -> None:
    support = _line("support", "anna", "boris")
    cap, _, ops = _capacity(support, online=("anna", "boris"))
    first = await cap.views(support)
    assert [v.id for v in first] == ["anna", "boris"] and [v.status for v in first] == ["online", "online"]
    again = await cap.views(support)
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]
    ops.put("boris", OperatorState(id="boris", status="away"), 9)
    changed = await cap.views(support)
    assert changed[0] is first[0] and changed[1] is not first[1] and changed[1].status == "away"


async def test_an_apply_that_removes_an_operator_or_a_line_forgets_their_views() -> None:
    support, sales = _line("support", "anna", "boris"), _line("sales", "anna", "vera")
    cap, cache, _ = _capacity(support, sales, online=("anna", "boris", "vera"))
    await cap.views(support)
    await cap.views(sales)
    assert set(cap._views) == {("support", "anna"), ("support", "boris"), ("sales", "anna"), ("sales", "vera")}
    smaller = _line("support", "anna")  # boris leaves the line, and the sales line is removed
    cache.lines = {"support": smaller}
    assert [v.id for v in await cap.views(smaller)] == ["anna"]
    assert set(cap._views) == {("support", "anna")}
