"""What `docteur make` reads from: a remote Git URL, a local repository or a directory.

https://, http://, git://, ssh://, user@host:path  -> remote Git
file://ABS, relativize://DIR, a plain path        -> local: a work tree (DIR/.git),
                                                     a bare repository, or a plain directory
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from docteur.cli.redact import redact, register_secret

from .errors import BuildError

REMOTE_SCHEMES = ("https", "http", "git", "ssh", "git+ssh", "ssh+git")
# scp-like `[user@]host:path`: a colon before any slash, and a host of at least two
# characters (so `C:` style names and `./a:b` stay paths).
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:\[\]]{2,}|\[[^\]]+\]):(?P<path>.*)$")


@dataclass(frozen=True)
class Source:
    kind: str  # "remote" | "local-git" | "directory"
    location: str  # what dulwich is given (a URL with credentials, or a path)
    display: str  # what messages show: credentials masked

    @property
    def is_git(self) -> bool:
        return self.kind in ("remote", "local-git")


def parse_source(text: str, cwd: str | None = None) -> Source:
    cwd = os.getcwd() if cwd is None else cwd
    if not text:
        raise BuildError("bad source: empty")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if m:
        scheme = m[1].lower()
        if scheme in REMOTE_SCHEMES:
            return _remote_url(text, scheme)
        rest = text[m.end() :]
        if scheme == "file":
            if rest.startswith("localhost/"):  # file://localhost/abs is file:///abs
                rest = rest[len("localhost") :]
            if not rest.startswith("/"):
                raise BuildError(f"bad URL {redact(text)!r}: file:// takes an absolute path")
            return local_source(rest)
        if scheme == "relativize":
            if not rest:
                raise BuildError("bad URL 'relativize://': no directory")
            return local_source(os.path.join(cwd, rest))
        raise BuildError(f"bad URL {redact(text)!r}: unsupported scheme {scheme}://")
    scp = _SCP.match(text)
    if scp and not os.path.exists(os.path.join(cwd, text)):
        if not scp["path"]:
            raise BuildError(f"bad URL {text!r}: no path after the colon")
        return Source("remote", text, text)
    return local_source(os.path.join(cwd, text))


def _remote_url(text: str, scheme: str) -> Source:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise BuildError(f"bad URL {redact(text)!r}: {e}") from None
    if not parts.hostname:
        raise BuildError(f"bad URL {redact(text)!r}: no host")
    if parts.password:
        register_secret(parts.password)
    if parts.username and scheme in ("https", "http", "git"):
        register_secret(parts.username)  # often a token: https://TOKEN@host/
    if not parts.path.strip("/"):
        raise BuildError(f"bad URL {redact(text)!r}: no repository path")
    return Source("remote", text, redact(text))


def local_source(path: str) -> Source:
    path = os.path.abspath(path)
    if not os.path.lexists(path):
        raise BuildError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        raise BuildError(f"{path}: not a directory (nor a Git repository)")
    if os.path.lexists(os.path.join(path, ".git")) or is_bare_repository(path):
        return Source("local-git", path, path)
    return Source("directory", path, path)


def is_bare_repository(path: str) -> bool:
    """What git checks: HEAD, objects/ and refs/ (no dulwich needed for that)."""
    return (
        os.path.isfile(os.path.join(path, "HEAD"))
        and os.path.isdir(os.path.join(path, "objects"))
        and os.path.isdir(os.path.join(path, "refs"))
    )
