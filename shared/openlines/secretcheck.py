"""Refuse secrets that are short, placeholders or examples, before a service starts with one.

A placeholder that passes a length check (``change-me-to-32-random-characters``)
is as good as no secret: it is published in the manifests it came from, so
anyone can sign a desk cookie or a visitor token with it. Every service checks
its secrets at start-up with :func:`check_secret`; the error names the variable
and how to make a good value.
"""

from __future__ import annotations

import re

MIN_KEY_CHARS = 32  # HMAC keys (cookies, visitor tokens)
MIN_WEBHOOK_CHARS = 16  # secrets a platform echoes back on each webhook call
MIN_DISTINCT = 8  # fewer different characters than this is a pattern, not a random string

MAKE_ONE = "make one with `openssl rand -hex 32` (or `python3 -c 'import secrets; print(secrets.token_hex(32))'`)"

# Words the shipped examples and the usual documentation placeholders use.
_PLACEHOLDER = re.compile(
    r"change[-_ ]?me|changeit|placeholder|replace[-_ ]?(me|this|with)|example|your[-_ ]|put[-_ ]|"
    r"insert[-_ ]|fill[-_ ]?in|todo|xxxx|random[-_ ]characters|long[-_ ]random[-_ ]string|^(secret|password)\d*$",
    re.IGNORECASE,
)


class WeakSecret(ValueError):
    pass


def problem(value: str, min_chars: int = MIN_KEY_CHARS) -> str | None:
    """Why ``value`` is not a usable secret, or None."""
    if not value:
        return "it is empty"
    if len(value) < min_chars:
        return f"it is {len(value)} characters; at least {min_chars} are needed"
    if _PLACEHOLDER.search(value):
        return "it is a placeholder or an example value, published with the software"
    if len(set(value)) < MIN_DISTINCT:
        return f"it has fewer than {MIN_DISTINCT} different characters: a pattern, not a random string"
    return None


def check_secret(variable: str, value: str, min_chars: int = MIN_KEY_CHARS) -> None:
    """Raise :class:`WeakSecret` naming ``variable`` if ``value`` is not a usable secret."""
    why = problem(value, min_chars)
    if why is not None:
        raise WeakSecret(f"{variable} is not a usable secret: {why}; {MAKE_ONE}")
