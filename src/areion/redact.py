"""Secrets out of text that came from elsewhere, before a client or a log sees it.

An upstream writes its own error bodies, and some echo what they were sent: the
`Authorization` header, the key they refused. Upstream text reaches tenants inside
Areion's error messages (and logs), so it passes through `redact` first: the
deployment's own credentials are masked wherever they appear, and so is anything
shaped like a credential (`Bearer <token>`, `sk-...`, `x-api-key: ...`, a long
random-looking value after `key`, `token`, `secret` or `password`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "redact"]

MASK = "[redacted]"

# A configured secret shorter than this is not searched for: it would mask ordinary
# words, and a key that short protects nothing anyway.
_MIN_SECRET = 4

# An Authorization scheme and its credential: `Bearer sk-...`, `Basic dXNlcjpw...`.
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=:-]{6,}")
# A header, JSON field or query parameter that names a credential, and its value.
_NAMED = re.compile(
    r"(?i)((?:x-)?api[-_]?key|authorization|access[-_]?token|refresh[-_]?token"
    r"|client[-_]?secret|password|passwd)"
    r"""(["']?\s*[:=]\s*["']?)(?!\[redacted\])(?:(?:bearer|basic|token)\s+)?[^\s"',;&}]+"""
)
# Well-known key shapes: OpenAI, Anthropic and Areion keys (`sk-`, `sk-ant-`, `ak-`),
# AWS access keys, GitHub, Slack and Google tokens.
_SHAPED = re.compile(
    r"\b(?:(?:sk|ak|pk|rk)-[A-Za-z0-9_-]{8,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{30,})"
)
# After `key`, `token` or `secret`: a value long and mixed enough to be random.
_AFTER_WORD = re.compile(
    r"(?i)\b((?:\w+[-_])?(?:key|token|secret))(\b[\"']?\s*[:=]?\s*[\"']?)([A-Za-z0-9._~+/=-]{16,})"
)
# Credentials in a URL: http://user:password@host.
_USERINFO = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")


def _random_looking(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _after_word(match: re.Match[str]) -> str:
    if not _random_looking(match.group(3)):
        return match.group(0)
    return match.group(1) + match.group(2) + MASK


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every one of `secrets`, and anything shaped like a credential,
    replaced by `[redacted]`."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(r"\1" + MASK + "@", text)
    text = _SCHEME.sub(r"\1\2" + MASK, text)
    text = _NAMED.sub(r"\1\2" + MASK, text)
    text = _SHAPED.sub(MASK, text)
    return _AFTER_WORD.sub(_after_word, text)
