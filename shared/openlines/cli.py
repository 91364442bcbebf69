"""The ``openlines`` command: bootstrap JetStream, validate and apply lines."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import msgspec

from openlines import apply as apply_mod
from openlines import bus, doctor, natsauth
from openlines.lines import ConfigError, load, parse_all


def _nats_url(args: argparse.Namespace) -> str:
    return str(args.nats or os.environ.get("OPENLINES_NATS_URL", "nats://127.0.0.1:4222"))


async def _bootstrap(args: argparse.Namespace) -> int:
    nc = await bus.connect(_nats_url(args), "openlines-cli", first_attempts=args.attempts)
    try:
        await bus.bootstrap(nc.jetstream(), replicas=args.replicas, report=print)
    finally:
        await nc.close()
    print("bootstrap: done")
    return 0


async def _apply(args: argparse.Namespace) -> int:
    cfg = load(args.file)
    nc = await bus.connect(_nats_url(args), "openlines-cli", first_attempts=args.attempts)
    try:
        js = nc.jetstream()
        await bus.bootstrap(js, replicas=int(os.environ.get("OPENLINES_REPLICAS", "1")))
        buckets = await bus.Buckets(js).open()
        if args.if_empty and not await apply_mod.is_empty(buckets):
            have = await apply_mod.live(buckets)
            print(
                f"kept the live configuration ({len(have.lines)} line(s), {len(have.operators)} operator(s)): "
                f"{args.file} is applied only to an empty store with --if-empty"
            )
            return 0
        for change in await apply_mod.apply(buckets, cfg):
            print(change)
    finally:
        await nc.close()
    print(f"applied {len(cfg.lines)} line(s) and {len(cfg.operators)} operator(s) from {args.file}")
    return 0


async def _export(args: argparse.Namespace) -> int:
    nc = await bus.connect(_nats_url(args), "openlines-cli", first_attempts=args.attempts)
    try:
        cfg = await apply_mod.live(await bus.Buckets(nc.jetstream()).open())
    finally:
        await nc.close()
    text = apply_mod.to_toml(cfg)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")  # noqa: ASYNC240 - a CLI, nothing else runs meanwhile
        print(f"wrote {len(cfg.lines)} line(s) and {len(cfg.operators)} operator(s) to {args.output}", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = load(args.file)
    print(f"{args.file}: valid ({len(cfg.lines)} line(s), {len(cfg.operators)} operator(s))")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """Every finding in one run: each invalid key, then what the doctor sees in the rest of the file."""
    try:
        text = open(args.file, encoding="utf-8").read()  # noqa: SIM115 - read at once
    except OSError as exc:
        raise ConfigError([f"{args.file}: cannot read: {exc.strerror}"]) from None
    cfg, invalid = parse_all(text, args.file)
    if invalid:
        print("invalid line configuration:", file=sys.stderr)
        for err in invalid:
            print(f"  - {err}", file=sys.stderr)
        if cfg is None:
            return 2
    assert cfg is not None
    findings = doctor.diagnose(cfg, accounts=doctor.accounts_from_env(os.environ))
    totals = doctor.count(findings)
    worst = 2 if invalid else 1 if totals["error"] else 0
    if args.json:
        print(msgspec.json.encode([*doctor.invalid_findings(invalid, args.file), *findings]).decode())
        return worst
    names = {line.id: line.name for line in cfg.lines}
    groups: dict[str, list[doctor.Finding]] = {}
    for f in findings:
        groups.setdefault(f.line, []).append(f)
    rank = {sev: i for i, sev in enumerate(doctor.SEVERITIES)}
    for line_id, group in groups.items():
        print(f"line {line_id} ({names.get(line_id, '?')})" if line_id else "operators")
        for f in sorted(group, key=lambda f: rank[f.severity]):  # errors first; stable, so file order within one
            print(f"  {f.severity:<8} {f.key}  [{f.code}]")
            print(f"           {f.problem}")
            print(f"           fix: {f.fix}")
        print()
    summary = ", ".join(f"{n} {sev}" + ("s" if n != 1 and sev != "info" else "") for sev, n in totals.items())
    bad = f"{len(invalid)} invalid key(s) (above, on stderr), " if invalid else ""
    print(f"{args.file}: {bad}{summary} ({len(cfg.lines)} line(s), {len(cfg.operators)} operator(s))")
    return worst


def _hash_password(args: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    if args.password is not None:
        pw = args.password
    elif not sys.stdin.isatty():
        # No one to ask (a script, a pipe): one line on standard input, e.g. from a secret store.
        pw = sys.stdin.readline().rstrip("\r\n")
        if not pw:
            print(
                "no password: type it at a terminal, or give it as one line on standard input "
                "(printf '%s\\n' \"$PASSWORD\" | openlines hash-password); nothing printed",
                file=sys.stderr,
            )
            return 2
    else:
        try:
            pw = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            print("\ncancelled; nothing printed", file=sys.stderr)
            return 1
        if again != pw:
            print("the two passwords differ; nothing printed", file=sys.stderr)
            return 2
    if pw.lower() in doctor.KNOWN_PASSWORDS or len(pw) < MIN_PASSWORD:
        print(
            f"refused: a password must be at least {MIN_PASSWORD} characters and not one published with openlines "
            f"({', '.join(doctor.KNOWN_PASSWORDS)})",
            file=sys.stderr,
        )
        return 2
    print(PasswordHasher().hash(pw))
    return 0


MIN_PASSWORD = 10


def _nats_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    wanted = args.identity or list(natsauth.IDENTITIES)
    unknown = [i for i in wanted if i not in natsauth.IDENTITIES]
    if unknown:
        print(f"openlines: unknown identity {', '.join(unknown)}; known: {', '.join(natsauth.IDENTITIES)}", file=sys.stderr)
        return 2
    directory = Path(args.dir)
    keys = {i: natsauth.new_key(i) for i in wanted}
    if args.identity:  # rotating some: keep the others' public keys in nats-server.env
        env = directory / "nats-server.env"
        for i in natsauth.IDENTITIES:
            seed_file = directory / f"{i}.nk"
            if i not in keys and seed_file.exists():
                seed = seed_file.read_text().strip()
                keys[i] = natsauth.KeyPair(identity=i, seed=seed, public=natsauth.public_of(seed))
        missing = [i for i in natsauth.IDENTITIES if i not in keys]
        if missing:
            print(f"openlines: {env} would lack {', '.join(missing)}: make every key first (no --identity)", file=sys.stderr)
            return 2
    for path in natsauth.write_keys(directory, keys):
        print(f"wrote {path}")
    print("give each service its own <identity>.nk (OPENLINES_NATS_NKEY_SEED_FILE or OPENLINES_NATS_NKEY_SEED),")
    print("and the NATS servers nats-server.env (public keys only); see docs/operations.md")
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, service plugins other than that command are not imported
    (some pull in heavy libraries, and `openlines lines validate` should start at once)."""
    p = argparse.ArgumentParser(prog="openlines", description="openlines administration")
    p.add_argument("--nats", help="NATS URL (default: $OPENLINES_NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument("--attempts", type=int, default=10, help="connection attempts before giving up (0 = forever)")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bootstrap", help="create or update the JetStream streams and KV buckets")
    b.add_argument("--replicas", type=int, default=int(os.environ.get("OPENLINES_REPLICAS", "1")))
    b.set_defaults(run=_bootstrap, is_async=True)

    lines = sub.add_parser("lines", help="line configuration").add_subparsers(dest="lines_cmd", required=True)
    v = lines.add_parser("validate", help="check a lines TOML file")
    v.add_argument("file")
    v.set_defaults(run=_validate, is_async=False)
    a = lines.add_parser("apply", help="validate a lines TOML file and make it live")
    a.add_argument("file")
    a.add_argument("--if-empty", action="store_true", help="apply only when no line or operator is stored yet (first start)")
    a.set_defaults(run=_apply, is_async=True)
    e = lines.add_parser("export", help="write the live configuration (lines and operators) as a lines TOML file")
    e.add_argument("-o", "--output", help="file to write (default: standard output)")
    e.set_defaults(run=_export, is_async=True)
    d = lines.add_parser("doctor", help="flag setup mistakes and values outside the recommended ranges")
    d.add_argument("file")
    d.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    d.set_defaults(run=_doctor, is_async=False)

    nats_p = sub.add_parser("nats", help="NATS identities").add_subparsers(dest="nats_cmd", required=True)
    k = nats_p.add_parser("keys", help="make an nkey per identity: <dir>/<identity>.nk seeds and <dir>/nats-server.env")
    k.add_argument("dir")
    k.add_argument("--identity", action="append", help="only this identity (rotation; repeatable)")
    k.set_defaults(run=_nats_keys, is_async=False)

    h = sub.add_parser("hash-password", help="print an argon2 hash for an operator password")
    h.add_argument("--password", help="the password (prompted when omitted)")
    h.set_defaults(run=_hash_password, is_async=False)
    if only in (None, "lines"):
        # `openlines lines <x>` commands from services (the router's `simulate`):
        # register(lines_subparsers) -> None, in the entry-point group openlines.cli.lines.
        for ep in entry_points(group="openlines.cli.lines"):
            try:
                ep.load()(lines)
            except Exception as exc:
                print(f"openlines: could not load the 'lines {ep.name}' command: {exc}", file=sys.stderr)
    for ep in entry_points(group="openlines.cli"):
        if only is not None and ep.name != only:
            continue
        # Services add their own subcommands (e.g. `openlines telegram ...`):
        # the entry point is a function register(subparsers) -> None.
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            print(f"openlines: could not load the {ep.name!r} commands: {exc}", file=sys.stderr)
    return p


BUILTIN_COMMANDS = ("bootstrap", "lines", "nats", "hash-password")


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if it is a built-in or an installed plugin."""
    plugins = {ep.name for ep in entry_points(group="openlines.cli")}
    for word in argv:
        if word in BUILTIN_COMMANDS or word in plugins:
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    command = _command_of(words)
    # Import only the plugin that is asked for; all of them when they must be listed.
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    try:
        if args.is_async:
            return int(asyncio.run(args.run(args)))
        return int(args.run(args))
    except ConfigError as exc:
        print("invalid line configuration:", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return 2
    except natsauth.NatsAuthError as exc:
        print(f"openlines: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"openlines: cannot reach NATS at {_nats_url(args)}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
