"""What every benchmark shares: a real nats-server, services as subprocesses,
a progress line, percentiles, RSS from /proc and the machine's facts.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
sys.path.insert(0, str(ROOT / "tests"))

from bare_server import IDENTITY as BARE_IDENTITY  # noqa: E402
from support.servers import ADMIN_ENV, NatsServer, creds_env, free_port, nats_binary  # noqa: E402 - the same real nats-server the tests use

__all__ = ["NatsServer", "free_port", "nats_binary"]

# The servers run under the shipped permission file (deploy/nats/auth.conf), as in
# production: the benchmark's own connections (streams, lines, counting) act as the
# admin identity, every service measured has its own identity and its limits.
os.environ.update(ADMIN_ENV)


def nats_version() -> str:
    out = subprocess.run([nats_binary(), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()


@contextmanager
def nats_server(workdir: Path, name: str) -> Iterator[NatsServer]:
    server = NatsServer(workdir / name / "store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Proc:
    """A service (or a bare server) in its own process, serving HTTP on ``port``."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, log: Path, *, identity: str | None = None
    ) -> None:
        self.name = name
        self.port = port
        # /metrics is served on the internal port only: a free one, unless the caller chose it.
        self.metrics_port = int(env.get("OPENLINES_METRICS_PORT") or free_port())
        env = {**env, "OPENLINES_METRICS_PORT": str(self.metrics_port)}
        self.log = log
        # its own NATS identity, never the benchmark's admin one
        full = {**os.environ, **(creds_env(identity) if identity else {"OPENLINES_NATS_NKEY_SEED": ""}), **env}
        full.setdefault("PYTHONPATH", "")
        full["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), full["PYTHONPATH"]) if p)
        self._logf = open(log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(argv, env=full, stdout=self._logf, stderr=subprocess.STDOUT, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, path: str = "/readyz", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}{path}") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready in {timeout}s: {self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


def service(name: str, module: str, nats_url: str, workdir: Path, *, python: str = PY, **settings: Any) -> Proc:
    """``python -m <module>`` with ``OPENLINES_*`` settings, on a free port (``python``: another checkout's venv
    interpreter runs that checkout's code)."""
    port = free_port()
    env = {"OPENLINES_NATS_URL": nats_url, "OPENLINES_HTTP_PORT": str(port), "OPENLINES_HTTP_HOST": "127.0.0.1"}
    env["OPENLINES_LOG_LEVEL"] = "info"  # what production runs with, whatever the caller's environment says
    if module == "gateway_webchat":
        # Thousands of visitors from 127.0.0.1, as fast as they can: the abuse limits would measure themselves.
        env.update(OPENLINES_VISITOR_MESSAGES_PER_MINUTE="0", OPENLINES_NEW_VISITORS_PER_MINUTE="0")
    env.update({f"OPENLINES_{k.upper()}": str(v) for k, v in settings.items()})
    return Proc(name, [python, "-m", module], env, port, workdir / f"{name}-{port}.log", identity=module.replace("_", "-"))


def bare(mode: str, nats_url: str, workdir: Path) -> Proc:
    """The bare ceiling server of bench/bare_server.py."""
    port = free_port()
    return Proc(
        f"bare-{mode}",
        [PY, str(BENCH / "bare_server.py"), mode, str(port), nats_url],
        {},
        port,
        workdir / f"bare-{mode}-{port}.log",
        identity=BARE_IDENTITY[mode],  # the gateway it stands for: the same permission checks on its publishes
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


class Progress:
    """One self-rewriting status line on stderr (a plain line per update when not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self.tty else 2.0):
            return
        self._last = now
        if self.tty:
            sys.stderr.write(f"\r\033[K  {self.label}: {text}")
        else:
            sys.stderr.write(f"  {self.label}: {text}\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K  {self.label}: {text}\n")
        else:
            sys.stderr.write(f"  {self.label}: {text}\n")
        sys.stderr.flush()


async def ticker(progress: Progress, render: Callable[[], str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        progress.show(render())
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except TimeoutError:
            pass


class Window:
    """A closed-loop load's measured window: WARMUP seconds not counted, then SECONDS counted.

    Each client records ``(t0, t1, ok)`` per request; only requests that started
    and ended inside the window count. :meth:`run` shows the rate as it goes
    and returns the rate, percentiles and errors under ``unit``.
    """

    def __init__(self, label: str, warmup: float, seconds: float, unit: str) -> None:
        self.progress = Progress(label)
        self.seconds = seconds
        self.unit = unit
        self.done = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.start = time.monotonic() + warmup
        self.end = self.start + seconds

    def open(self) -> bool:
        return time.monotonic() < self.end

    def record(self, t0: float, t1: float, ok: bool) -> None:
        if t0 >= self.start and t1 <= self.end:
            if ok:
                self.done += 1
                self.latencies.append(t1 - t0)
            else:
                self.errors += 1

    async def run(self, clients: Awaitable[Any]) -> dict[str, Any]:
        stop = asyncio.Event()

        def render() -> str:
            el = time.monotonic() - self.start
            return f"{self.done} done, {self.done / el:,.0f} {self.unit}" if el > 0 else "warming up"

        tick = asyncio.create_task(ticker(self.progress, render, stop))
        try:
            await clients
        finally:
            stop.set()
            await tick
        rate = self.done / self.seconds
        p50, p99 = pct(self.latencies, 50) * 1e3, pct(self.latencies, 99) * 1e3
        self.progress.done(f"{rate:,.0f} {self.unit} (p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {self.errors})")
        return {"rate": rate, "done": self.done, "errors": self.errors, "p50_ms": p50, "p99_ms": p99}


async def wait_until(probe: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = probe()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(int(x.split()[1]) // 1024 for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_mib": mem,
        "python": platform.python_version(),
        "nats_server": nats_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# An argon2 hash of "demo" (the one of deploy/lines.example.toml).
DEMO_HASH = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"
WEBCHAT_SECRET = "bench-webchat-secret-0123456789-Kq7Zt9Wm3xRv"
HELLO = '{"type":"hello"}'  # a widget socket's first frame (a new visitor)
# The gateway serves only widget accounts a line is bound to.
BENCH_LINES = """
[operators.anna]
name = "Anna"

[[lines]]
id = "bench"
name = "Bench"
channels = [{ channel = "webchat", account = "bench" }]
[lines.queue]
operators = ["anna"]
"""


async def bind_bench_account(nc: Any) -> None:
    from openlines import bus
    from openlines.apply import apply
    from openlines.lines import parse

    await apply(await bus.Buckets(nc.jetstream()).open(), parse(BENCH_LINES))


COOKIE_SECRET = "bench-cookie-secret-0123456789-Kq7Zt9Wm3xRv"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
