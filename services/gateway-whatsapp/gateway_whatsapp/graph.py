"""The WhatsApp Business Cloud API (Graph API) calls the gateway makes, over one aiohttp session.

- ``POST /{version}/{phone-number-id}/messages`` - send a message; answers the wamid
- ``POST /{version}/{phone-number-id}/media`` - upload a file (multipart); answers its media id
- ``GET /{version}/{media-id}`` - a client's file: a short-lived URL, type, sha256, size
- ``GET <that URL>`` with the bearer token - the bytes
- ``GET /{version}/{phone-number-id}`` - the number's profile (the CLI's check)

Every call carries the number's access token as ``Authorization: Bearer``.
An error answer (``{"error": {"message", "type", "code", "error_subcode",
"error_data": {"details"}, "fbtrace_id"}}``) raises :class:`GraphError`;
no answer, a timeout or an unreadable answer raises :class:`GraphUnavailable`.
Nothing is ever fetched from a URL a webhook names: the media URL comes from
the API's own answer, and must be on the API's origin or an allowed https host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from gateway_whatsapp.accounts import Number
from gateway_whatsapp.core.errors import GraphFailure
from openlines.edge import TooLarge, read_limited
from openlines.envelopes import BAD_JSON


class GraphError(Exception):
    """The Cloud API answered with an error."""

    def __init__(self, failure: GraphFailure) -> None:
        super().__init__(f"{failure.status} #{failure.code}: {failure.message}")
        self.failure = failure


class GraphUnavailable(Exception):
    """No usable answer (network, timeout, not JSON): worth trying again."""


class MediaRefused(Exception):
    """A client's file the gateway will not fetch or keep (too large, wrong host, checksum mismatch); permanent."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    url: str
    mime_type: str
    sha256: str
    file_size: int


def _failure(status: int, body: Any) -> GraphFailure:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return GraphFailure(status=status, message=f"HTTP {status}")
    data = err.get("error_data")
    code, sub = err.get("code"), err.get("error_subcode")
    return GraphFailure(
        status=status,
        code=code if type(code) is int else 0,
        subcode=sub if type(sub) is int else 0,
        message=str(err.get("message") or f"HTTP {status}")[:300],
        details=str(data.get("details", "") if isinstance(data, dict) else "")[:500],
        fbtrace_id=str(err.get("fbtrace_id") or "")[:100],
    )


class Graph:
    def __init__(
        self,
        base: str,
        version: str,
        *,
        timeout: float,
        media_timeout: float,
        media_hosts: frozenset[str],
    ) -> None:
        self.base = base.rstrip("/")
        self.version = version
        self.timeout = timeout
        self.media_timeout = media_timeout
        self.media_hosts = media_hosts
        parts = urlsplit(self.base)
        self.origin = (parts.scheme, parts.netloc.lower())
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookies, no proxies from the environment: every call is ours alone.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, *parts: str) -> str:
        return "/".join([self.base, self.version, *(quote(p, safe="") for p in parts)])

    async def _call(
        self, method: str, url: str, number: Number, *, json: Any = None, data: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {number.token}"}
        try:
            async with (
                asyncio.timeout(timeout or self.timeout),
                self._http().request(method, url, json=json, data=data, headers=headers, allow_redirects=False) as resp,
            ):
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GraphUnavailable(f"{type(exc).__name__}: {exc}".strip(": ")) from None
        try:
            body: Any = msgspec.json.decode(raw) if raw else {}
        except BAD_JSON:
            body = None
        if status >= 400:
            raise GraphError(_failure(status, body))
        if not isinstance(body, dict):
            raise GraphUnavailable(f"HTTP {status}: the answer is not a JSON object")
        return body

    async def send(self, number: Number, payload: dict[str, Any]) -> str:
        """Send one message; its wamid."""
        body = await self._call("POST", self.url(number.phone_number_id, "messages"), number, json=payload)
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            raise GraphUnavailable("the send was answered without a message id")
        return wamid

    async def upload(self, number: Number, data: bytes, mime: str, filename: str) -> str:
        """Upload an operator's file for sending; its media id."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime)
        form.add_field("file", data, filename=filename, content_type=mime)
        body = await self._call("POST", self.url(number.phone_number_id, "media"), number, data=form, timeout=self.media_timeout)
        media_id = body.get("id")
        if not isinstance(media_id, str | int) or not str(media_id):
            raise GraphUnavailable("the upload was answered without a media id")
        return str(media_id)

    async def media_info(self, number: Number, media_id: str) -> MediaInfo:
        url = self.url(media_id) + f"?phone_number_id={quote(number.phone_number_id, safe='')}"
        body = await self._call("GET", url, number)
        size = body.get("file_size")
        try:
            file_size = int(size) if size is not None else 0
        except (TypeError, ValueError):
            file_size = 0
        return MediaInfo(
            url=str(body.get("url") or ""),
            mime_type=str(body.get("mime_type") or ""),
            sha256=str(body.get("sha256") or ""),
            file_size=file_size,
        )

    def media_url_allowed(self, url: str) -> bool:
        """A media URL is fetched (with the token) only on the API's own origin or an allowed https host."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.username or parts.password:
            return False
        if (parts.scheme, parts.netloc.lower()) == self.origin:
            return True
        return parts.scheme == "https" and (parts.hostname or "").lower() in self.media_hosts

    async def download(self, number: Number, url: str, max_bytes: int) -> bytes:
        """The bytes behind a media URL (redirects are not followed: the URL must be the file's)."""
        if not self.media_url_allowed(url):
            host = urlsplit(url).hostname or "?"
            raise MediaRefused(
                f"the media URL is on {host}, not on the Graph API nor an allowed host (OPENLINES_WHATSAPP_MEDIA_HOSTS)"
            )
        headers = {"Authorization": f"Bearer {number.token}"}
        try:
            async with (
                asyncio.timeout(self.media_timeout),
                self._http().get(url, headers=headers, allow_redirects=False) as resp,
            ):
                if resp.status >= 400:
                    raw = await resp.content.read(65536)
                    try:
                        body: Any = msgspec.json.decode(raw)
                    except BAD_JSON:
                        body = None
                    raise GraphError(_failure(resp.status, body))
                if resp.status != 200:
                    raise MediaRefused(f"the media URL answered {resp.status} (redirects are not followed)")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise MediaRefused(f"the file is {resp.content_length} bytes; at most {max_bytes} are kept")
                try:
                    return await read_limited(resp.content, max_bytes)
                except TooLarge:
                    raise MediaRefused(f"the file is larger than {max_bytes} bytes, the most kept") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GraphUnavailable(f"{type(exc).__name__}: {exc}".strip(": ")) from None

    async def phone_number(self, number: Number) -> dict[str, Any]:
        fields = "display_phone_number,verified_name,quality_rating,code_verification_status,throughput"
        return await self._call("GET", self.url(number.phone_number_id) + f"?fields={fields}", number)
