"""The guest kernel and initramfs: `docteur guest build` (into the user's cache, cache.py)
or, in a checkout, `python -m docteur.vm.guestbuild --build-dir build` (`make guest`).

Output in a guest directory: vmlinuz (Debian's cloud kernel), initrd (an uncompressed
cpio: Debian's python3.11 + the stdlib modules the guest imports + docteur.guest + /init
+ the virtio modules) and manifest.json (the Debian packages used with their versions and
SHA-256, the code hash, the inputs hash, the outputs' SHA-256). Nothing is rebuilt while
the inputs hash (package versions, guest/ sources, this builder) is unchanged; a manifest
given back (`--from-manifest`) rebuilds from the very packages it lists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from docteur.vm.guestbuild import debian, guestpy
from docteur.vm.guestbuild.cache import is_built
from docteur.vm.guestbuild.cpio import Archive
from docteur.vm.guestbuild.elf import modinfo

PY_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "zlib1g", "libexpat1", "libffi8", "libssl3",
)  # fmt: skip
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console")
GUEST_SRC = Path(__file__).resolve().parents[2] / "guest"
# The builder's own code is an input too: a change to it must rebuild (not the cache's
# bookkeeping nor the entry point, which put no byte into the guest).
BUILDER_SRC = sorted(p for p in Path(__file__).resolve().parent.glob("*.py")
                     if p.name not in ("cache.py", "__main__.py"))  # fmt: skip
GUEST_PKG = f"{guestpy.STDLIB}/docteur"  # on the default sys.path: no site, no PYTHONPATH
INIT = "#!/usr/bin/python3.11 -IS\nfrom docteur.guest.pid1 import main\nmain()\n"
MTIME = 0


class ManifestError(RuntimeError):
    """A --from-manifest file that cannot be rebuilt from."""


def say(msg: str, always: bool = False) -> None:
    """Steps on a terminal; in a pipe (CI, make) only the one-line outcome."""
    if always or sys.stderr.isatty():
        print(f"guest: {msg}", file=sys.stderr, flush=True)


def _code() -> bytes:
    return b"".join(f"{src.name}\n".encode() + src.read_bytes()
                    for src in [*sorted(GUEST_SRC.glob("*.py")), *BUILDER_SRC])  # fmt: skip


def code_hash() -> str:
    """What this docteur puts into a guest besides Debian's packages: a built guest whose
    manifest has it can be used without asking apt anything."""
    return hashlib.sha256(_code()).hexdigest()


def inputs_hash(packages: list[debian.Package]) -> str:
    h = hashlib.sha256()
    for p in packages:
        h.update(f"{p.name}={p.version} {p.sha256}\n".encode())
    h.update(_code())
    return h.hexdigest()


def current_packages() -> list[debian.Package]:
    """The kernel first, then the interpreter's packages, as the host's apt lists offer them."""
    return debian.resolve([debian.kernel_name(), *PY_PACKAGES])


def manifest_packages(manifest: dict[str, object], source: str) -> list[debian.Package]:
    """The packages a manifest records, in build order; each must carry its SHA-256."""
    versions, sums = manifest.get("packages"), manifest.get("debs")
    if not isinstance(versions, dict) or not isinstance(sums, dict):
        raise ManifestError(f"{source}: no package versions and SHA-256 (a manifest of an older docteur?)")
    kernels = sorted(n for n in versions if n.startswith("linux-image-"))
    names = [*kernels, *PY_PACKAGES]
    if len(kernels) != 1 or set(names) != set(versions):
        raise ManifestError(f"{source}: lists {', '.join(sorted(versions))}; this docteur builds from "
                            f"one linux-image-* and {', '.join(PY_PACKAGES)}")  # fmt: skip
    missing = [n for n in names if not sums.get(n)]
    if missing:
        raise ManifestError(f"{source}: no SHA-256 for {', '.join(missing)}")
    return [debian.Package(n, str(versions[n]), str(sums[n])) for n in names]


def read_manifest(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{path}: not a guest manifest (not JSON)") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a guest manifest")
    return data


def check_same_bytes(out: Path, wanted: dict[str, object], source: str) -> None:
    """After a --from-manifest build: the outputs must be the manifest's, byte for byte,
    when everything that went in is the same (same packages, same docteur code)."""
    got = is_built(out) or {}
    if got.get("inputs") != wanted.get("inputs"):
        say(f"{source} was built by other guest code: same packages, other bytes", always=True)
        return
    if got.get("sha256") != wanted.get("sha256"):
        raise ManifestError(f"{out}: the rebuilt guest differs from {source} (sha256 "
                            f"{got.get('sha256')} vs {wanted.get('sha256')})")  # fmt: skip
    say(f"same bytes as {source}", always=True)


def module_order(root: Path, kver: str) -> list[Path]:
    """The virtio .ko files, each after the modules its .modinfo depends on."""
    base = root / "lib/modules" / kver / "kernel"
    paths = {m: next(base.rglob(f"{m}.ko")) for m in MODULES}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in filter(None, modinfo(paths[name]).get("depends", "").split(",")):
            if dep not in paths:
                raise RuntimeError(f"{name} needs module {dep}, not in the guest list")
            visit(dep)
        order.append(name)

    for m in MODULES:
        visit(m)
    return [paths[m] for m in order]


def add_tree_file(archive: Archive, root: Path, rel: str) -> None:
    path = root / rel
    if path.is_symlink():
        archive.symlink(rel, str(path.readlink()))
    else:
        mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
        archive.file(rel, path.read_bytes(), mode)


def base_archive() -> Archive:
    a = Archive()
    for d in ("dev", "proc", "sys", "tmp", "run"):
        a.directory(d)
    # Python opens /dev/urandom (and init the console) before devtmpfs is mounted.
    a.chardev("dev/console", 5, 1, 0o600)
    a.chardev("dev/null", 1, 3)
    a.chardev("dev/urandom", 1, 9)
    return a


def guest_archive(root: Path, kver: str, stage: Path) -> tuple[Archive, dict[str, object]]:
    a = base_archive()
    mods = module_order(root, kver)
    for ko in mods:
        a.file(f"lib/modules/{ko.name}", ko.read_bytes())
    a.file("lib/modules/docteur.order", "".join(f"/lib/modules/{k.name}\n" for k in mods).encode())

    # docteur.guest goes into the unpacked stdlib so the guest interpreter can trace it.
    pkg = root / GUEST_PKG
    shutil.rmtree(pkg, ignore_errors=True)
    (pkg / "guest").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    sources = sorted(GUEST_SRC.glob("*.py"))
    for src in sources:
        shutil.copyfile(src, pkg / "guest" / src.name)
    guest_mods = ["docteur.guest." + s.stem for s in sources if s.stem not in ("__init__", "__main__")]
    found = guestpy.trace(root, guest_mods, guestpy.imported_names(sources))

    jobs: list[tuple[Path, Path, str]] = []
    landmarks = [root / guestpy.STDLIB / f for f in guestpy.LANDMARKS]
    for origin in sorted({*found.values(), *landmarks}):
        rel = origin.relative_to(root)
        if origin.suffix == ".py":
            jobs.append((origin, stage / rel.with_suffix(".pyc"), f"/{rel}"))
    for py in sorted(pkg.rglob("*.py")):
        rel = py.relative_to(root)
        jobs.append((py, stage / rel.with_suffix(".pyc"), f"/{rel}"))
    shutil.rmtree(stage, ignore_errors=True)
    guestpy.compile_all(root, jobs)
    for pyc in sorted(stage.rglob("*.pyc")):
        a.file(str(pyc.relative_to(stage)), pyc.read_bytes())

    extensions = sorted(p for p in set(found.values()) if p.suffix == ".so")
    binaries = [root / "usr/bin/python3.11", *extensions]
    for p in binaries:
        a.file(str(p.relative_to(root)), p.read_bytes(), 0o755)
    for rel in [*guestpy.shared_libraries(root, binaries), *guestpy.symlink_chain(root, guestpy.LOADER)]:
        add_tree_file(a, root, rel)
    a.file("init", INIT.encode(), 0o755)
    info = {
        "modules": [k.stem for k in mods],
        "python_modules": sorted(found),
        "files": len(a.entries),
    }
    return a, info


def _write(path: Path, data: bytes) -> None:
    """Atomically: a VM booting meanwhile sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(build_dir: Path, force: bool = False, manifest: Path | None = None) -> dict[str, object]:
    """A checkout's guest, in place in BUILD_DIR/guest (downloads in BUILD_DIR/debs)."""
    out = build_dir.resolve() / "guest"  # the guest interpreter reports absolute paths
    out.mkdir(parents=True, exist_ok=True)
    wanted = read_manifest(manifest) if manifest else None
    # Several `make test` runs may share a checkout: one builder at a time, the
    # others then find it up to date.
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        packages = manifest_packages(wanted, str(manifest)) if wanted else current_packages()
        done = is_built(out)
        if force or not done or done.get("inputs") != inputs_hash(packages):
            done = produce(out, build_dir.resolve() / "debs", packages)
        else:
            say(f"up to date ({out})", always=True)
    if wanted:
        check_same_bytes(out, wanted, str(manifest))
    return done


