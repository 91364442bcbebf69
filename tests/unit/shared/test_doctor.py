from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from argon2 import PasswordHasher
from support import line_block

from openlines.doctor import Finding, accounts_from_env, diagnose
from openlines.lines import LinesFile, load, parse

ROOT = Path(__file__).resolve().parents[3]
# the hash of a password of their own (not a demo one)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$LdkE0NpE04uX5Rbm/0WWWA$+mVxxRXpVeaAQw1jYz0/H8OuHYrTnXQi0q7JXIwDCOk"

OPERATORS = f"""
[operators.anna]
name = "Anna"
password_hash = "{HASH}"

[operators.boris]
name = "Boris"
password_hash = "{HASH}"
"""


def line(
    *,
    id: str = "support",
    channels: str = '[{ channel = "webchat", account = "demo" }]',
    queue: str = "",
    hours: str = "",
    replies: str = "",
    session: str = "",
    auto_close: int = 1440,
    welcome: str = "Hello {client_name}, this is {line_name}.",
    crm: str = "",
    operators: str = '["anna", "boris"]',
) -> str:
    """One [[lines]] block that is clean unless a section is overridden."""
    return line_block(
        id,
        channels=channels,
        operators=operators.strip("[]"),
        queue=queue,
        hours=hours,
        replies=f'welcome = "{welcome}"\n{replies}',
        session=f"auto_close_minutes = {auto_close}\n{session}",
        crm=crm,
    )


def doctor(*lines: str, operators: str = OPERATORS) -> list[Finding]:
    return diagnose(parse(operators + "".join(lines or (line(),))))


