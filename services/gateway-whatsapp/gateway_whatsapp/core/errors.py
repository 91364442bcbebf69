"""What a Cloud API error means for a send: wait and retry, retry, or give up with a reason an operator understands.

Decided on the error ``code`` (and HTTP status when there is no code), as Meta
recommends ("build your app's error handling logic around code values and
details"); the titles in ``message`` are for people. Pure: the sender applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Throughput of the business number (130429), the WhatsApp Business Account (80007) or the app (4):
# every chat of the number slows down.
NUMBER_THROTTLE = frozenset({130429, 80007, 4})
# Pair rate: too many messages to the same client in a short time (131056): only that chat waits.
USER_THROTTLE = frozenset({131056})
# Temporary on Meta's side: try again with backoff.
TRANSIENT = frozenset({1, 2, 131000, 131016, 133004})
WINDOW_CLOSED = 131047
UNDELIVERABLE = 131026
TOKEN_EXPIRED = 190

Kind = Literal["throttle_number", "throttle_user", "transient", "permanent"]


@dataclass(frozen=True, slots=True)
class GraphFailure:
    """A Cloud API error as the gateway reads it (from an answer or a status callback)."""

    status: int = 0  # HTTP status; 0 in a webhook
    code: int = 0
    subcode: int = 0
    message: str = ""  # "(#131047) Re-engagement message" - the code's title
    details: str = ""  # error_data.details: the likely reason
    fbtrace_id: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reason: str  # what the operator reads when the message is given up
    code: int = 0
    window_closed: bool = False


def classify(f: GraphFailure) -> Verdict:
    code = f.code
    if code in NUMBER_THROTTLE:
        return Verdict("throttle_number", _text(f), code)
    if code in USER_THROTTLE:
        return Verdict("throttle_user", _text(f), code)
    if code in TRANSIENT or (not code and (f.status >= 500 or f.status in (0, 408, 429))):
        return Verdict("transient", _text(f), code)
    return Verdict("permanent", reason(f), code, window_closed=code == WINDOW_CLOSED)


def reason(f: GraphFailure) -> str:
    """Why a message did not reach the client, as the operator should read it."""
    if f.code == WINDOW_CLOSED:
        return (
            "not delivered: the client's 24-hour window is closed - WhatsApp delivers only an approved message template"
            f" until the client writes again (WhatsApp error {WINDOW_CLOSED})"
        )
    if f.code == UNDELIVERABLE:
        return (
            "not delivered: WhatsApp could not deliver it - the number may not be on WhatsApp, or the client's app is"
            f" outdated or has not accepted WhatsApp's terms (WhatsApp error {UNDELIVERABLE})"
        )
    if f.code == TOKEN_EXPIRED:
        return (
            "not sent: the access token of this WhatsApp number expired or was revoked - renew it in"
            f" OPENLINES_WHATSAPP_ACCOUNTS (WhatsApp error {TOKEN_EXPIRED})"
        )
    return f"not delivered: {_text(f)}"


def _text(f: GraphFailure) -> str:
    title = f.message.strip() or f"HTTP {f.status}"
    if f.code and f"#{f.code}" not in title:
        title = f"{title} (WhatsApp error {f.code})"
    details = f.details.strip()
    text = f"{title}: {details}" if details and details not in title else title
    return text[:500]
