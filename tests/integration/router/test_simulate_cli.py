"""`openlines lines simulate`: the command's output and exit codes, and the simulation against the real router."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import apply_lines, inbound, line_block, operators_block, outbound_for, publish, running_router, session_of
from support.timing import wait_for

from openlines import bus
from openlines.commands import SetStatus, call
from openlines.envelopes import utcnow
from openlines.lines import parse
from openlines.state import OperatorState, Session
from router.core.simulate import OperatorSim, simulate

LINES = """
[operators.anna]
name = "Anna"
[operators.boris]
name = "Boris"
[operators.vera]
name = "Vera"

[[lines]]
id = "support"
name = "Customer support"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
operators = ["anna", "boris", "vera"]
max_chats_per_operator = 2
[lines.hours]
enabled = true
timezone = "Europe/Riga"
weekly = { mon = ["09:00-18:00"], tue = ["09:00-18:00"], wed = ["09:00-18:00"], thu = ["09:00-18:00"], fri = ["09:00-18:00"] }
outside = "hold_until_open"
[lines.auto_replies]
welcome = "Hello {client_name}!"
outside_hours = "We are closed, {client_name}."
"""


def simulate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openlines", "lines", "simulate", *args], capture_output=True, text=True, timeout=60
    )


def lines_file(tmp_path: Path, text: str = LINES) -> str:
    path = tmp_path / "lines.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- the command


def test_human_output_is_a_numbered_list_of_steps(tmp_path: Path) -> None:
    done = simulate_cli(
        lines_file(tmp_path),
        "--at=2026-11-24T21:30+02:00",
        "--channel=webchat/demo",
        "--operators=anna:online:2,boris:away,vera:online:0:0:5m",
        "--name=Ivan",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "1. webchat/demo feeds line support (Customer support)"
    assert out[1] == "2. Tue 2026-11-24 21:30 Europe/Riga: outside business hours (opens Wed 09:00)"
    assert out[2].startswith("3. outside = hold_until_open: the chat is held")
    assert out[3] == '4. auto-reply (outside_hours of line support): "We are closed, Ivan."'
    dist = next(line for line in out if "when it opens" in line)
    assert "anna skipped (full: 2 open chat(s)" in dist and "boris skipped (away)" in dist
    assert dist.endswith("vera gets the offer (the only free operator)")


def test_json_output_carries_the_outcome(tmp_path: Path) -> None:
    done = simulate_cli(
        lines_file(tmp_path), "--at", "2026-11-24T12:00+02:00", "--channel", "webchat/demo", "--returning", "--json"
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["line"] == "support" and outcome["open"] is True
    assert outcome["offered_to"] == ["anna"]  # default: every operator online, no chats
    assert outcome["auto_replies"] == []  # returning client, welcome only on first contact
    assert outcome["wait_seconds"] == 45 and outcome["next_on_no_answer"] == ["boris"]
    assert outcome["steps"][0]["kind"] == "line"


def test_time_without_offset_is_read_as_utc_and_said_so(tmp_path: Path) -> None:
    done = simulate_cli(lines_file(tmp_path), "--at", "2026-11-24T19:30", "--channel", "webchat/demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "(--at has no UTC offset: read as UTC)"
    assert out[2].startswith("2. Tue 2026-11-24 21:30 Europe/Riga: outside business hours")


def test_unbound_channel_is_a_valid_result_with_exit_0(tmp_path: Path) -> None:
    done = simulate_cli(lines_file(tmp_path), "--channel", "telegram/bot")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1. telegram/bot feeds no line: dead letter (a dead_letter event, the message goes nowhere)"


def test_bad_file_fails_like_validate_with_exit_2(tmp_path: Path) -> None:
    bad = lines_file(tmp_path, LINES + "\n[lines.bogus]\nx = 1\n")
    done = simulate_cli(bad, "--channel", "webchat/demo")
    validate = subprocess.run(
        [sys.executable, "-m", "openlines", "lines", "validate", bad], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == validate.returncode == 2
    assert done.stderr == validate.stderr and done.stderr.startswith("invalid line configuration:")
    missing = simulate_cli(str(tmp_path / "nope.toml"), "--channel", "webchat/demo")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_malformed_arguments_are_usage_errors(tmp_path: Path) -> None:
    path = lines_file(tmp_path)
    for args in (
        ["--channel", "webchat"],
        ["--channel", "webchat/demo", "--at", "tomorrow"],
        ["--channel", "webchat/demo", "--operators", "anna:busy"],
        ["--channel", "webchat/demo", "--operators", "anna:online:1:2"],
        ["--channel", "webchat/demo", "--waiting", "-1"],
    ):
        done = simulate_cli(path, *args)
        assert done.returncode == 2, args
        assert "simulate: error:" in done.stderr, done.stderr


# ---------------------------------------------- the simulation = the real router

OPS = operators_block("anna", "boris", "vera")


async def _operators(nc: Any, ids: list[str]) -> list[OperatorSim]:
    """The operators as the router's KV holds them now."""
    b = await bus.Buckets(nc.jetstream()).open()
    out = []
    for op_id in ids:
        st, _ = await bus.kv_get(b.operators, op_id, OperatorState)
        if st is None:
            continue
        out.append(
            OperatorSim(
                id=op_id,
                status=st.status,
                open_chats=len(st.sessions),
                unanswered_chats=len([s for s in st.sessions if s not in st.answered]),
                last_assigned_at=st.last_assigned_at,
            )
        )
    return out


