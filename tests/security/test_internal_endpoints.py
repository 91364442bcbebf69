"""Internal endpoints stay internal: /metrics only on each service's internal port (which the shipped ingress
never routes), and crm-sync's read API of the built-in CRM only with its token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support import apply_lines
from support.crm import CRM_API_TOKEN, running_crm_sync
from support.desk_admin import LINES, running_desk
from support.servers import creds

from crm_sync.settings import Settings as CrmSettings
from gateway_webchat import Settings as WebchatSettings
from gateway_webchat import setup as webchat_setup
from openlines.runner import Service, launch
from openlines.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


async def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


@asynccontextmanager
async def running(name: str, nc: Any, url: str) -> AsyncIterator[Service[Any]]:
    if name == "desk":
        await apply_lines(nc, LINES)
        async with running_desk(url) as desk:
            yield desk
        return
    settings = WebchatSettings(
        nats_url=url,
        http_port=0,
        webchat_secret="internal-endpoints-test-0123456789-Kq7Zt9Wm3xRv",
        shutdown_timeout=3.0,
        **creds("gateway-webchat"),
    )
    svc = await launch("gateway-webchat", settings, webchat_setup, first_attempts=5)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.mark.parametrize("name", ["desk", "webchat"])
async def test_metrics_are_served_only_on_the_internal_port(name: str, nc: Any, nats_server: Any) -> None:
    async with running(name, nc, nats_server.url) as svc:
        await _only_internal(svc)


async def _only_internal(svc: Service[Any]) -> None:
    assert svc.metrics_port not in (0, svc.port)
    public, internal = f"http://127.0.0.1:{svc.port}", f"http://127.0.0.1:{svc.metrics_port}"
    status, _ = await status_of(f"{public}/metrics")
    assert status == 404
    status, text = await status_of(f"{internal}/metrics")
    assert status == 200 and "# TYPE openlines_" in text
    # Health on both: load balancers probe the public port, Kubernetes and Prometheus the internal one.
    for base in (public, internal):
        assert (await status_of(f"{base}/healthz"))[0] == 200
        assert (await status_of(f"{base}/readyz"))[0] == 200
    # The internal port serves nothing else.
    assert (await status_of(f"{internal}/login"))[0] == 404


def test_the_metrics_port_defaults_to_the_http_port_plus_1000_and_must_differ_from_it() -> None:
    env = {"OPENLINES_HTTP_PORT": "8087"}
    assert load_settings(CrmSettings, env=env).ops_port() == 9087
    assert load_settings(CrmSettings, env={**env, "OPENLINES_METRICS_PORT": "9100"}).ops_port() == 9100
    same = load_settings(CrmSettings, env={**env, "OPENLINES_METRICS_PORT": "8087"})
    assert "must be a port (0-65535) other than OPENLINES_HTTP_PORT=8087" in (same.ports_problem() or "")
    for weak in ("short", "change-me-to-a-crm-api-token-0123456789"):
        with pytest.raises(SettingsError, match="OPENLINES_CRM_API_TOKEN is not a usable secret"):
            load_settings(CrmSettings, env={"OPENLINES_CRM_API_TOKEN": weak})


# -- crm-sync's read API ----------------------------------------------------------------------------


async def test_the_crm_read_api_needs_its_token(nats_server: Any, nc: Any) -> None:
    async with running_crm_sync(nats_server.url) as crm:
        base = f"http://127.0.0.1:{crm.port}"
        for path in ("/crm/leads", "/crm/contacts", "/crm/deals", "/crm/activities", "/crm/links/webchat-demo-x"):
            for headers in (
                None,
                {"Authorization": "Bearer wrong-token-0123456789-Zq7Kt9Wm3xRv"},
                {"Authorization": CRM_API_TOKEN},
            ):
                status, text = await status_of(f"{base}{path}", headers)
                assert status == 401, (path, headers, text)
                assert '"unauthenticated"' in text
            status, text = await status_of(f"{base}{path}", {"Authorization": f"Bearer {CRM_API_TOKEN}"})
            assert status in (200, 404), (path, text)  # 404: that client is not linked
        status, _ = await status_of(f"{base}/crm/leads", {"Authorization": f"Bearer {CRM_API_TOKEN}"})
        assert status == 200


async def test_without_a_token_configured_the_crm_read_api_is_off(nats_server: Any, nc: Any) -> None:
    async with running_crm_sync(nats_server.url, crm_api_token="") as crm:
        status, text = await status_of(f"http://127.0.0.1:{crm.port}/crm/leads", {"Authorization": "Bearer anything-at-all-0123"})
        assert status == 401 and "set OPENLINES_CRM_API_TOKEN" in text
        assert (await status_of(f"http://127.0.0.1:{crm.port}/healthz"))[0] == 200


# -- the shipped manifests ----------------------------------------------------------------------------


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_the_ingress_routes_only_public_ports_and_prometheus_scrapes_the_internal_one() -> None:
    docs = _documents()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"] == {"name": "http"}, backend
            [port] = [p for p in services[backend["name"]]["spec"]["ports"] if p["name"] == "http"]
            assert port["targetPort"] == "http"
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        name = dep["metadata"]["name"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert set(ports) == {"http", "metrics"}, name
        assert str(ports["http"]) == env["OPENLINES_HTTP_PORT"] and str(ports["metrics"]) == env["OPENLINES_METRICS_PORT"], name
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"]), name
        # No Service exposes the metrics port: the ingress could not route it even by mistake.
        for svc in services.values():
            if svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]:
                assert all(p.get("targetPort") != "metrics" and p["port"] != ports["metrics"] for p in svc["spec"]["ports"]), name
