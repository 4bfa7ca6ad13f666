"""Which remote and branch a push or pull talks to, and what the image remembers of it.

A root record's remote field holds `URL BRANCH` (FORMAT.md, section 3): the URL without
credentials (they are given again on the command line, or by ssh's and git's usual means),
then the branch's short name (`main` for refs/heads/main). `docteur make --capacity` of a
git source records the source and the branch it fetched (when it fetched a branch), with
the fetched commit as the last synced one; push and pull update it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import BuildError
from ..source import Source, parse_source

HEADS = b"refs/heads/"


@dataclass(frozen=True)
class Remote:
    source: Source  # what the client is given (credentials kept, if typed)
    url: str  # what the image records: no credentials
    branch: str  # short name: main

    @property
    def ref(self) -> bytes:
        return HEADS + self.branch.encode()

    @property
    def record(self) -> str:
        return f"{self.url} {self.branch}"

    @property
    def display(self) -> str:
        return f"{self.source.display} {self.branch}"


def public_url(url: str) -> str:
    """`url` without its password, and without a user name where one is a secret
    (http(s)/git tokens); an ssh login name stays (it says whom to connect as)."""
    if "://" not in url:
        return url  # a path, or scp-like user@host:path
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    scheme = parts.scheme.lower()
    keep_user = scheme.startswith("ssh") or scheme.endswith("ssh")
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if keep_user and parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def branch_name(ref: str) -> str:
    """`-b main` or `-b refs/heads/main` -> `main`; anything else is not a branch."""
    name = ref.removeprefix("refs/heads/")
    if not name or name.startswith(("refs/", "/", "-")) or name.endswith("/") or " " in name:
        raise BuildError(f"bad branch {ref!r}: give a branch name (main) or refs/heads/NAME")
    if any(c in name for c in "~^:?*[\\") or ".." in name or "@{" in name or name.endswith(".lock"):
        raise BuildError(f"bad branch {ref!r}: not a valid git branch name")
    return name


def parse_record(text: str) -> tuple[str, str] | None:
    """(URL, branch) of a root's remote field; None when none is recorded."""
    url, _, branch = text.rpartition(" ")
    return (url, branch) if url and branch else None


def resolve(recorded: str, url: str | None, branch: str | None) -> Remote:
    """The remote of a push or pull: the command line's, else the image's record (its
    branch too when the URL is the recorded one)."""
    known = parse_record(recorded)
    if url is None:
        if known is None:
            raise BuildError("the image records no remote: give one (and -b BRANCH)")
        url = known[0]
    source = parse_source(url)
    if source.kind == "directory":
        raise BuildError(f"{source.display}: not a git repository")
    public = public_url(source.location)
    if branch is None:
        if known is None or known[0] != public:
            raise BuildError(f"no branch recorded for {source.display}: give -b BRANCH")
        branch = known[1]
    return Remote(source, public, branch_name(branch))


def is_recorded(remote: Remote, recorded: str) -> bool:
    """Is `remote` the one the image's record names (so its synced commit applies)?"""
    return parse_record(recorded) == (remote.url, remote.branch)
