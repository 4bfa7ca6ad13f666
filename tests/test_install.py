"""docteur installed (not editable) into a fresh virtualenv, run from another directory:
no checkout, no build/ beside the code; the guest comes from --kernel/--initrd or the
user's cache ($XDG_CACHE_HOME/docteur/guest/<key>).

Quick: the wheel's build backend (setuptools>=68, as pyproject.toml asks) comes from pip's
cache, filled by `make setup`; the wheel is installed without dependencies, and the new
venv sees this one's site-packages (dulwich, qemu.qmp...) through a .pth file added after
the install (so pip never sees this venv's editable docteur).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from docteur.vm.guestbuild import initramfs
from tests.support.git import cat_blobs, ls_tree
from tests.support.vm import GUEST, needs_vm

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                   check=True, capture_output=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("install")
    src = base / "src"  # a copy: building in the checkout would leave build/lib and egg-info there
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    wheels = base / "wheels"
    _pip("wheel", "--no-deps", "-w", str(wheels), str(src))
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl")))
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (Path(site) / "zz_docteur_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no checkout in sight, and an empty cache."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cache").mkdir()
    return tmp_path


def installed(venv: Path, where: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCTEUR_")}
    environ.update(XDG_CACHE_HOME=str(where / "cache"), **env)
    return subprocess.run([str(venv / "bin" / "docteur"), *args], cwd=where / "cwd", env=environ,
                          capture_output=True, timeout=600)  # fmt: skip


def readme(repo: Path) -> bytes:
    oid = next(o for _, _, o, p in ls_tree(repo) if p == b"README.md")
    return cat_blobs(repo, [oid])[oid]


def test_installed_copy_is_used(venv: Path, elsewhere: Path) -> None:
    proc = subprocess.run([venv / "bin" / "python", "-c", "import docteur.vm; print(docteur.vm.__file__)"],
                          cwd=elsewhere / "cwd", capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.startswith(str(venv)), proc.stdout


def test_unix_target_and_guest_info_without_a_guest(venv: Path, elsewhere: Path, gen) -> None:
    repo, image = gen
    proc = installed(venv, elsewhere, "run", "--target", "unix", str(image), "--filename", "/README.md")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == readme(repo)
    info = installed(venv, elsewhere, "guest", "info")
    assert info.returncode == 0, info.stderr
    out = info.stdout.decode()
    assert f"{elsewhere / 'cache' / 'docteur' / 'guest'}\n" in out
    assert "not built yet" in out
    path = installed(venv, elsewhere, "guest", "path")
    assert path.returncode == 1 and b"no guest built yet" in path.stderr and b"Traceback" not in path.stderr
    assert not (elsewhere / "cache" / "docteur" / "guest").exists()  # asking builds nothing


def fresh_checkout_guest() -> dict[str, object]:
    """The checkout's guest, rebuilt when its code changed since `make guest`."""
    manifest = initramfs.is_built(GUEST)
    if not manifest or manifest.get("code") != initramfs.code_hash():
        manifest = initramfs.build(GUEST.parent)
    return manifest


@needs_vm
@pytest.mark.vm
def test_microvm_with_prebuilt_and_cached_guest(venv: Path, elsewhere: Path, gen) -> None:
    repo, image = gen
    manifest = fresh_checkout_guest()
    want = readme(repo)
    # --kernel/--initrd: the files given, no guest built into the cache (only the run's
    # snapshot is kept there).
    proc = installed(venv, elsewhere, "run", str(image), "--filename", "/README.md",
                     "--kernel", str(GUEST / "vmlinuz"), "--initrd", str(GUEST / "initrd"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want
    cache = elsewhere / "cache" / "docteur"
    assert sorted(p.name for p in cache.iterdir()) == ["snapshots"]
    assert len(list((cache / "snapshots").glob("*.state"))) == 1
    half = installed(venv, elsewhere, "run", str(image), "--filename", "/a",
                     "--kernel", str(GUEST / "vmlinuz"))  # fmt: skip
    assert half.returncode == 1 and b"both --kernel and --initrd" in half.stderr, half.stderr
    # The cache: the guest `docteur guest build` would have put there (same code, same key).
    key = elsewhere / "cache" / "docteur" / "guest" / str(manifest["inputs"])
    key.mkdir(parents=True)
    for name in ("vmlinuz", "initrd", "manifest.json"):
        shutil.copyfile(GUEST / name, key / name)
    proc = installed(venv, elsewhere, "run", str(image), "--filename", "/README.md")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want
    assert installed(venv, elsewhere, "guest", "path").stdout.decode().strip() == str(key)
    info = installed(venv, elsewhere, "guest", "info").stdout.decode()
    assert str(manifest["inputs"]) in info and str(manifest["kernel_release"]) in info
    assert json.loads((key / "manifest.json").read_text())["sha256"]["initrd"] in info
