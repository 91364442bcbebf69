"""The admin editor's TOML and the reasons an operator sees no chats (pure helpers of desk.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from desk.config import lines_toml, no_chats_reasons, parse_lines_toml, takes_chats
from openlines.doctor import diagnose
from openlines.lines import ConfigError, LinesFile, OperatorConfig, check, load

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "lines.example.toml"


def test_the_editor_text_reads_back_to_the_same_lines() -> None:
    cfg = load(EXAMPLE)
    text = lines_toml(cfg.lines)
    assert "[operators" not in text and "password_hash" not in text
    assert "[lines.hours]" not in text  # tables left at their defaults are not shown
    assert parse_lines_toml(text) == cfg.lines


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[lines]\nid =", "not valid TOML"),
        ('[operators.x]\nname = "X"\n', "operators: only [[lines]] tables belong here"),
        ('[[lines]]\nid = "a"\nname = "A"\n[lines.queue]\nwait_secs = 3\n', "wait_secs"),
        ('[[lines]]\nid = "a"\n', "name"),
    ],
)
def test_editor_text_problems_name_the_key(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_lines_toml(text)
    assert says in "; ".join(err.value.errors)


def _cfg(**ops: OperatorConfig) -> LinesFile:
    lines = parse_lines_toml('[[lines]]\nid = "s"\nname = "S"\n[lines.queue]\noperators = ["ann"]\n')
    return LinesFile(operators=ops, lines=lines)


def test_reasons_an_operator_sees_no_chats() -> None:
    ann = OperatorConfig(name="Ann", password_hash="$argon2id$x")
    ben = OperatorConfig(name="Ben", password_hash="$argon2id$x", roles=["operator"], permissions=[])
    cid = OperatorConfig(name="Cid", password_hash="plain", roles=["supervisor"])
    boss = OperatorConfig(name="Boss", password_hash="$argon2id$x", roles=["admin"], permissions=[])
    cfg = _cfg(ann=ann, ben=ben, cid=cid, boss=boss)
    found = diagnose(cfg)
    assert no_chats_reasons(cfg, "ann", found) == []
    ben_says = no_chats_reasons(cfg, "ben", found)
    assert any("lacks the 'openlines'" in r for r in ben_says) and any("not a member of any line's queue" in r for r in ben_says)
    cid_says = no_chats_reasons(cfg, "cid", found)
    assert any("not a member" in r for r in cid_says) and any("not an argon2 hash" in r for r in cid_says)
    assert not takes_chats(cfg, "boss") and takes_chats(cfg, "ben")
    no_role = _cfg(ann=OperatorConfig(name="Ann", password_hash="$argon2id$x", roles=["admin"]))
    assert any("no operator role" in r for r in no_chats_reasons(no_role, "ann", diagnose(no_role)))


def test_the_editor_reports_every_bad_key_at_once_and_the_values_a_setting_allows() -> None:
    text = '[[lines]]\nid = "a"\nname = "A"\n[lines.queue]\nmode = "fastest"\nwait_secs = 3\nmax_chats_per_operator = "four"\n'
    with pytest.raises(ConfigError) as err:
        parse_lines_toml(text)
    found = err.value.errors
    assert len(found) == 3, found
    mode = next(e for e in found if e.startswith("lines[0].queue.mode"))
    for allowed in ("'round_robin'", "'strict'", "'all'", "'crm_responsible'"):
        assert allowed in mode
    assert any("wait_secs" in e for e in found) and any("max_chats_per_operator" in e for e in found)


def test_an_undeclared_queue_member_says_where_to_create_the_operator() -> None:
    cfg = _cfg()  # "ann" is in the queue but not an operator
    problems = check(cfg)
    assert any("'ann' is not declared" in p and "Operators page" in p for p in problems)
