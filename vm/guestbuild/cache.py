"""Where `docteur run` finds the guest's kernel and initramfs, building it on first use.

In order: --kernel/--initrd (or DOCTEUR_KERNEL/DOCTEUR_INITRD), both or neither; a build
directory named by DOCTEUR_BUILD (or --build-dir); a checkout's `build/guest` when `make
guest` built it; else the user's cache, `$XDG_CACHE_HOME/docteur/guest/<inputs hash>/`
(default ~/.cache), built there on first use. A cached guest built by this docteur's code
is used as it is, whatever apt's lists say today (no apt call on each run); `docteur guest
build` takes the packages apt offers now and builds a new one when they changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from docteur.cli.errors import HostError

if TYPE_CHECKING:
    from docteur.vm.guestbuild import debian

# The builder (initramfs, debian) is imported only to build or hash: booting a built guest
# loads none of it.

BUILD_ENV = "DOCTEUR_BUILD"  # a build directory holding guest/ (the checkout's `make guest`)
KERNEL_ENV, INITRD_ENV = "DOCTEUR_KERNEL", "DOCTEUR_INITRD"  # prebuilt artifacts
CHECKOUT_BUILD = Path(__file__).resolve().parents[2] / "build"  # only a checkout has it


class GuestError(HostError):
    """No guest to boot, or one that cannot be built."""


def cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative value is invalid and ignored.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "docteur"


def guest_root() -> Path:
    return cache_home() / "guest"


def is_built(out: Path) -> dict[str, object] | None:
    """The manifest of a complete guest directory, or None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outputs, list) or not all((out / str(f)).is_file() for f in outputs):
        return None
    return manifest


def find_cached() -> Path | None:
    """The newest cached guest built from this docteur's guest code, if any."""
    from docteur.vm.guestbuild import initramfs

    code = initramfs.code_hash()
    found: list[tuple[float, Path]] = []
    try:
        entries = list(guest_root().iterdir())
    except OSError:
        return None
    for d in entries:
        if d.name.startswith("."):  # a build under way, or the lock
            continue
        manifest = is_built(d)
        if manifest and manifest.get("code") == code:
            found.append(((d / "manifest.json").stat().st_mtime, d))
    return max(found)[1] if found else None


def build(force: bool = False, manifest: Path | None = None) -> Path:
    """Build into the cache (under a lock: concurrent first uses build once) and return the
    guest directory. Built in a temporary directory beside it, then renamed: a reader
    sees a complete guest or none."""
    import fcntl

    from docteur.vm.guestbuild import debian, initramfs

    root = guest_root()
    try:
        wanted = initramfs.read_manifest(manifest) if manifest else None
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if wanted:
                packages = initramfs.manifest_packages(wanted, str(manifest))
            else:
                packages = initramfs.current_packages()
            out = root / initramfs.inputs_hash(packages)
            if is_built(out) and not force:
                initramfs.say(f"up to date ({out})", always=True)
            else:
                _build_beside(out, packages)
    except (debian.AptError, initramfs.ManifestError, RuntimeError) as exc:
        raise GuestError(f"guest build failed: {exc}") from None
    if wanted:
        try:
            initramfs.check_same_bytes(out, wanted, str(manifest))
        except initramfs.ManifestError as exc:
            raise GuestError(str(exc)) from None
    return out


def _build_beside(out: Path, packages: list[debian.Package]) -> None:
    import shutil
    import tempfile

    from docteur.vm.guestbuild import initramfs

    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        initramfs.produce(tmp, cache_home() / "debs", packages, out)
        if out.exists():  # --force: the old one leaves first (a dir cannot be renamed onto)
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=out.parent))
            out.rename(old / "guest")
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure() -> Path:
    """A cached guest for this code, built now if there is none."""
    found = find_cached()
    if found:
        return found
    from docteur.vm.guestbuild import initramfs

    initramfs.say(f"no guest built yet: building it into {guest_root()} (once)")
    return build()


def locate(build_dir: Path | None = None, *, build_missing: bool = True) -> Path | None:
    """The guest directory `docteur run` boots; see the module docstring. Without
    `build_missing`, None where a build would be needed."""
    explicit = build_dir or os.environ.get(BUILD_ENV)
    if explicit:
        base = Path(explicit) / "guest"
        if not is_built(base):
            raise GuestError(f"guest not built in {base}: run `make guest` or unset {BUILD_ENV}")
        return base
    if is_built(CHECKOUT_BUILD / "guest"):
        return CHECKOUT_BUILD / "guest"
    return ensure() if build_missing else find_cached()


def prebuilt(kernel: str | Path | None, initrd: str | Path | None) -> tuple[Path, Path] | None:
    """--kernel/--initrd, else DOCTEUR_KERNEL/DOCTEUR_INITRD: both files, or None."""
    if kernel is None and initrd is None:
        kernel, initrd = os.environ.get(KERNEL_ENV) or None, os.environ.get(INITRD_ENV) or None
        what = f"{KERNEL_ENV} and {INITRD_ENV}"
    else:
        what = "--kernel and --initrd"
    if kernel is None and initrd is None:
        return None
    if kernel is None or initrd is None:  # the initramfs holds the kernel's own modules
        raise GuestError(f"give both {what}: the initramfs holds the modules of its kernel")
    paths = Path(kernel), Path(initrd)
    for p in paths:
        if not p.is_file():
            raise GuestError(f"{p}: no such file")
    return paths


def artifacts(build_dir: Path | None = None) -> tuple[Path, Path]:
    """(kernel, initrd) to boot."""
    given = prebuilt(None, None)
    if given:
        return given
    base = locate(build_dir)
    assert base is not None
    return base / "vmlinuz", base / "initrd"


def describe(where: Path | None) -> dict[str, str]:
    """`docteur guest info`: what `docteur run` boots (nothing is built by asking)."""
    from docteur.vm.guestbuild import initramfs

    info = {"cache": str(guest_root()), "code": initramfs.code_hash()[:16]}
    given = prebuilt(None, None)
    if given:
        return {**info, "kernel": str(given[0]), "initrd": str(given[1]), "from": "the environment"}
    if where is None:
        return {**info, "guest": "not built yet (`docteur guest build`, or on the first `docteur run`)"}
    manifest = is_built(where) or {}
    packages = manifest.get("packages")
    versions = packages if isinstance(packages, dict) else {}
    info.update(path=str(where), key=str(manifest.get("inputs", "?")),
                kernel_release=str(manifest.get("kernel_release", "?")))  # fmt: skip
    for name in ("vmlinuz", "initrd"):
        info[name] = f"{(where / name).stat().st_size} bytes, sha256 {manifest.get('sha256', {}).get(name)}"
    info.update({f"package {name}": str(version) for name, version in sorted(versions.items())})
    return info
