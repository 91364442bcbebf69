"""deploy/compose.yaml brought up for real with podman-compose, a message passed, brought down.

Runs the default services (3 NATS nodes, the lines one-shot, router, desk,
webchat gateway, crm-sync) on the compose network, where the services reach
NATS by the alias every node carries. Published ports, the env file and the
project name are set from the environment so the test can run beside others.

``up --no-deps``: podman 4.3 (Debian 12) cannot start a container whose
``--requires`` dependencies have dependencies of their own ("generating
dependency graph ... not found in input list"), and podman-compose ignores
``service_healthy`` before podman 4.6. So the containers start together; the
services retry NATS until it answers and the lines one-shot restarts until it
succeeds (``restart: on-failure``) - which is also how the file behaves when a
node restarts later.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.containers import DEPLOY, SECRETS, Operator, http_ok, run, visitor_gets_reply, visitor_says
from support.servers import free_port
from support.timing import scaled, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test may build the images


def podman_compose() -> str:
    here = Path(sys.executable).parent / "podman-compose"
    found = str(here) if here.exists() else shutil.which("podman-compose")
    if not found:
        pytest.skip("podman-compose is not installed (pip install podman-compose; requirements-dev.txt has it)")
    return found


class Project:
    def __init__(self, images: dict[str, str], tmp: Path) -> None:
        self.name = f"oltest{uuid.uuid4().hex[:8]}"
        env_file = tmp / "openlines.env"
        # The locked-down NATS of the file: this run's keys and certificates (docs/operations.md).
        from support.servers import KEYS

        from openlines import natsauth

        keys, certs = tmp / "nats-keys", tmp / "nats-certs"
        natsauth.write_keys(keys, KEYS)
        subprocess.run([str(DEPLOY / "nats" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
        for private in [*keys.glob("*.nk"), *certs.glob("*-key.pem")]:
            private.chmod(0o644)  # read by uid 10001 in the containers; this run's throwaway keys
        self.ports = {name: free_port() for name in ("NATS", "NATS_MONITOR", "DESK", "WEBCHAT", "CRM")}
        site = {**SECRETS, "OPENLINES_DESK_PUBLIC_URL": f"http://127.0.0.1:{self.ports['DESK']}"}
        env_file.write_text("".join(f"{k}={v}\n" for k, v in site.items()))
        self.env = {
            **images,
            "OPENLINES_ENV_FILE": str(env_file),
            # compose deploys the starter file with no operator; the test signs in with the demo ones
            "OPENLINES_LINES": str(DEPLOY / "lines.example.toml"),
            "OPENLINES_NATS_KEYS": str(keys),
            "OPENLINES_NATS_CERTS": str(certs),
            **{f"OPENLINES_{name}_PORT": str(port) for name, port in self.ports.items()},
        }
        self.tool = podman_compose()

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        cmd = [self.tool, "--podman-args=--runtime=runc", "-p", self.name, "-f", str(DEPLOY / "compose.yaml"), *args]
        done = run(*cmd, timeout=timeout, check=check, env=self.env)
        return done.stdout + done.stderr

    def podman(self, *args: str, check: bool = True) -> str:
        return run("podman", "--runtime", "runc", *args, env=self.env, check=check).stdout

    def containers(self) -> dict[str, str]:
        """Container name -> state, of this project."""
        out = self.podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.name}", "--format", "json")
        return {c["Names"][0]: c["State"] for c in json.loads(out or "[]")}

    def lines_done(self) -> bool:
        out = self.podman("inspect", f"{self.name}_lines_1", "--format", "{{.State.Status}} {{.State.ExitCode}}", check=False)
        return out.strip() == "exited 0"

    def router_ready(self) -> bool:
        probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"
        router = f"{self.name}_router_1"
        done = run("podman", "--runtime", "runc", "exec", router, "python", "-c", probe, env=self.env, check=False)
        return done.returncode == 0

    def logs(self) -> str:
        parts = []
        for name in self.containers():
            done = run("podman", "logs", "--tail", "30", name, env=self.env, check=False)
            parts.append(f"--- {name}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return "\n".join(parts)


@pytest.fixture
def project(images: dict[str, str], tmp_path: Path) -> Iterator[Project]:
    p = Project(images, tmp_path)
    try:
        yield p
    finally:
        p.compose("down", "-v", "-t", "10", check=False)


async def test_compose_up_passes_a_webchat_message_to_the_desk_and_back_and_down_removes_everything(project: Project) -> None:
    try:
        await compose_round_trip(project)
    except BaseException:
        # Printed during the call (pytest shows it with the failure; a fixture never sees the test's exception).
        print(project.logs())
        raise


async def compose_round_trip(project: Project) -> None:
    project.compose("up", "-d", "--no-deps")
    states = project.containers()
    services = ("nats1", "nats2", "nats3", "lines", "router", "desk", "gateway-webchat", "crm-sync")
    expected = {f"{project.name}_{s}_1" for s in services}
    assert set(states) == expected, states

    desk = f"http://127.0.0.1:{project.ports['DESK']}"
    webchat = f"http://127.0.0.1:{project.ports['WEBCHAT']}"
    await wait_for(project.lines_done, timeout=180, interval=1, what="the lines one-shot finished successfully")
    for url in (desk, webchat, f"http://127.0.0.1:{project.ports['NATS_MONITOR']}"):
        await wait_for(lambda url=url: http_ok(f"{url}/healthz"), timeout=120, interval=0.5, what=f"{url} healthy")
    for url in (desk, webchat):
        await wait_for(lambda url=url: http_ok(f"{url}/readyz"), timeout=120, interval=0.5, what=f"{url} ready")
    # The router publishes no port: its /readyz (lines loaded, partitions taken) is asked inside its container.
    # Without this wait an operator's first command could reach a router still starting on a loaded machine.
    await wait_for(project.router_ready, timeout=120, interval=0.5, what="the router ready (lines loaded, partitions taken)")

    async with (
        aiohttp.ClientSession(base_url=desk, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        aiohttp.ClientSession() as vis,
    ):
        anna = Operator(http)
        await anna.sign_in("anna")
        ws = await vis.ws_connect(f"ws://127.0.0.1:{project.ports['WEBCHAT']}/ws/demo")
        await ws.send_json({"type": "hello"})  # a new visitor
        assert json.loads((await ws.receive(timeout=scaled(10))).data)["type"] == "welcome"
        await visitor_says(ws, "compose-1", "Hello from compose")
        sid = await anna.chat_with("webchat", "Hello from compose", timeout=90)
        await anna.accept(sid)
        await anna.reply(sid, "Hello from the desk in compose")
        await visitor_gets_reply(ws, "Hello from the desk in compose")
        await ws.close()
        assert await anna.transcript(sid) == ["Hello from compose"]

    # every node of the cluster carries the streams (R3 from OPENLINES_REPLICAS=3 in the file)
    monitor = f"http://127.0.0.1:{project.ports['NATS_MONITOR']}/jsz?streams=true&config=true"
    async with aiohttp.ClientSession() as http, http.get(monitor) as r:
        jsz = await r.json()
    streams = {s["name"]: s for a in jsz["account_details"] for s in a["stream_detail"]}
    assert streams["OL_IN"]["config"]["num_replicas"] == 3
    assert len(streams["OL_IN"]["cluster"]["replicas"]) == 2, "the two other nodes hold replicas"

    project.compose("down", "-v", "-t", "10")
    assert project.containers() == {}
