"""Debian packages for the guest: resolve, download (cached), unpack.

Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`;
nothing is installed into the host. Versions are whatever the host's apt lists
offer at build time (the mirror churns), so each one is recorded by the caller.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ARCH = "amd64"


class AptError(RuntimeError):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # from the apt lists: checks the cached .deb too

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{ARCH}.deb"


def _run(args: list[str], *, quiet: bool = True, cwd: str | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            args, env=env, text=True, check=False, cwd=cwd,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.PIPE if quiet else None,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise AptError(f"{args[0]} not found: the guest is built from Debian packages") from exc
    if proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        raise AptError(f"{' '.join(args)} failed: {err[-1] if err else proc.returncode}")
    return proc.stdout or ""


def _stanzas(names: list[str]) -> dict[str, dict[str, str]]:
    """`apt-cache show` of several packages in one call (each call costs ~0.8 s)."""
    try:
        out = _run(["apt-cache", "show", "--no-all-versions", *names])
    except AptError:
        return {}
    found: dict[str, dict[str, str]] = {}
    for stanza in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace():
                key, _, value = line.partition(":")
                fields.setdefault(key, value.strip())
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def update_lists() -> None:
    """`apt-get update` for a fresh machine whose apt knows no packages yet."""
    if os.geteuid() != 0:
        raise AptError("apt knows no packages: run `apt-get update` as root first")
    _run(["apt-get", "update", "-qq"], quiet=not sys.stderr.isatty())


def resolve(names: list[str]) -> list[Package]:
    stanzas = _stanzas(names)
    missing = [n for n in names if "Version" not in stanzas.get(n, {})]
    if missing:
        raise AptError(f"not in the apt lists: {', '.join(missing)}")
    return [Package(n, stanzas[n]["Version"], stanzas[n].get("SHA256", "")) for n in names]


def kernel_name(meta: str = "linux-image-cloud-amd64") -> str:
    """The versioned kernel package behind the metapackage; runs `apt-get update`
    once when apt does not know the metapackage (fresh CI machine)."""
    for attempt in (1, 2):
        try:
            out = _run(["apt-cache", "depends", meta])
        except AptError:
            if attempt == 2:
                raise
            update_lists()
            continue
        for line in out.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "Depends" and value.startswith("linux-image-"):
                return value.strip()
        break
    raise AptError(f"{meta} depends on no linux-image package")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(packages: list[Package], cache: Path) -> list[Path]:
    """The .deb of each package, downloading only what the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [
        p for p in packages
        if not (cache / p.filename).exists()
        or (p.sha256 and _sha256(cache / p.filename) != p.sha256)
    ]  # fmt: skip
    if missing:
        tty = sys.stderr.isatty()
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            # apt drops privileges to _apt for downloads; it cannot write a root-owned
            # temp dir, so open it up rather than get a warning on every run.
            os.chmod(tmp, 0o777)
            args = ["apt-get", "download", *(f"{p.name}={p.version}" for p in missing)]
            if not tty:
                args.insert(1, "-qq")
            _run(args, quiet=not tty, cwd=tmp)
            for p in missing:
                got = Path(tmp) / p.filename
                if not got.exists():
                    raise AptError(f"apt-get download gave no {p.filename}")
                if p.sha256 and _sha256(got) != p.sha256:
                    raise AptError(f"{p.filename}: SHA-256 differs from the apt lists")
                shutil.move(got, cache / p.filename)
    return [cache / p.filename for p in packages]


def unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
