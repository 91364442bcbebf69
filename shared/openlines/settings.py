"""Settings from ``OPENLINES_*`` environment variables, parsed once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import msgspec

PREFIX = "OPENLINES_"

S = TypeVar("S", bound="BaseSettings")


class SettingsError(ValueError):
    pass


class BaseSettings(msgspec.Struct, kw_only=True):
    """What every service reads. Subclass to add a service's own settings."""

    nats_url: str = "nats://127.0.0.1:4222"
    # This service's identity towards NATS (deploy/nats/auth.conf): its nkey seed, or a file holding it.
    nats_nkey_seed: str = ""
    nats_nkey_seed_file: str = ""
    # TLS to NATS: the CA that signed the servers' certificates; a client certificate when the servers ask for one.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    log_level: str = "info"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The internal port of /metrics (and /healthz, /readyz again) that no ingress routes; unset: http_port + 1000
    # (a free port when http_port is 0). Prometheus and the Kubernetes probes use it.
    metrics_port: int | None = None
    replicas: int = 1  # JetStream replicas for streams and buckets a service creates
    bootstrap: bool = True  # create missing streams/buckets at start-up
    shutdown_timeout: float = 10.0
    # The longest a JetStream request (KV read or write, stream or consumer info, a publish's acknowledgement)
    # waits for its answer. One sent to a stream or consumer between two leaders, or to a NATS node that died,
    # is never answered: every caller tries again, so this is how long such a moment holds a message up
    # (decision 035). Answers normally take milliseconds; raise it only for a NATS that answers slowly.
    nats_request_timeout: float = 2.0

    def problem(self) -> str | None:
        """Why these settings cannot work, or None (checked at start-up by ``openlines.runner.main``)."""
        if not self.nats_request_timeout > 0:
            return f"{env_name('nats_request_timeout')}={self.nats_request_timeout}: must be a number of seconds above 0"
        return self.ports_problem()

    def ports_problem(self) -> str | None:
        """Why the two ports cannot both be served, or None (checked at start-up by ``openlines.runner.main``)."""
        port = self.ops_port()
        if not 0 <= port <= 65535 or (port and port == self.http_port):
            return f"OPENLINES_METRICS_PORT={port}: must be a port (0-65535) other than OPENLINES_HTTP_PORT={self.http_port}"
        return None

    def ops_port(self) -> int:
        """The port of /metrics: ``metrics_port``, else ``http_port`` + 1000 (0, a free port, when http_port is 0)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return self.http_port + 1000 if self.http_port else 0

    def public(self) -> dict[str, object]:
        """The settings without secrets, for the start-up log line."""
        out: dict[str, object] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            secret = any(word in name for word in ("secret", "password", "token", "key")) and not name.endswith("_file")
            out[name] = "***" if secret and value else value
        return out


def env_name(field: str) -> str:
    return PREFIX + field.upper()


# Variables no longer read, and what replaced them: a deployment still setting one is told at start-up.
RETIRED = {
    "OPENLINES_PUBLIC_URL": (
        "OPENLINES_PUBLIC_URL is no longer read: it meant one thing to the desk and another to the widget. "
        "Set OPENLINES_DESK_PUBLIC_URL (desk: file links, its host name) and OPENLINES_WIDGET_PUBLIC_URL "
        "(gateway-webchat: where browsers load the widget) instead"
    ),
}


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **overrides: object) -> S:
    """Build ``cls`` from the environment; an error names the variable at fault."""
    source = os.environ if env is None else env
    for name, why in RETIRED.items():
        if source.get(name):
            raise SettingsError(why)
    raw: dict[str, object] = {}
    for field in cls.__struct_fields__:
        name = env_name(field)
        if name in source:
            raw[field] = source[name]
    raw.update(overrides)
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        for field in cls.__struct_fields__:
            if f"`$.{field}`" in text:
                got = source.get(env_name(field), "")
                shown = "***" if any(w in field for w in ("secret", "password", "token", "key")) else repr(got)
                raise SettingsError(f"{env_name(field)}={shown}: {text.split(' - at ')[0]}") from None
        missing = text.split("`")[1] if "required field" in text and "`" in text else ""
        if missing:
            raise SettingsError(f"{env_name(missing)} must be set") from None
        raise SettingsError(text) from None
