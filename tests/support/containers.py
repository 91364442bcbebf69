"""Helpers for the container tests: podman, a stack of containers on the host network, the desk's API.

Every container runs with ``--network host``, so the services reach the
local peers (Telegram Bot API, VK API, Dovecot, SMTP) that the tests start on
127.0.0.1 exactly as the in-process tests do, and the tests reach the
services' ports directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from openlines import natsauth
from support.servers import KEYS, free_port
from support.timing import scaled, wait_for

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PREFIX = os.environ.get("OPENLINES_IMAGE_PREFIX", "localhost/openlines-")
TAG = os.environ.get("OPENLINES_IMAGE_TAG", "latest")
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
IMAGES = ["nats", *SERVICES]
SECRETS = {
    "OPENLINES_WEBCHAT_SECRET": "container-test-webchat-secret-0123456789",
    "OPENLINES_COOKIE_SECRET": "container-test-cookie-secret-0123456789",
}


def run(
    *cmd: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def podman_missing() -> str:
    """Why the images cannot be built here, or "" when they can (images.sh installs podman as root)."""
    if shutil.which("podman"):
        return ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return ""
    return "podman is not installed and cannot be installed here (needs root and apt-get)"


def image(name: str) -> str:
    return f"{PREFIX}{name}:{TAG}"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    """Containers of one test (or module), named ol-<run id>-<name>, removed at the end."""

    env: dict[str, str]  # podman's environment (CONTAINERS_CONF)
    tmp: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    containers: list[str] = field(default_factory=list)
    nats_ports: list[int] = field(default_factory=list)
    monitor_ports: list[int] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # container name suffix -> HTTP port

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("podman", "--runtime", "runc", *args, timeout=timeout, check=check, env=self.env)

    def start(self, name: str, image_name: str, *args: str, env: dict[str, str] | None = None, opts: tuple[str, ...] = ()) -> str:
        cname = f"ol-{self.run_id}-{name}"
        flags = [f"-e={k}={v}" for k, v in (env or {}).items()]
        # no --health-*: podman runs healthchecks through systemd timers, absent in this sandbox
        self.podman(
            "run", "-d", "--no-healthcheck", "--name", cname, "--network", "host", *flags, *opts, image(image_name), *args
        )
        self.containers.append(cname)
        return cname

    def name(self, short: str) -> str:
        return f"ol-{self.run_id}-{short}"

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.nats_ports]

    @property
    def certs(self) -> Path:
        """The TLS material of deploy/nats/make-certs.sh for this stack, made once."""
        out = self.tmp / "nats-tls"
        if not (out / "server.pem").exists():
            subprocess.run([str(ROOT / "deploy/nats/make-certs.sh"), str(out)], check=True, capture_output=True)
            for key in out.glob("*-key.pem"):
                key.chmod(0o644)  # read by uid 10001 in the containers; a test's own throwaway CA
        return out

    @property
    def base_env(self) -> dict[str, str]:
        return {
            "OPENLINES_NATS_URL": self.nats_urls[0],
            "OPENLINES_REPLICAS": "3",
            "OPENLINES_HTTP_HOST": "127.0.0.1",
            "OPENLINES_NATS_TLS_CA": "/etc/openlines/nats/ca.pem",
            "OPENLINES_NATS_TLS_CERT": "/etc/openlines/nats/client.pem",
            "OPENLINES_NATS_TLS_KEY": "/etc/openlines/nats/client-key.pem",
        }

    @property
    def client_tls(self) -> tuple[str, ...]:
        return ("-v", f"{self.certs}:/etc/openlines/nats:ro")

    async def connect_admin(self, **options: Any) -> Any:
        """The test's own connection: the admin identity, over TLS."""
        import nats

        from openlines.natsauth import NatsAuth

        auth = NatsAuth.load(
            seed=KEYS["admin"].seed,
            tls_ca=str(self.certs / "ca.pem"),
            tls_cert=str(self.certs / "client.pem"),
            tls_key=str(self.certs / "client-key.pem"),
        )
        return await nats.connect(self.nats_urls, **{**auth.connect_options(), **options})

    def logs(self) -> str:
        """The end of every container's log (OPENLINES_TEST_LOG_TAIL lines, OPENLINES_TEST_LOG_CHARS characters)."""
        out = []
        for c in self.containers:
            done = self.podman("logs", "--tail", os.environ.get("OPENLINES_TEST_LOG_TAIL", "40"), c, check=False)
            keep = int(os.environ.get("OPENLINES_TEST_LOG_CHARS", "4000"))
            out.append(f"--- {c}\n{done.stdout[-keep:]}{done.stderr[-keep:]}")
        return "\n".join(out)

    def remove(self) -> None:
        for c in reversed(self.containers):
            self.podman("rm", "-f", "-t", "2", c, check=False, timeout=60)
        self.containers.clear()

    # -- the parts of a stack -------------------------------------------------

    async def start_nats_cluster(self) -> None:
        """Three nats containers (JetStream, one cluster) from deploy/nats/nats.conf, on free ports."""
        self.nats_ports = [free_port() for _ in range(3)]
        self.monitor_ports = [free_port() for _ in range(3)]
        cluster = [free_port() for _ in range(3)]
        routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in cluster)
        for i in range(3):
            data = self.tmp / f"n{i + 1}"
            data.mkdir()
            data.chmod(0o777)  # the container runs as uid 10001
            self.start(
                f"n{i + 1}",
                "nats",
                "--config=/etc/nats/nats.conf",
                "-a=127.0.0.1",
                f"-p={self.nats_ports[i]}",
                f"-m={self.monitor_ports[i]}",
                f"--cluster=nats://127.0.0.1:{cluster[i]}",
                f"--routes={routes}",
                "--cluster_name=openlines",
                env={"NATS_SERVER_NAME": f"n{i + 1}", **natsauth.server_env(KEYS)},
                opts=("-v", f"{data}:/data", "-v", f"{self.certs}:/etc/nats/tls:ro"),
            )
        for i in range(3):
            await wait_for(
                lambda i=i: http_ok(f"http://127.0.0.1:{self.monitor_ports[i]}/healthz"),
                timeout=60,
                what=f"NATS node n{i + 1} healthy",
            )

    async def apply_lines(self, lines: Path) -> None:
        """The one-shot of compose and the Kubernetes Job: R3 streams, the lines, R3 again."""
        target = "/etc/openlines/lines.toml"

        def once() -> bool:
            done = self.podman(
                "run", "--rm", "--no-healthcheck", "--network", "host", *[f"-e={k}={v}" for k, v in self.base_env.items()],
                f"-e=OPENLINES_NATS_NKEY_SEED={KEYS['admin'].seed}", *self.client_tls,
                "-v", f"{lines}:{target}:ro", image("router"), "sh", "-c",
                f"openlines --attempts 30 bootstrap && openlines lines apply {target} && openlines bootstrap",
                check=False, timeout=120,
            )  # fmt: skip
            if done.returncode != 0:
                print(f"lines one-shot exited {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}")
            return done.returncode == 0

        # The cluster may still be electing its JetStream meta leader: retry the one-shot.
        await wait_for(lambda: asyncio.to_thread(once), timeout=120, interval=1, what="the lines applied to the cluster")

    def start_service(self, name: str, service: str, env: dict[str, str] | None = None) -> int:
        """One service container on a free port; returns the port (wait with :meth:`ready`)."""
        port = free_port()
        self.ports[name] = port
        own = {"OPENLINES_NATS_NKEY_SEED": KEYS[service].seed}  # the service's own identity
        # Host network: the metrics port gets a free port too (port + 1000 could be another container's).
        ports = {"OPENLINES_HTTP_PORT": str(port), "OPENLINES_METRICS_PORT": str(free_port())}
        self.start(name, service, env={**self.base_env, **SECRETS, **own, **ports, **(env or {})}, opts=self.client_tls)
        return port

    async def ready(self, *names: str) -> None:
        """Wait for each service's /readyz; fail at once, with its log, when its container has exited."""
        for name in names or tuple(self.ports):

            def probe(name: str = name) -> bool:
                if http_ok(f"http://127.0.0.1:{self.ports[name]}/readyz"):
                    return True
                state = self.podman("inspect", "--format", "{{.State.Status}}", self.name(name), check=False).stdout.strip()
                if state in ("exited", "stopped", "dead"):
                    log = self.podman("logs", "--tail", "30", self.name(name), check=False)
                    pytest.fail(f"the {name} container exited before it was ready:\n{log.stdout[-3000:]}{log.stderr[-3000:]}")
                return False

            await wait_for(probe, timeout=90, interval=0.5, what=f"{name} ready")


