"""Configuration that stays: ``make dev`` applies the example lines only to a new store, what
admins change is never silently reverted, and ``openlines lines export`` writes the live
configuration back as a lines file that applies to the same thing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
from support.servers import KEYS  # make dev prepares the store as the admin identity of its own keys

from openlines import bus
from openlines.apply import apply, live
from openlines.lines import OperatorConfig, load, parse

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy/lines.example.toml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlines", *args], capture_output=True, text=True, timeout=60)


def dev_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openlines_dev_script", ROOT / "deploy/dev.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def admin_changes(nc: Any) -> None:
    """What an admin does in the pages: a new operator, a line setting changed."""
    b = await bus.Buckets(nc.jetstream()).open()
    cfg = await live(b)
    cfg.operators["vera"] = OperatorConfig(name="Vera New")
    cfg.lines[0].queue.operators.append("vera")
    cfg.lines[0].session.auto_close_minutes = 2880.0
    await apply(b, cfg)


async def test_make_dev_applies_the_example_only_to_a_new_store(nc: Any, nats_server: Any, capsys: Any) -> None:
    dev = dev_module()
    await dev.prepare(nats_server.url, KEYS)
    first = capsys.readouterr().out
    assert "line support: created" in first
    await admin_changes(nc)

    await dev.prepare(nats_server.url, KEYS)  # the next `make dev`
    second = capsys.readouterr().out
    assert "keeping the configuration in .data/" in second and "removed" not in second
    kept = await live(await bus.Buckets(nc.jetstream()).open())
    assert "vera" in kept.operators and "vera" in kept.lines[0].queue.operators
    assert kept.lines[0].session.auto_close_minutes == 2880

    dev.REAPPLY = True  # OPENLINES_DEV_APPLY_LINES=1: the file again, on purpose
    await dev.prepare(nats_server.url, KEYS)
    assert "operator vera: removed" in capsys.readouterr().out
    assert (await live(await bus.Buckets(nc.jetstream()).open())) == load(EXAMPLE)


async def test_export_writes_the_live_configuration_that_applies_to_the_same_thing(
    nc: Any, nats_server: Any, tmp_path: Path
) -> None:
    assert run_cli("--nats", nats_server.url, "lines", "apply", str(EXAMPLE)).returncode == 0
    await admin_changes(nc)
    out = tmp_path / "exported.toml"
    done = run_cli("--nats", nats_server.url, "lines", "export", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "nats disconnected" not in done.stderr  # the CLI closing its own connection is not an error
    text = out.read_text()
    assert "auto_close_minutes = 2880\n" in text  # not 2880.0
    exported = parse(text, str(out))
    b = await bus.Buckets(nc.jetstream()).open()
    assert exported == await live(b)
    # Applied to a new store, it is the same configuration.
    assert run_cli("--nats", nats_server.url, "lines", "apply", str(EXAMPLE)).returncode == 0
    assert run_cli("--nats", nats_server.url, "lines", "apply", str(out)).returncode == 0
    assert await live(b) == exported
    # Standard output by default, a plain TOML document.
    printed = run_cli("--nats", nats_server.url, "lines", "export")
    assert tomllib.loads(printed.stdout)["operators"]["vera"]["name"] == "Vera New"


async def test_apply_if_empty_keeps_what_is_stored(nc: Any, nats_server: Any, tmp_path: Path) -> None:
    first = run_cli("--nats", nats_server.url, "lines", "apply", "--if-empty", str(EXAMPLE))
    assert first.returncode == 0 and "line support: created" in first.stdout
    await admin_changes(nc)
    again = run_cli("--nats", nats_server.url, "lines", "apply", "--if-empty", str(EXAMPLE))
    assert again.returncode == 0, again.stderr
    assert "kept the live configuration" in again.stdout and "removed" not in again.stdout
    b = await bus.Buckets(nc.jetstream()).open()
    assert "vera" in (await live(b)).operators
    assert msgspec.to_builtins(await live(b)) != msgspec.to_builtins(load(EXAMPLE))
