"""Keep credentials given in a source URL out of every message and log line.

A source's user name and password are registered once it is parsed; every
line the CLI prints or logs then goes through `redact`, so even an error
text built by dulwich or urllib3 (which may repeat the URL) is clean.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

MASK = "***"
_secrets: set[str] = set()
# userinfo in any URL-looking text: scheme://user[:pass]@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def register_secret(secret: str | None) -> None:
    """Mask `secret` (and its percent-encoded and decoded forms) from now on."""
    if not secret or len(secret) < 2:  # masking single letters would garble text
        return
    for form in (secret, unquote(secret), quote(secret, safe="")):
        _secrets.add(form)


def clear_secrets() -> None:
    _secrets.clear()


def redact(text: str) -> str:
    """`text` with URL user info masked and every registered secret replaced."""

    def userinfo(m: re.Match[str]) -> str:
        scheme, info = m["scheme"], m["userinfo"]
        if scheme.lower().startswith("ssh") and ":" not in info:
            return m[0]  # ssh://user@host: a login name, not a secret
        if scheme.lower().startswith("ssh"):
            return f"{scheme}{info.split(':', 1)[0]}:{MASK}@"
        return f"{scheme}{MASK}@"

    text = _USERINFO.sub(userinfo, text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
