from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from support.timing import scaled

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "lines.example.toml"

# Valid (validate accepts it) yet badly set up: an empty queue is an error, the rest warns.
BROKEN = """
[operators.anna]
name = "Anna"

[[lines]]
id = "sales"
name = "Sales"
channels = [{ channel = "telegram", account = "bot" }]
[lines.queue]
wait_seconds = 120
[lines.crm]
enabled = true
create = "none"
"""


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openlines", "lines", "doctor", *args], capture_output=True, text=True, timeout=60
    )


def test_the_demo_file_fails_on_its_demo_logins_only() -> None:
    done = doctor(str(EXAMPLE))
    assert done.returncode == 1, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{EXAMPLE}: 3 errors")
    assert done.stdout.count("[operator-demo-password]") == 3


def test_error_finding_exits_1_and_prints_findings_grouped_by_line(tmp_path: Path) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(BROKEN, encoding="utf-8")
    done = doctor(str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "line sales (Sales)" in out
    assert "error    lines[0].queue.operators" in out
    assert "warning  lines[0].queue.wait_seconds" in out
    assert "warning  lines[0].crm.create" in out
    assert "leads will not be created automatically" in out
    assert "fix: set wait_seconds between 30 and 60" in out
    # file-wide findings come in their own group after the lines
    assert out.index("line sales") < out.index("\noperators\n") < out.index("operators.anna.password_hash")
    assert "1 error, " in out.strip().splitlines()[-1]


def test_json_lists_every_finding(tmp_path: Path) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(BROKEN, encoding="utf-8")
    done = doctor(str(path), "--json")
    assert done.returncode == 1, done.stderr
    findings = json.loads(done.stdout)
    assert isinstance(findings, list)
    assert set(findings[0]) == {"severity", "code", "line", "key", "problem", "fix"}
    by_key = {(f["key"], f["code"]): f for f in findings}
    assert by_key[("lines[0].queue.operators", "queue-empty")]["severity"] == "error"
    assert by_key[("lines[0].crm.source_ids", "crm-default-source-id")]["line"] == "sales"
    assert "'TELEGRAM'" in by_key[("lines[0].crm.source_ids", "crm-default-source-id")]["problem"]

    demo = doctor(str(EXAMPLE), "--json")
    assert demo.returncode == 1
    assert {f["code"] for f in json.loads(demo.stdout) if f["severity"] == "error"} == {"operator-demo-password"}


def test_invalid_file_is_reported_as_validate_does_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(BROKEN.replace("wait_seconds", "wait_secnds"), encoding="utf-8")
    done = doctor(str(path))
    assert done.returncode == 2
    assert "invalid line configuration:" in done.stderr
    assert "wait_secnds" in done.stderr
    # ...and the rest of the file is still diagnosed in the same run.
    assert "error    lines[0].queue.operators" in done.stdout


def test_every_finding_in_one_run_one_per_bad_key(tmp_path: Path) -> None:
    """An invalid key no longer hides the others, nor the doctor's findings on the rest of the file."""
    path = tmp_path / "lines.toml"
    path.write_text(
        """
[operators.anna]
name = "Anna"
permissions = []
colour = "red"

[operators.root]
name = "Root"
roles = ["admin"]
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$LdkE0NpE04uX5Rbm/0WWWA$+mVxxRXpVeaAQw1jYz0/H8OuHYrTnXQi0q7JXIwDCOk"

[[lines]]
id = "sales"
name = "Sales"
channels = [{ channel = "telegram", account = "bot" }]
[lines.queue]
operators = ["anna"]
wait_secnds = 120
max_chats_per_operator = "four"

[[lines]]
id = "admins"
name = "Admins only"
channels = [{ channel = "webchat", account = "site" }]
[lines.queue]
operators = ["root"]
""",
        encoding="utf-8",
    )
    bots = '[{"account": "bot", "token": "1:x", "secret": "s"}, {"account": "forgotten", "token": "2:y", "secret": "s"}]'
    env = {**os.environ, "OPENLINES_TELEGRAM_BOTS": bots}
    done = subprocess.run(
        [sys.executable, "-m", "openlines", "lines", "doctor", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    findings = json.loads(done.stdout)
    invalid = sorted(f["key"] for f in findings if f["code"] == "invalid")
    assert invalid == [
        "lines[0] (sales).queue.operators",  # anna lacks the permission (a cross-key rule)
        "lines[0].queue.max_chats_per_operator",
        "lines[0].queue.wait_secnds",
        "operators.anna.colour",
    ]
    codes = {(f["code"], f["key"]) for f in findings}
    # The admin-only queue: nobody there can answer (root cannot take chats).
    assert ("line-nobody-can-answer", "lines[1].queue.operators") in codes
    # A bot the gateway serves that no line is bound to.
    assert ("channel-account-unbound", "telegram/forgotten") in codes
    assert ("channel-account-unbound", "telegram/bot") not in codes

    path.write_text("[[lines]\n", encoding="utf-8")
    done = doctor(str(path), "--json")
    assert done.returncode == 2
    assert "not valid TOML" in done.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    done = doctor(str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "cannot read" in done.stderr


def test_lines_keep_file_order_and_errors_come_first_within_a_line(tmp_path: Path) -> None:
    two = BROKEN.replace('id = "sales"', 'id = "first"').replace('[lines.crm]\nenabled = true\ncreate = "none"\n', "")
    two += '\n[[lines]]\nid = "second"\nname = "Second"\n[lines.queue]\noperators = ["anna"]\nskip_offline = false\n'
    path = tmp_path / "lines.toml"
    path.write_text(two, encoding="utf-8")
    out = doctor(str(path)).stdout
    assert out.index("line first") < out.index("line second") < out.index("\noperators\n")
    first = out[out.index("line first") : out.index("line second")]
    assert first.index("  error ") < first.index("  warning ") < first.index("  info ")


@pytest.mark.parametrize("password", ["demo", "Admin", "short-pw"])
def test_hash_password_refuses_published_and_short_passwords(password: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openlines", "hash-password", "--password", password], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == "" and "refused" in done.stderr


def test_hash_password_prints_a_hash_that_verifies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openlines", "hash-password", "--password", "lantern-harbour-93"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert PasswordHasher().verify(done.stdout.strip(), "lantern-harbour-93")


def test_hash_password_without_a_terminal_reads_one_line_or_says_what_it_needs() -> None:
    """A script or a CI job has no terminal: the password is one line on standard input, and
    with none there a clear sentence (not a traceback) says how to give it."""
    piped = subprocess.run(
        [sys.executable, "-m", "openlines", "hash-password"],
        input="lantern-harbour-93\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert PasswordHasher().verify(piped.stdout.strip(), "lantern-harbour-93")
    empty = subprocess.run(
        [sys.executable, "-m", "openlines", "hash-password"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert empty.returncode == 2 and empty.stdout == ""
    assert "no password" in empty.stderr and "Traceback" not in empty.stderr


def test_hash_password_at_a_terminal_ended_with_ctrl_d_prints_nothing_and_no_traceback() -> None:
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openlines", "hash-password"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    out = b""
    try:
        while b"password:" not in out:
            out += os.read(master, 1024)
        os.write(master, b"\x04")  # Ctrl-D at the prompt
        assert proc.wait(timeout=scaled(60)) == 1
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert "cancelled; nothing printed" in text and "Traceback" not in text and "$argon2" not in text