def produce(out: Path, debs_dir: Path, packages: list[debian.Package],
            final: Path | None = None) -> dict[str, object]:  # fmt: skip
    """Build the guest from `packages` (the kernel first) into the directory `out` (to be
    renamed `final`, the path the log line names)."""
    kernel = packages[0]
    t0 = time.monotonic()
    say(f"kernel {kernel.name} {kernel.version}; downloading what {debs_dir} lacks")
    debs = debian.download(packages, debs_dir)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=out))
    try:
        root = scratch / "root"
        for deb in debs:
            debian.unpack(deb, root)
        kver = kernel.name.removeprefix("linux-image-")
        archive, info = guest_archive(root, kver, scratch / "pyc")
        # Uncompressed: under TCG the kernel gunzips the 11.5 MB archive in
        # ~0.25 s (level 6) and copies it raw in ~0.1 s; QEMU loads either at once.
        initrd = archive.cpio(MTIME)
        outputs = {"vmlinuz": (root / "boot" / f"vmlinuz-{kver}").read_bytes(), "initrd": initrd}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, data in outputs.items():
        _write(out / name, data)
    manifest = {
        "inputs": inputs_hash(packages),
        "code": code_hash(),
        "kernel_release": kver,
        "packages": {p.name: p.version for p in packages},
        "debs": {p.name: p.sha256 for p in packages},  # what --from-manifest checks downloads against
        "outputs": list(outputs),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in outputs.items()},
        **info,
    }
    _write(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    say(
        f"built {final or out}/initrd ({len(initrd) / 1e6:.1f} MB, {info['files']} entries, "
        f"{len(info['python_modules'])} stdlib modules) in {time.monotonic() - t0:.1f} s",  # type: ignore[arg-type]
        always=True,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docteur.vm.guestbuild", description=__doc__)
    parser.add_argument("--build-dir", type=Path, default=Path("build"))
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--from-manifest", type=Path, metavar="FILE",
                        help="rebuild from the package versions a manifest.json records")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        build(args.build_dir, args.force, args.from_manifest)
    except (debian.AptError, RuntimeError, OSError) as exc:
        print(f"guest build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