class BackgroundLoop:
    """An event loop in a thread, for peers that outlive one test's event loop (module-scoped stacks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="peers", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the desk's API, as an operator's browser uses it ---------------------------


class Operator:
    """An operator signed into the desk (cookie session + CSRF header)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.h: dict[str, str] = {}

    async def sign_in(self, login: str, password: str = "demo") -> None:
        form = await (await self.http.get("/login")).text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        data = {"login": login, "password": password, "csrf_token": token.group(1)}
        done = await self.http.post("/login", data=data, allow_redirects=False)
        assert done.status == 303
        page = await (await self.http.get("/")).text()
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        assert csrf
        self.h = {"X-CSRF-Token": csrf.group(1)}
        done = await self.http.post("/api/status", json={"status": "online"}, headers=self.h)
        assert done.status == 200, f"POST /api/status answered {done.status}: {await done.text()}"

    async def chats(self, channel: str | None = None) -> list[dict[str, Any]]:
        chats: list[dict[str, Any]] = (await (await self.http.get("/api/chats")).json())["chats"]
        return [c for c in chats if channel is None or c["channel"] == channel]

    async def read_history(self, sid: str) -> list[str] | None:
        """The client's messages in the session, oldest first; None when the desk could not read them this time."""
        r = await self.http.get(f"/api/sessions/{sid}/history")
        if r.status != 200:
            # Seen against a NATS cluster: the desk's history read sometimes fails (500, ServiceUnavailableError).
            return None
        return [e["text"] for e in (await r.json())["entries"] if e["direction"] == "in"]

    async def transcript(self, sid: str) -> list[str]:
        """The client's messages in the session, oldest first (asking again when a read fails)."""

        async def probe() -> tuple[list[str]] | None:
            got = await self.read_history(sid)
            return None if got is None else (got,)  # an empty history is an answer too

        return (await wait_for(probe, timeout=30, interval=0.3, what=f"the history of {sid}"))[0]

    async def has(self, sid: str, text: str) -> bool:
        """Whether a client message of the session contains ``text`` (an e-mail's text also carries its subject)."""
        return any(text in entry for entry in await self.read_history(sid) or [])

    async def chat_with(self, channel: str, text: str, timeout: float = 60) -> str:
        """The id of the chat (of this channel) whose transcript holds ``text``, once it is there."""

        async def probe() -> str | None:
            for c in await self.chats(channel):
                if await self.has(c["id"], text):
                    return str(c["id"])
            return None

        return await wait_for(probe, timeout=timeout, interval=0.3, what=f"a {channel} chat with {text!r} in the desk")

    async def accept(self, sid: str) -> None:
        assert (await self.http.post(f"/api/sessions/{sid}/accept", headers=self.h)).status == 200

    async def reply(self, sid: str, text: str, reply_id: str | None = None) -> None:
        body = {"text": text, "client_msg_id": reply_id or uuid.uuid4().hex}

        async def attempt() -> bool:
            r = await self.http.post(f"/api/sessions/{sid}/reply", json=body, headers=self.h)
            return r.status == 200

        await wait_for(attempt, timeout=60, interval=0.5, what=f"operator reply {text!r} accepted")


async def visitor_says(ws: aiohttp.ClientWebSocketResponse, msg_id: str, text: str) -> None:
    async def attempt() -> bool:
        await ws.send_json({"type": "message", "id": msg_id, "text": text})
        while True:
            frame = json.loads((await ws.receive(timeout=scaled(20))).data)
            if frame.get("id") == msg_id and frame["type"] == "ack":
                return True
            if frame.get("id") == msg_id and frame["type"] == "error":
                return False  # NATS fail-over in progress: the widget sends again (same id, deduplicated)

    await wait_for(attempt, timeout=60, interval=0.5, what=f"visitor message {msg_id} acknowledged")


async def visitor_gets_reply(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads((await ws.receive(timeout=scaled(30))).data)
        if frame["type"] == "reply" and frame["text"] == text:
            return frame
