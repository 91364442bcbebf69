"""The README's demo logins are the ones `make dev` really creates, each with its role."""

from __future__ import annotations

import re
from pathlib import Path

from openlines.lines import load

ROOT = Path(__file__).resolve().parents[3]


def test_the_readme_names_every_demo_login_of_make_dev_with_its_role() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z]+)` \| `demo` \| ([a-z]+)", readme, re.M))
    example = load(ROOT / "deploy/lines.example.toml")
    assert set(rows) == set(example.operators), rows
    for login, role in rows.items():
        assert role in example.operators[login].roles, (login, role)