def only(findings: list[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, f"expected one {code}, got {findings}"
    return hits[0]


def codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def unchecked(queue: dict[str, Any], operators: dict[str, Any] | None = None, **line_keys: Any) -> LinesFile:
    """A config validation would refuse: msgspec.convert alone, as a caller that skips check() gets it."""
    if operators is None:
        operators = {"a": {"name": "A", "password_hash": HASH}, "b": {"name": "B", "password_hash": HASH}}
    raw = {"operators": operators, "lines": [{"id": "s", "name": "S", "queue": queue, **line_keys}]}
    return msgspec.convert(raw, LinesFile)


def test_clean_config_has_no_finding() -> None:
    assert doctor() == []


def test_the_demo_file_errs_only_on_its_demo_logins_and_the_production_starter_has_no_operator() -> None:
    findings = diagnose(load(ROOT / "deploy" / "lines.example.toml"))
    errors = [(f.code, f.key) for f in findings if f.severity == "error"]
    assert errors == [("operator-demo-password", f"operators.{op}.password_hash") for op in ("anna", "boris", "admin")]
    starter = load(ROOT / "deploy" / "k8s" / "lines.toml")  # what compose and Kubernetes deploy by default
    assert starter.operators == {}


def test_a_password_published_with_the_software_is_an_error_and_a_real_one_is_not() -> None:
    hasher = PasswordHasher()
    ops = {"demo": hasher.hash("demo"), "admin": hasher.hash("admin"), "real": hasher.hash("x7!Kq-lantern-93-harbour")}
    extra = "\n".join(f'[operators.{k}]\nname = "{k}"\npassword_hash = "{v}"' for k, v in ops.items())
    found = doctor(operators=OPERATORS + extra)
    demo = {f.key: f for f in found if f.code == "operator-demo-password"}
    assert set(demo) == {"operators.demo.password_hash", "operators.admin.password_hash"}
    assert all(f.severity == "error" and "hash-password" in f.fix for f in demo.values())
    assert "'admin'" in demo["operators.admin.password_hash"].problem


def test_every_finding_has_a_problem_and_a_fix() -> None:
    findings = doctor(
        line(queue="wait_seconds = 200\nskip_offline = false", crm="enabled = true\ncreate = 'none'", session="rating = true")
    )
    assert findings
    for f in findings:
        assert f.problem and f.fix and f.key


# operators and queue membership


def test_queue_operator_without_permission_is_an_error_on_the_operator() -> None:
    ops = {"a": {"name": "A", "password_hash": HASH}, "boris": {"name": "B", "password_hash": HASH, "permissions": []}}
    f = only(diagnose(unchecked({"operators": ["a", "boris"]}, ops)), "operator-no-permission")
    assert (f.severity, f.line, f.key) == ("error", "s", "operators.boris.permissions")
    assert "openlines" in f.fix


def test_queue_operator_not_declared_is_an_error() -> None:
    f = only(diagnose(unchecked({"operators": ["a", "b", "ghost"]})), "queue-operator-unknown")
    assert (f.severity, f.key) == ("error", "lines[0].queue.operators")
    assert "ghost" in f.problem


def test_queue_operator_without_a_desk_role_never_answers() -> None:
    ops = {"a": {"name": "A", "password_hash": HASH}, "b": {"name": "B", "password_hash": HASH, "roles": ["admin"]}}
    f = only(diagnose(unchecked({"operators": ["a", "b"]}, ops)), "operator-no-desk-role")
    assert (f.severity, f.key) == ("warning", "operators.b.roles")


def test_supervisor_in_a_queue_is_fine() -> None:
    ops = OPERATORS.replace('name = "Boris"', 'name = "Boris"\nroles = ["supervisor"]')
    assert doctor(operators=ops) == []


def test_operator_with_permission_in_no_queue_sees_no_chats() -> None:
    extra = '\n[operators.vera]\nname = "Vera"\npassword_hash = "' + HASH + '"\n'
    f = only(doctor(operators=OPERATORS + extra), "operator-in-no-queue")
    assert (f.severity, f.line, f.key) == ("info", "", "operators.vera")
    assert "sees no chats" in f.problem or "see no chats" in f.problem


def test_admin_without_permission_outside_queues_is_fine() -> None:
    extra = '\n[operators.root]\nname = "Root"\npassword_hash = "' + HASH + '"\nroles = ["admin"]\npermissions = []\n'
    assert doctor(operators=OPERATORS + extra) == []


def test_operator_without_password_cannot_log_in() -> None:
    ops = OPERATORS.replace(f'password_hash = "{HASH}"', "", 1)
    f = only(doctor(operators=ops), "operator-no-password")
    assert (f.severity, f.key) == ("warning", "operators.anna.password_hash")
    assert "cannot log in" in f.problem
    assert "hash-password" in f.fix


def test_plain_text_password_is_flagged() -> None:
    ops = OPERATORS.replace(HASH, "hunter2", 1)
    f = only(doctor(operators=ops), "operator-password-not-hashed")
    assert f.key == "operators.anna.password_hash"


def test_empty_queue_is_an_error() -> None:
    findings = doctor(line(operators="[]"), operators='[operators.anna]\nname = "A"\npassword_hash = "' + HASH + '"\n')
    f = only(findings, "queue-empty")
    assert (f.severity, f.line, f.key) == ("error", "support", "lines[0].queue.operators")


def test_line_without_channels_is_a_warning() -> None:
    f = only(doctor(line(channels="[]")), "line-no-channels")
    assert (f.severity, f.key) == ("warning", "lines[0].channels")


def test_one_operator_queue_has_no_one_to_reassign_to() -> None:
    ops = OPERATORS.split("[operators.boris]")[0]
    f = only(doctor(line(operators='["anna"]'), operators=ops), "queue-one-operator")
    assert (f.severity, f.key) == ("warning", "lines[0].queue.operators")


# queue values


@pytest.mark.parametrize(("seconds", "flagged"), [(29, True), (30, False), (45, False), (60, False), (61, True), (600, True)])
def test_wait_seconds_outside_30_60_is_a_warning(seconds: int, flagged: bool) -> None:
    findings = doctor(line(queue=f"wait_seconds = {seconds}"))
    assert ("queue-wait-seconds" in codes(findings)) is flagged
    if flagged:
        f = only(findings, "queue-wait-seconds")
        assert (f.severity, f.key) == ("warning", "lines[0].queue.wait_seconds")
        assert "30" in f.fix and "60" in f.fix


def test_no_wait_time_is_an_error() -> None:
    cfg = unchecked({"operators": ["a", "b"], "wait_seconds": 0})
    f = only(diagnose(cfg), "queue-wait-seconds")
    assert f.severity == "error"
    assert "no wait time" in f.problem


@pytest.mark.parametrize(("chats", "flagged"), [(1, True), (2, True), (3, False), (5, False), (6, True)])
def test_max_chats_outside_3_5_is_a_warning(chats: int, flagged: bool) -> None:
    findings = doctor(line(queue=f"max_chats_per_operator = {chats}"))
    assert ("queue-max-chats" in codes(findings)) is flagged
    if flagged:
        assert only(findings, "queue-max-chats").key == "lines[0].queue.max_chats_per_operator"


def test_max_chats_zero_is_an_error() -> None:
    cfg = unchecked({"operators": ["a", "b"], "max_chats_per_operator": 0})
    assert only(diagnose(cfg), "queue-max-chats").severity == "error"


def test_no_reassignment_on_status_change_leaves_chats_hanging() -> None:
    f = only(doctor(line(queue='reassign_on_status = "none"')), "queue-no-reassign")
    assert (f.severity, f.key) == ("warning", "lines[0].queue.reassign_on_status")
    assert "hang" in f.problem


def test_offline_operators_not_skipped_is_a_warning() -> None:
    f = only(doctor(line(queue="skip_offline = false")), "queue-offline-not-skipped")
    assert f.key == "lines[0].queue.skip_offline"


@pytest.mark.parametrize(("grace", "flagged"), [(0, False), (300, False), (301, True)])
def test_presence_grace_over_five_minutes_is_a_warning(grace: int, flagged: bool) -> None:
    findings = doctor(line(queue=f"presence_grace_seconds = {grace}"))
    assert ("queue-presence-grace" in codes(findings)) is flagged


def test_crm_responsible_mode_without_crm_always_falls_back() -> None:
    f = only(doctor(line(queue='mode = "crm_responsible"')), "queue-crm-responsible-without-crm")
    assert f.key == "lines[0].queue.mode"


# hours

OPEN = 'enabled = true\ntimezone = "Europe/Riga"\nweekly = { mon = ["09:00-18:00"] }'
CLOSED_TEXT = 'outside_hours = "We are closed."'


def test_hours_set_up_well_have_no_finding() -> None:
    assert doctor(line(hours=OPEN, replies=CLOSED_TEXT)) == []


def test_outside_hours_text_with_hours_disabled_is_never_sent() -> None:
    f = only(doctor(line(replies=CLOSED_TEXT)), "hours-text-but-disabled")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.outside_hours")
    assert "never sent" in f.problem


def test_schedule_with_hours_disabled_is_ignored() -> None:
    f = only(doctor(line(hours='weekly = { mon = ["09:00-18:00"] }')), "hours-schedule-but-disabled")
    assert f.key == "lines[0].hours.enabled"


def test_hours_without_outside_text_leave_clients_in_silence() -> None:
    f = only(doctor(line(hours=OPEN)), "hours-no-outside-text")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.outside_hours")
    assert "silence" in f.problem


def test_hours_without_weekly_spans_never_open() -> None:
    f = only(doctor(line(hours='enabled = true\ntimezone = "Europe/Riga"', replies=CLOSED_TEXT)), "hours-never-open")
    assert (f.severity, f.key) == ("error", "lines[0].hours.weekly")


def test_hours_whose_only_days_are_off_never_open() -> None:
    f = only(doctor(line(hours=OPEN + '\ndays_off = ["mon"]', replies=CLOSED_TEXT)), "hours-never-open")
    assert f.key == "lines[0].hours.days_off"


def test_hours_in_default_utc_are_pointed_out() -> None:
    hours = 'enabled = true\nweekly = { mon = ["09:00-18:00"] }'
    f = only(doctor(line(hours=hours, replies=CLOSED_TEXT)), "hours-timezone-utc")
    assert (f.severity, f.key) == ("info", "lines[0].hours.timezone")


def test_redirect_to_a_line_with_hours_is_a_chain() -> None:
    first = line(id="sales", hours=OPEN + '\noutside = "redirect"\nredirect_line = "support"', replies=CLOSED_TEXT)
    second = line(id="support", channels='[{ channel = "webchat", account = "other" }]', hours=OPEN, replies=CLOSED_TEXT)
    f = only(doctor(first, second), "hours-redirect-chain")
    assert (f.severity, f.line, f.key) == ("warning", "sales", "lines[0].hours.redirect_line")


def test_redirect_to_an_always_open_line_is_fine() -> None:
    first = line(id="sales", hours=OPEN + '\noutside = "redirect"\nredirect_line = "support"', replies=CLOSED_TEXT)
    second = line(id="support", channels='[{ channel = "webchat", account = "other" }]')
    assert doctor(first, second) == []


def test_redirect_to_a_missing_line_is_an_error() -> None:
    hours = {"enabled": True, "weekly": {"mon": ["09:00-18:00"]}, "outside": "redirect", "redirect_line": "nope"}
    f = only(diagnose(unchecked({"operators": ["a", "b"]}, hours=hours)), "hours-redirect-target")
    assert (f.severity, f.key) == ("error", "lines[0].hours.redirect_line")


def test_hold_until_open_without_any_text_holds_in_silence() -> None:
    findings = doctor(line(hours=OPEN + '\noutside = "hold_until_open"', welcome=""))
    f = only(findings, "hours-hold-without-text")
    assert (f.severity, f.key) == ("warning", "lines[0].hours.outside")


def test_hold_until_open_with_outside_text_is_fine() -> None:
    assert doctor(line(hours=OPEN + '\noutside = "hold_until_open"', replies=CLOSED_TEXT)) == []


# auto-replies


def test_no_welcome_means_no_answer_at_once() -> None:
    f = only(doctor(line(welcome="")), "auto-reply-no-welcome")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.welcome")
    assert "{client_name}" in f.fix


def test_tell_position_without_text_is_a_warning() -> None:
    f = only(doctor(line(queue="tell_position = true")), "auto-reply-no-queue-position")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.queue_position")
    assert "{position}" in f.fix


def test_tell_position_with_text_is_fine() -> None:
    assert doctor(line(queue="tell_position = true", replies='queue_position = "You are number {position}."')) == []


def test_rating_without_request_text_is_a_warning() -> None:
    f = only(doctor(line(session="rating = true")), "auto-reply-no-rating-request")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.rating_request")


def test_rating_request_without_rating_is_never_sent() -> None:
    f = only(doctor(line(replies='rating_request = "Rate us"')), "auto-reply-rating-request-unused")
    assert f.severity == "info"


def test_unknown_template_field_is_sent_as_written() -> None:
    f = only(doctor(line(replies='closing = "Bye {clientname}"')), "auto-reply-template")
    assert (f.severity, f.key) == ("warning", "lines[0].auto_replies.closing")
    assert "{clientname}" in f.problem


def test_position_field_belongs_to_queue_position_only() -> None:
    f = only(doctor(line(replies='closing = "You were number {position}"')), "auto-reply-template")
    assert f.key == "lines[0].auto_replies.closing"


def test_stray_brace_in_template_is_flagged() -> None:
    f = only(doctor(line(replies='closing = "Bye :-{"')), "auto-reply-template")
    assert "brace" in f.problem


# session


def test_sessions_that_never_close_are_info() -> None:
    f = only(doctor(line(auto_close=0)), "session-never-closes")
    assert (f.severity, f.key) == ("info", "lines[0].session.auto_close_minutes")


@pytest.mark.parametrize(("minutes", "flagged"), [(1, True), (9, True), (10, False)])
def test_auto_close_under_ten_minutes_is_a_warning(minutes: int, flagged: bool) -> None:
    findings = doctor(line(auto_close=minutes))
    assert ("session-auto-close" in codes(findings)) is flagged
    if flagged:
        assert only(findings, "session-auto-close").severity == "warning"


# crm

CRM_OK = 'enabled = true\nsource_ids = { webchat = "OPENLINE" }'


def test_crm_set_up_well_has_no_finding() -> None:
    assert doctor(line(crm=CRM_OK)) == []


def test_crm_disabled_ignores_crm_settings() -> None:
    assert doctor(line(crm='create = "none"\nlink_repeat_contacts = false')) == []


def test_crm_on_but_creation_off() -> None:
    f = only(doctor(line(crm=CRM_OK + '\ncreate = "none"')), "crm-create-none")
    assert (f.severity, f.key) == ("warning", "lines[0].crm.create")
    assert "leads will not be created automatically" in f.problem


def test_repeat_contact_linking_off_creates_duplicates() -> None:
    f = only(doctor(line(crm=CRM_OK + "\nlink_repeat_contacts = false")), "crm-no-repeat-linking")
    assert (f.severity, f.key) == ("warning", "lines[0].crm.link_repeat_contacts")
    assert "duplicate" in f.problem


@pytest.mark.parametrize(
    ("channel", "source"),
    [("telegram", "TELEGRAM"), ("vk", "VK"), ("webchat", "OPENLINE"), ("email", "EMAIL"), ("whatsapp", "WHATSAPP")],
)
def test_crm_without_explicit_source_id_names_the_default(channel: str, source: str) -> None:
    findings = doctor(line(channels=f'[{{ channel = "{channel}", account = "main" }}]', crm="enabled = true"))
    f = only(findings, "crm-default-source-id")
    assert (f.severity, f.key) == ("info", "lines[0].crm.source_ids")
    assert f"'{source}'" in f.problem and channel in f.problem


def test_source_id_for_an_unbound_channel_is_unused() -> None:
    f = only(doctor(line(crm='enabled = true\nsource_ids = { webchat = "OPENLINE", vk = "VK" }')), "crm-source-id-unused")
    assert f.key == "lines[0].crm.source_ids.vk"


def test_crm_responsible_not_declared() -> None:
    f = only(doctor(line(crm=CRM_OK + '\nresponsible = "ghost"')), "crm-responsible-unknown")
    assert f.key == "lines[0].crm.responsible"


def test_findings_come_line_by_line_then_operators() -> None:
    extra = '\n[operators.vera]\nname = "Vera"\n'
    findings = doctor(line(id="a", queue="skip_offline = false"), line(id="b", channels="[]"), operators=OPERATORS + extra)
    assert [f.line for f in findings] == ["a", "b", "", ""]


def test_a_line_whose_operators_cannot_sign_in_is_an_error_not_a_pass() -> None:
    nobody = """
[operators.anna]
name = "Anna"

[operators.boris]
name = "Boris"
password_hash = "not-a-hash"
"""
    f = only(doctor(operators=nobody), "line-nobody-can-answer")
    assert f.severity == "error" and f.line == "support"
    assert "'anna' has no usable password_hash" in f.problem and "'boris' has no usable password_hash" in f.problem
    # One operator who can answer is enough.
    assert "line-nobody-can-answer" not in codes(doctor())


def test_accounts_the_gateways_serve_are_read_from_their_settings(tmp_path: Path) -> None:
    mailboxes = tmp_path / "mailboxes.toml"
    mailboxes.write_text('[[mailboxes]]\naccount = "support"\nimap_host = "x"\n')
    env = {
        "OPENLINES_TELEGRAM_BOTS": '{"bots": [{"account": "shop"}]}',
        "OPENLINES_VK_GROUPS": "/nonexistent.json",  # unreadable: the gateway says why at its start
        "OPENLINES_EMAIL_MAILBOXES": str(mailboxes),
        "OPENLINES_ACCOUNTS": "demo, site",
    }
    assert accounts_from_env(env) == {"telegram": {"shop"}, "email": {"support"}, "webchat": {"demo", "site"}}
    found = diagnose(parse(OPERATORS + line()), accounts=accounts_from_env(env))
    unbound = sorted(f.key for f in found if f.code == "channel-account-unbound")
    assert unbound == ["email/support", "telegram/shop", "webchat/site"]  # webchat/demo feeds the line


def test_a_whatsapp_account_without_templates_is_a_warning_and_with_them_is_not() -> None:
    bare = line(channels='[{ channel = "whatsapp", account = "shop_wa" }]')
    f = only(doctor(bare), "whatsapp-no-templates")
    assert (f.severity, f.line, f.key) == ("warning", "support", "lines[0].channels[0].templates")
    assert "'shop_wa'" in f.problem and "24-hour window" in f.problem
    templated = line(
        channels='[{ channel = "whatsapp", account = "shop_wa", templates = [{ name = "follow_up", text = "Hi {{1}}" }] }]'
    )
    assert "whatsapp-no-templates" not in codes(doctor(templated))
    assert "whatsapp-no-templates" not in codes(doctor())  # a webchat line needs none


def test_whatsapp_accounts_are_read_from_the_gateway_settings(tmp_path: Path) -> None:
    numbers = tmp_path / "whatsapp.toml"
    numbers.write_text('[[apps]]\nid = "main"\n[[numbers]]\naccount = "shop_wa"\nphone_number_id = "1"\n')
    assert accounts_from_env({"OPENLINES_WHATSAPP_ACCOUNTS": str(numbers)}) == {"whatsapp": {"shop_wa"}}
    inline = '{"apps": [{"id": "main"}], "numbers": [{"account": "a"}, {"account": "b"}]}'
    found = diagnose(parse(OPERATORS + line()), accounts=accounts_from_env({"OPENLINES_WHATSAPP_ACCOUNTS": inline}))
    assert sorted(f.key for f in found if f.code == "channel-account-unbound") == ["whatsapp/a", "whatsapp/b"]


# SLA


def test_a_first_response_target_within_the_no_answer_wait_is_a_warning() -> None:
    findings = doctor(line() + "[lines.sla]\nfirst_response_seconds = 40\n")
    f = only(findings, "sla-first-response-short")
    assert (f.severity, f.key) == ("warning", "lines[0].sla.first_response_seconds")
    assert "wait_seconds = 45" in f.problem
    assert "sla-first-response-short" not in codes(doctor(line() + "[lines.sla]\nfirst_response_seconds = 120\n"))
    assert "sla-first-response-short" not in codes(doctor(line()))  # no target: nothing to say
