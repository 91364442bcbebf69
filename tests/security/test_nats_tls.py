"""TLS to NATS with the certificates deploy/nats/make-certs.sh makes, against a real nats-server
that also runs the shipped permission file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.servers import KEYS, ROOT, NatsServer

from openlines import bus, subjects
from openlines.natsauth import NatsAuth, NatsAuthError


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("certs")
    subprocess.run([str(ROOT / "deploy/nats/make-certs.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture
def tls_server(tmp_path: Path, certs: Path) -> Iterator[NatsServer]:
    """TLS required, client certificates verified (as deploy/nats/nats.conf does)."""
    server = NatsServer(
        tmp_path / "nats",
        [
            "--tlsverify",
            "--tlscert",
            str(certs / "server.pem"),
            "--tlskey",
            str(certs / "server-key.pem"),
            "--tlscacert",
            str(certs / "ca.pem"),
        ],
    )
    server.start()
    yield server
    server.stop()


def _auth(certs: Path, **changes: str) -> NatsAuth:
    values = {
        "identity": "gateway-webchat",
        "seed": KEYS["gateway-webchat"].seed,
        "tls_ca": str(certs / "ca.pem"),
        "tls_cert": str(certs / "client.pem"),
        "tls_key": str(certs / "client-key.pem"),
        **changes,
    }
    return NatsAuth.load(**values)


async def test_a_service_connects_over_tls_and_works_under_its_permissions(tls_server: NatsServer, certs: Path) -> None:
    admin = await bus.connect(tls_server.url, "admin", first_attempts=3, auth=_auth(certs, identity="", seed=KEYS["admin"].seed))
    try:
        await bus.bootstrap(admin.jetstream())
        nc = await bus.connect(f"tls://127.0.0.1:{tls_server.port}", "gateway-webchat", first_attempts=3, auth=_auth(certs))
        try:
            assert nc.connected_url is not None
            ack = await nc.jetstream().publish("ol.in.webchat.demo.0", b"{}")
            assert ack.stream == subjects.STREAM_IN
        finally:
            await nc.close()
    finally:
        await admin.close()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    other = tmp_path / "other-ca"
    subprocess.run([str(ROOT / "deploy/nats/make-certs.sh"), str(other)], check=True, capture_output=True)
    return other


async def test_a_client_that_does_not_trust_the_ca_is_refused_naming_the_variable(
    tls_server: NatsServer, certs: Path, other_ca: Path
) -> None:
    other = other_ca
    with pytest.raises(NatsAuthError, match="OPENLINES_NATS_TLS_CA"):
        await bus.connect(tls_server.url, "gateway-webchat", first_attempts=1, auth=_auth(certs, tls_ca=str(other / "ca.pem")))


async def test_a_client_without_a_certificate_is_refused(tls_server: NatsServer, certs: Path) -> None:
    auth = NatsAuth.load(identity="gateway-webchat", seed=KEYS["gateway-webchat"].seed, tls_ca=str(certs / "ca.pem"))
    with pytest.raises(Exception):  # noqa: B017 - the server ends the handshake; the client sees one of several errors
        await bus.connect(tls_server.url, "gateway-webchat", first_attempts=1, auth=auth)


def test_a_certificate_without_its_key_is_an_error_naming_both_variables(certs: Path) -> None:
    with pytest.raises(NatsAuthError, match="OPENLINES_NATS_TLS_CERT and OPENLINES_NATS_TLS_KEY"):
        NatsAuth.load(identity="desk", tls_ca=str(certs / "ca.pem"), tls_cert=str(certs / "client.pem"))
