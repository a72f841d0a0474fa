"""Values from claims, made safe to put in a log line.

Claim names, namespaces and opaque config values come from any namespace
user. A newline in one would forge a log line, an escape sequence would
rewrite a terminal, and a 5 MB value would become a 5 MB line per kubelet
retry; so control characters are escaped and values are capped, as the
kubelet answer already is (4 KiB).
"""

from __future__ import annotations

import re

MAX_LOG_VALUE_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """text with every control character (C0, DEL, C1, line separators) escaped."""
    return _CONTROL.sub(_escape_one, text)


def clip(text: str, limit: int = MAX_LOG_VALUE_BYTES, marker: str = "...") -> str:
    """text escaped and cut to at most limit UTF-8 bytes, marker included."""
    if len(text) > limit:  # never escape megabytes only to throw them away
        text = text[:limit]
    safe = escape(text)
    data = safe.encode()
    if len(data) <= limit:
        return safe
    return data[: limit - len(marker.encode())].decode(errors="ignore") + marker
