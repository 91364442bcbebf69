"""A setting that holds a list of accounts (bots, numbers) inline or in a file.

The value of such a variable (``OPENLINES_TELEGRAM_BOTS``,
``OPENLINES_WHATSAPP_ACCOUNTS``) is either inline JSON (it starts with ``[`` or
``{``) or the path of a ``.toml`` file (read as TOML) or of any other file (read
as JSON). Errors name the variable or the file, never the content: it holds
tokens and secrets.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec


def read_list_setting(value: str, variable: str, error: type[Exception]) -> Any:
    """The decoded content of ``variable``'s ``value``; ``error(message)`` when it is empty, unreadable or undecodable."""
    text = value.strip()
    if not text:
        raise error(f"{variable} is empty: give inline JSON or the path of a .json/.toml file")
    if text[0] in "[{":
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise error(f"{variable} is not valid JSON: {exc}") from None
    path = Path(text)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise error(f"{path}: not valid TOML: {exc}") from None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
