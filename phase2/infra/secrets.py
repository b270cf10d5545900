"""The one definition of a secret, used for logs, W&B config and webhook messages alike.

A secret is the value of an environment variable whose name looks like a credential, or the
user:password part of a URL. Config keys named like a credential never leave the process.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|WEBHOOK", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values that must never appear in output: env vars named like credentials (longest first)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret value and URL credential masked."""
    for value in secret_values():
        text = text.replace(value, MASK)
    return _URL_CREDENTIALS.sub(MASK + "@", text)


def without_secret_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (nested dicts too) without keys named like a credential, and every string value
    redacted: what may go to W&B."""
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if is_secret_name(str(key)):
            continue
        if isinstance(value, dict):
            clean[key] = without_secret_keys(value)
        elif isinstance(value, str):
            clean[key] = redact(value)
        else:
            clean[key] = value
    return clean


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it sees (attach to a logger or handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True
