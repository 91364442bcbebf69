"""No shipped credential works: services refuse placeholder secrets, and no deployed file carries a login.

The attack this reproduces: the ``change-me...`` values of deploy/env.example and
deploy/k8s/secrets.yaml were long enough, so services started with them, and an
admin cookie forged offline with that public value was accepted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# What the shipped files once held, and what people commonly paste instead of a real secret.
PLACEHOLDERS = [
    "change-me-to-32-random-characters",
    "change-me-32-random-characters-please",
    "your-secret-key-goes-here-0123456789",
    "x" * 48,
    "",
]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start a service as a process; with a bad secret it must exit at once, before it connects anywhere."""
    base = {"PATH": "/usr/bin:/bin", "OPENLINES_NATS_URL": "nats://127.0.0.1:1", "OPENLINES_HTTP_PORT": str(free_port())}
    return subprocess.run([sys.executable, "-m", module], env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("secret", PLACEHOLDERS)
@pytest.mark.parametrize(
    ("module", "variable"), [("desk", "OPENLINES_COOKIE_SECRET"), ("gateway_webchat", "OPENLINES_WEBCHAT_SECRET")]
)
def test_a_service_refuses_to_start_with_a_placeholder_secret_and_says_how_to_make_one(
    module: str, variable: str, secret: str
) -> None:
    done = start(module, {variable: secret})
    assert done.returncode != 0
    assert variable in done.stderr and ("openssl rand -hex 32" in done.stderr or "must be set" in done.stderr), done.stderr[
        -2000:
    ]
    assert secret == "" or secret not in done.stderr  # the value itself is never printed


def test_the_shipped_env_file_and_kubernetes_secrets_hold_no_usable_secret() -> None:
    shipped = env_file(DEPLOY / "env.example")
    for variable in ("OPENLINES_COOKIE_SECRET", "OPENLINES_WEBCHAT_SECRET"):
        assert shipped[variable] == "", variable
    secrets_yaml = (DEPLOY / "k8s" / "secrets.yaml").read_text()
    assert 'OPENLINES_WEBCHAT_SECRET: ""' in secrets_yaml and 'OPENLINES_COOKIE_SECRET: ""' in secrets_yaml
    # The desk started the way compose starts it from the shipped file refuses to run.
    done = start("desk", {k: v for k, v in shipped.items() if k.startswith("OPENLINES_COOKIE")})
    assert done.returncode != 0 and "OPENLINES_COOKIE_SECRET" in done.stderr


@pytest.mark.parametrize("secret", ["change-me-webhook-0123", "aaaaaaaaaaaaaaaaaaaa", "short-secret"])
def test_webhook_secrets_of_telegram_and_vk_refuse_placeholders(secret: str) -> None:
    bots = json.dumps([{"account": "shop", "token": "123456:AAAAAAAAAAAAAAAAAAAAAAAAAA", "secret": secret}])
    tg = start("gateway_telegram", {"OPENLINES_TELEGRAM_BOTS": bots})
    assert tg.returncode != 0 and ".secret:" in tg.stderr and secret not in tg.stderr, tg.stderr[-2000:]
    groups = json.dumps([{"account": "shop", "group_id": 1, "token": "vk1.a.token", "secret": secret, "confirmation": "abc"}])
    vk = start("gateway_vk", {"OPENLINES_VK_GROUPS": groups})
    assert vk.returncode != 0 and "secret is not a usable" in vk.stderr and secret not in vk.stderr, vk.stderr[-2000:]
