"""Who a process is towards NATS: its nkey, its reply inbox, TLS.

Every service has its own identity in deploy/nats/auth.conf (the one permission
file of every deployment; docs/decisions/016-nats-permissions.md). The server
holds public keys only; a service holds its seed. `openlines nats keys <dir>`
makes a set.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import nkeys

# The identities of deploy/nats/auth.conf. "admin" runs `openlines bootstrap`,
# `lines apply` and the other CLI commands; every other one is a service name.
ADMIN = "admin"
IDENTITIES = (
    ADMIN,
    "router",
    "desk",
    "crm-sync",
    "gateway-telegram",
    "gateway-vk",
    "gateway-email",
    "gateway-whatsapp",
    "gateway-webchat",
)

SEED_VAR = "OPENLINES_NATS_NKEY_SEED"
SEED_FILE_VAR = "OPENLINES_NATS_NKEY_SEED_FILE"
TLS_CA_VAR = "OPENLINES_NATS_TLS_CA"
TLS_CERT_VAR = "OPENLINES_NATS_TLS_CERT"
TLS_KEY_VAR = "OPENLINES_NATS_TLS_KEY"


class NatsAuthError(Exception):
    """NATS refused who we are, or our key or certificates cannot be used: say which variable to fix."""


def public_key_var(identity: str) -> str:
    """The server-side variable of an identity's public key, e.g. OPENLINES_NATS_NKEY_CRM_SYNC."""
    return "OPENLINES_NATS_NKEY_" + identity.upper().replace("-", "_")


def inbox_prefix(identity: str) -> str:
    """Where an identity's replies come back; auth.conf lets each one subscribe to its own only."""
    return f"_INBOX.{identity}"


class KeyPair(msgspec.Struct, frozen=True):
    identity: str
    seed: str  # S..., secret
    public: str  # U..., goes into the server's environment


def new_key(identity: str) -> KeyPair:
    """A fresh user nkey (Ed25519) for one identity."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return KeyPair(identity=identity, seed=seed.decode(), public=public_of(seed.decode()))


def public_of(seed: str) -> str:
    """The public key of a seed; NatsAuthError if it is not a user seed."""
    try:
        kp = nkeys.from_seed(bytearray(seed.strip().encode()))
        public = str(kp.public_key.decode())
        kp.wipe()
    except Exception as exc:  # nkeys raises its own and binascii errors
        raise NatsAuthError(f"not an nkey seed: {type(exc).__name__}") from None
    if not public.startswith("U"):
        raise NatsAuthError("not a user nkey seed (a user seed starts with SU)")
    return public


def new_keys() -> dict[str, KeyPair]:
    return {identity: new_key(identity) for identity in IDENTITIES}


def server_env(keys: Mapping[str, KeyPair]) -> dict[str, str]:
    """The variables deploy/nats/auth.conf reads: one public key per identity."""
    return {public_key_var(k.identity): k.public for k in keys.values()}


def write_keys(directory: Path, keys: Mapping[str, KeyPair]) -> list[Path]:
    """``<identity>.nk`` (the seed, mode 600) per identity and ``nats-server.env`` (the public keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k in keys.values():
        path = directory / f"{k.identity}.nk"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(k.seed + "\n")
        written.append(path)
    env = directory / "nats-server.env"
    env.write_text("".join(f"{name}={value}\n" for name, value in server_env(keys).items()))
    written.append(env)
    return written


class NatsAuth(msgspec.Struct, frozen=True, kw_only=True):
    """What a connection presents: an identity's seed, and TLS settings when the server uses TLS."""

    identity: str = ""  # names the reply inbox; empty: the default inbox (admin, tools)
    seed: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def load(
        cls,
        *,
        identity: str = "",
        seed: str = "",
        seed_file: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
    ) -> NatsAuth:
        """From settings values; a seed file that cannot be read is an error naming its variable."""
        if seed_file and not seed:
            try:
                seed = Path(seed_file).read_text().strip()
            except OSError as exc:
                raise NatsAuthError(f"{SEED_FILE_VAR}={seed_file}: cannot read it: {exc.strerror}") from None
        if seed:
            try:
                public_of(seed)
            except NatsAuthError as exc:
                where = SEED_FILE_VAR if seed_file else SEED_VAR
                raise NatsAuthError(f"{where}: {exc}") from None
        if bool(tls_cert) != bool(tls_key):
            raise NatsAuthError(f"{TLS_CERT_VAR} and {TLS_KEY_VAR} go together: set both or neither")
        return cls(identity=identity, seed=seed.strip(), tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, identity: str = "") -> NatsAuth:
        """For the CLI and tools: the same variables a service reads."""
        source = os.environ if env is None else env
        return cls.load(
            identity=identity,
            seed=source.get(SEED_VAR, ""),
            seed_file=source.get(SEED_FILE_VAR, ""),
            tls_ca=source.get(TLS_CA_VAR, ""),
            tls_cert=source.get(TLS_CERT_VAR, ""),
            tls_key=source.get(TLS_KEY_VAR, ""),
        )

    def public_key(self) -> str:
        return public_of(self.seed) if self.seed else ""

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context trusting ``tls_ca`` (and presenting a client certificate if given)."""
        if not self.tls_ca:
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise NatsAuthError(f"{TLS_CA_VAR}={self.tls_ca}: cannot load it: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_cert:
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise NatsAuthError(f"{TLS_CERT_VAR}/{TLS_KEY_VAR}: cannot load them: {exc}") from None
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        opts: dict[str, Any] = {}
        if self.seed:
            opts["nkeys_seed_str"] = self.seed
        if self.identity:
            opts["inbox_prefix"] = inbox_prefix(self.identity)
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts

    def refused(self, url: str, error: str) -> NatsAuthError:
        """The error for a server that said "Authorization Violation"."""
        if not self.seed:
            whose = "this service's identity" if self.identity else "the admin identity (the openlines CLI, tools)"
            return NatsAuthError(
                f"NATS at {url} requires credentials and none were given: set {SEED_VAR} (or {SEED_FILE_VAR}) "
                f"to the nkey seed of {whose} in deploy/nats/auth.conf ({error})"
            )
        return NatsAuthError(
            f"NATS at {url} refused the nkey {self.public_key()} given in {SEED_VAR}/{SEED_FILE_VAR}: "
            f"its public key must be the server's {public_key_var(self.identity or ADMIN)} ({error})"
        )