async def _settled(nc: Any, visitor: str, *, waits: bool, entry: str = "support") -> Session:
    async def probe() -> Session | None:
        s = await session_of(nc, visitor, line=entry)
        if s is None:
            return None
        return s if (s.status == "waiting" if waits else bool(s.operator_id or s.offered_to)) else None

    settled: Session = await wait_for(probe, timeout=15, what=f"{visitor}'s session settled")
    return settled


async def _auto_texts(nc: Any, visitor: str, count: int) -> list[str]:
    async def probe() -> list[str] | None:
        texts = [o.text for o in await outbound_for(nc, visitor) if o.auto]
        return texts if len(texts) >= count else None

    return await wait_for(probe, timeout=15, what=f"{count} auto-replies to {visitor}") if count else []


async def _check(nc: Any, text: str, visitor: str, name: str, ops: list[str]) -> None:
    """Simulate from the router's own state, then let the router do it: the same line, operator(s), auto-replies."""
    cfg = parse(text)
    predicted = simulate(
        cfg, at=utcnow(), channel="webchat", account="demo", operators=await _operators(nc, ops), client_name=name
    )
    await publish(nc, inbound(visitor, "hello", "m1", name=name))
    session = await _settled(nc, visitor, waits=predicted.waits)
    assert session.line_id == predicted.line
    if predicted.waits:
        assert session.status == "waiting" and not session.operator_id
    elif len(predicted.offered_to) > 1:
        assert sorted(session.offered_to) == sorted(predicted.offered_to)
    else:
        assert [session.operator_id] == predicted.offered_to
    assert await _auto_texts(nc, visitor, len(predicted.auto_replies)) == predicted.auto_replies


async def test_simulation_matches_the_router_for_round_robin_with_a_welcome(nc: Any, nats_server: Any) -> None:
    text = OPS + line_block(operators='"anna", "boris", "vera"', replies='welcome = "Hello {client_name}, this is {line_name}."')
    await apply_lines(nc, text)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await call(nc, "status", SetStatus(operator_id="vera", status="away"))
        await _check(nc, text, "v1", "Ivan", ["anna", "boris", "vera"])
        # The second chat meets the real last_assigned_at of the first one's operator.
        await _check(nc, text, "v2", "Olga", ["anna", "boris", "vera"])


async def test_simulation_matches_the_router_for_an_out_of_hours_redirect(nc: Any, nats_server: Any) -> None:
    never = 'days_off = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'
    text = (
        OPS
        + line_block(
            operators='"anna"',
            hours=f'enabled = true\n{never}\noutside = "redirect"\nredirect_line = "night"',
            replies='outside_hours = "Closed, {client_name}: the night shift answers."',
        )
        + line_block("night", account="night", operators='"vera", "boris"', queue='mode = "all"')
    )
    await apply_lines(nc, text)
    async with running_router(nats_server.url):
        for op in ("anna", "vera", "boris"):
            await call(nc, "status", SetStatus(operator_id=op, status="online"))
        await _check(nc, text, "late", "Ivan", ["anna", "boris", "vera"])


async def test_simulation_matches_the_router_for_a_full_queue_telling_the_position(nc: Any, nats_server: Any) -> None:
    text = OPS + line_block(
        queue="max_chats_per_operator = 1\ntell_position = true",
        replies='welcome = "Hi {client_name}"\nqueue_position = "You are number {position}."',
    )
    await apply_lines(nc, text)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await _check(nc, text, "first", "A", ["anna", "boris"])
        await _check(nc, text, "second", "B", ["anna", "boris"])  # anna is full, boris has no state: waits, told 1
