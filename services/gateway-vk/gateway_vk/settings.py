"""Settings of the VK gateway (``OPENLINES_*`` environment variables) and the community list.

The communities come from ``OPENLINES_VK_GROUPS``: either inline JSON (starts
with ``[`` or ``{``) or the path of a ``.json`` / ``.toml`` file. Each entry is
``{account, group_id, token, secret, confirmation}``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from openlines import admission, secretcheck, subjects
from openlines.settings import BaseSettings

DEFAULT_API_URL = "https://api.vk.ru"
# VK's own domains: the only hosts a file link in a callback is fetched from (and uploads go to).
DEFAULT_FILE_HOSTS = "vk.com,vk.ru,userapi.com,vkuser.net,vk-cdn.net,vkuserphoto.ru,vkuseraudio.net,vkuservideo.net,mycdn.me"
GROUPS_VAR = "OPENLINES_VK_GROUPS"


class Community(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One VK community (group) served by this gateway."""

    account: str  # our channel account: the line binding and the URL path /vk/<account>
    group_id: int  # VK's positive community id
    token: str  # community access token with the "messages" permission
    secret: str  # the Callback API "secret key"; every event must carry it
    confirmation: str = ""  # confirmation string; empty = ask groups.getCallbackConfirmationCode

    def __repr__(self) -> str:  # tokens and secrets stay out of logs and tracebacks
        return f"Community(account={self.account!r}, group_id={self.group_id})"


class _GroupsFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    groups: list[Community]


class GroupsError(ValueError):
    pass


