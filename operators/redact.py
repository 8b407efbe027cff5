"""Passwords out of text: every log line and error message that may quote a DSN or URL.

libpq quotes a malformed connection string back in its error (`missing "=" after
"postgresql//user:pw@host/db"`), a settings repr holds the DSN, a client error names its URL.
Two layers: patterns mask what looks like a password wherever it stands (the userinfo of a URL,
`password=...`), and the passwords of the configured DSN, registry URL and Kafka settings
(`remember_secrets`) are masked verbatim, which catches one that libpq quotes alone
(`unexpected spaces found in "pass word"`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_REMEMBERED = 4  # shorter values would mask common words in every message
# `scheme://user:password@host`, also with the scheme mistyped (`postgresql//u:pw@h`); greedy:
# a password may hold an unencoded `@`, and what ends at the token's last `@` is all masked.
_USERINFO = re.compile(r"(?P<user>[\w.%+-]+:)(?P<secret>[^\s'\"/]*)(?=@)")
_URL_USERINFO = re.compile(r"(?P<user>\w[\w+.-]*://[^\s:/@'\"]*:)(?P<secret>[^\s'\"/]*)(?=@)")
# `password=...`, `"sasl.password": "..."`, `?password=...` (quoted values whole)
_KEY_VALUE = re.compile(
    r"(?P<user>(?:password|passwd|pwd|secret)['\"]?\s*[=:]\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s,;&)}'\"]+)",
    re.IGNORECASE)
_PATTERNS = (_URL_USERINFO, _USERINFO, _KEY_VALUE)
# a whole URL's password, up to the last `@` before the path: even one libpq refuses (a space)
_WHOLE_URL = re.compile(r"\s*\w[\w+.-]*://[^:/@]*:(?P<secret>[^/]*)@")
_remembered: set[str] = set()


def redact(text: str) -> str:
    """`text` with every password it holds replaced by `***`."""
    for pattern in _PATTERNS:
        text = pattern.sub(_masked, text)
    for secret in _remembered:
        text = text.replace(secret, MASK)
    return text


def _masked(match: re.Match[str]) -> str:
    return match.group("user") + (MASK if match.group("secret") else "")


def passwords_in(text: str) -> list[str]:
    """The passwords a DSN or URL holds (its userinfo, `password=` values), quotes removed."""
    whole = _WHOLE_URL.match(text)
    found = [whole.group("secret")] if whole else []
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            secret = match.group("secret").strip("'\"")
            if secret and secret != MASK:
                found.append(secret)
    return found


def remember_secrets(connection_strings: Iterable[str | None],
                     kafka_settings: Mapping[str, str]) -> None:
    """Mask, verbatim, the passwords of `connection_strings` (a DSN, a registry URL) and every
    Kafka setting named like a password or secret (`REPLICATE_KAFKA_SASL_PASSWORD`)."""
    values = [p for text in connection_strings if text for p in passwords_in(text)]
    values += [value for name, value in kafka_settings.items()
               if any(word in name.upper() for word in ("PASSWORD", "SECRET"))]
    _remembered.update(v for v in values if len(v) >= MIN_REMEMBERED)