def parse_groups(value: str, *, base: Path | None = None) -> dict[str, Community]:
    """``OPENLINES_VK_GROUPS`` -> {account: community}, validated."""
    text = value.strip()
    raw: Any
    try:
        if not text:
            return {}
        if text[0] in "[{":
            raw = msgspec.json.decode(text)
        else:
            path = Path(text)
            if base is not None and not path.is_absolute():
                path = base / path
            content = path.read_bytes()
            raw = tomllib.loads(content.decode("utf-8")) if path.suffix == ".toml" else msgspec.json.decode(content)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.DecodeError) as exc:
        raise GroupsError(f"{GROUPS_VAR}: cannot read the community list: {exc}") from None
    try:
        groups = msgspec.convert(raw, list[Community]) if isinstance(raw, list) else msgspec.convert(raw, _GroupsFile).groups
    except msgspec.ValidationError as exc:
        raise GroupsError(f"{GROUPS_VAR}: {exc}") from None
    out: dict[str, Community] = {}
    seen_groups: set[int] = set()
    for i, g in enumerate(groups):
        where = f"{GROUPS_VAR}: groups[{i}]"
        try:
            subjects.token(g.account, "account")
        except subjects.BadToken as exc:
            raise GroupsError(f"{where}: {exc}") from None
        if g.account in out:
            raise GroupsError(f"{where}: account {g.account!r} is listed twice")
        if g.group_id <= 0:
            raise GroupsError(f"{where}: group_id must be the community's positive id")
        if g.group_id in seen_groups:
            raise GroupsError(f"{where}: group_id {g.group_id} is listed twice")
        if not g.token:
            raise GroupsError(f"{where}: token must be set (a community token with the messages permission)")
        if not g.secret:
            raise GroupsError(f"{where}: secret must be set (the Callback API secret key of the community)")
        weak = secretcheck.problem(g.secret, secretcheck.MIN_WEBHOOK_CHARS)
        if weak:
            raise GroupsError(f"{where}: secret is not a usable Callback API secret key: {weak}; {secretcheck.MAKE_ONE}")
        seen_groups.add(g.group_id)
        out[g.account] = g
    return out


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8084
    vk_groups: str = ""  # inline JSON or a .json/.toml path; see docs/channels/vk.md
    vk_api_url: str = DEFAULT_API_URL  # base URL of the VK API (a local peer in tests)
    vk_api_version: str = "5.199"
    vk_rate: float = 20.0  # API requests per second per community token
    vk_concurrency: int = 4  # API calls in flight per community = its threads for the synchronous vk_api
    vk_timeout: float = 15.0  # seconds for one API HTTP request
    vk_max_text: int = 9000  # characters per messages.send; longer replies are split
    max_body: int = 1024 * 1024  # bytes of one Callback API request (413 above)
    publish_timeout: float = 5.0
    # Admission at the Callback API edge (docs/channels/vk.md, "Overload"): beyond these, 503 + Retry-After.
    max_in_flight: int = admission.DEFAULT_MAX_IN_FLIGHT  # callback requests being handled at once per replica
    max_waiting: int = admission.DEFAULT_MAX_WAITING  # more that may wait for a slot
    admission_wait: float = admission.DEFAULT_WAIT  # seconds one may wait
    retry_after: int = admission.DEFAULT_RETRY_AFTER  # seconds, the Retry-After of a refusal
    profile_timeout: float = 1.5  # the webhook answer waits at most this long for users.get
    profile_ttl: float = 6 * 3600.0  # seconds a looked-up name is kept in memory
    consumer: str = "gateway-vk"  # durable consumer on OL_OUT (shared by the replicas)
    ack_wait: float = 60.0
    retry_base: float = 0.5  # first backoff of a retryable API error, doubled per attempt
    retry_max: float = 30.0  # longest backoff inside one delivery attempt
    retry_attempts: int = 5  # API tries inside one delivery before the message is handed back to JetStream
    redeliver_delay: float = 60.0  # ...which redelivers it after this many seconds
    max_deliveries: int = 10  # JetStream deliveries before a retryable failure counts as permanent
    # Files (docs/channels/vk.md, "Files"). Clients' files are fetched before the message is published.
    vk_file_hosts: str = DEFAULT_FILE_HOSTS  # hosts (and their subdomains, https) file links may point to
    vk_file_max_bytes: int = 50 * 1024 * 1024  # larger client files stay on VK's servers
    vk_file_timeout: float = 10.0  # seconds to fetch one client file (or upload one operator file)
    vk_upload_max_bytes: int = 50 * 1024 * 1024  # operator files larger than this are not sent
    files_max_age_days: float = 90  # how long clients' files are kept in ol-vk-files (0 = forever)
    vk_sent_ttl: float = 30 * 24 * 3600.0  # how long a sent reply waits in ol-vk-sent to be marked read

    def __post_init__(self) -> None:
        if self.vk_rate <= 0 or self.vk_concurrency < 1:
            raise ValueError("OPENLINES_VK_RATE must be > 0 and OPENLINES_VK_CONCURRENCY >= 1")
        if self.vk_max_text < 100:
            raise ValueError("OPENLINES_VK_MAX_TEXT must be >= 100")
        if not self.vk_api_url.startswith(("http://", "https://")):
            raise ValueError("OPENLINES_VK_API_URL must be an http(s) URL")
        if self.vk_file_max_bytes < 0 or self.vk_upload_max_bytes < 1 or self.vk_file_timeout <= 0:
            raise ValueError(
                "OPENLINES_VK_FILE_MAX_BYTES must be >= 0, OPENLINES_VK_UPLOAD_MAX_BYTES >= 1, OPENLINES_VK_FILE_TIMEOUT > 0"
            )
        if self.files_max_age_days < 0:
            raise ValueError("OPENLINES_FILES_MAX_AGE_DAYS must be >= 0")
        for entry in self.file_hosts():
            if "://" in entry and not entry.startswith(("http://", "https://")):
                raise ValueError(f"OPENLINES_VK_FILE_HOSTS: {entry!r} is neither a host name nor an http(s) origin")
        self.limits()  # raises with the variables named
        # Parsed here so a bad list stops the start with the variable named.
        parse_groups(self.vk_groups)

    def limits(self) -> admission.Limits:
        return admission.Limits(self.max_in_flight, self.max_waiting, self.admission_wait, self.retry_after)

    def file_hosts(self) -> tuple[str, ...]:
        """Host names (with their subdomains, https only) and exact origins (``http://127.0.0.1:8080``)."""
        return tuple(h.strip().lower().rstrip("/") for h in self.vk_file_hosts.split(",") if h.strip())

    def communities(self) -> dict[str, Community]:
        return parse_groups(self.vk_groups)

    def public(self) -> dict[str, object]:
        out = super().public()
        # Inline JSON carries tokens and secrets: show only what is not secret.
        out["vk_groups"] = {a: c.group_id for a, c in self.communities().items()}
        return out
