"""The guest build and QEMU command line, without booting anything."""

from __future__ import annotations

import gzip
import json
import stat
from pathlib import Path

import pytest

from docteur.vm.guestbuild import guestpy
from docteur.vm.guestbuild import initramfs as guestbuild
from docteur.vm.guestbuild.cpio import Archive
from docteur.vm.guestbuild.elf import needed
from docteur.vm.runtime import qemu
from tests.bench.initrds import bare_init
from tests.support.cli import DOCTEUR
from tests.support.vm import GUEST


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """path -> (mode, data, rdev), checking the newc framing on the way."""
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701", pos
        f = [int(data[pos + 6 + i * 8 : pos + 14 + i * 8], 16) for i in range(13)]
        name = data[pos + 110 : pos + 110 + f[11] - 1].decode()
        pos += 110 + f[11]
        pos += -pos % 4
        body = data[pos : pos + f[6]]
        pos += f[6] + (-(pos + f[6]) % 4)
        if name == "TRAILER!!!":
            assert len(data) % 512 == 0
            return out
        assert f[5] == 0 and f[2] == f[3] == 0  # mtime, uid, gid fixed
        out[name] = (f[1], body, (f[9], f[10]))


def test_cpio_is_reproducible_and_well_formed() -> None:
    def build(order: list[str]) -> Archive:
        a = Archive()
        for p in order:
            a.file(p, p.encode() * 3)
        a.chardev("dev/null", 1, 3)
        a.symlink("lib64/ld.so", "/lib/ld.so")
        return a

    one = build(["usr/bin/x", "a/b/c.txt", "init"])
    two = build(["init", "usr/bin/x", "a/b/c.txt"])
    assert one.gzip() == two.gzip()
    entries = parse_newc(gzip.decompress(one.gzip()))
    assert list(entries) == sorted(entries)  # directories before their content
    assert stat.S_ISDIR(entries["a/b"][0]) and entries["a/b/c.txt"][1] == b"a/b/c.txt" * 3
    assert stat.S_ISCHR(entries["dev/null"][0]) and entries["dev/null"][2] == (1, 3)
    assert stat.S_ISLNK(entries["lib64/ld.so"][0]) and entries["lib64/ld.so"][1] == b"/lib/ld.so"


def test_bare_init_is_a_static_elf(tmp_path: Path) -> None:
    path = tmp_path / "init"
    path.write_bytes(bare_init())
    assert needed(path) == []  # no PT_DYNAMIC: nothing to load


def test_imported_names_include_lazy_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom a.b import c\ndef f():\n    import mmap\nimport asyncio\n")
    assert guestpy.imported_names([src]) == {"os", "a.b", "?a.b.c", "mmap"}


@pytest.mark.skipif(not (GUEST / "manifest.json").exists(), reason="guest not built")
def test_built_guest_has_what_init_needs() -> None:
    manifest = json.loads((GUEST / "manifest.json").read_text())
    assert manifest["modules"] == list(guestbuild.MODULES)  # already in dependency order
    assert "linux-image-cloud-amd64" not in manifest["packages"]  # the versioned one
    assert any(p.startswith("linux-image-") for p in manifest["packages"])
    entries = parse_newc((GUEST / "initrd").read_bytes())
    for path in ("init", "usr/bin/python3.11", "lib64/ld-linux-x86-64.so.2", "dev/console",
                 "dev/urandom", "lib/modules/docteur.order", "usr/lib/python3.11/os.pyc",
                 "usr/lib/python3.11/docteur/guest/server.pyc",
                 "usr/lib/python3.11/docteur/guest/pid1.pyc"):  # fmt: skip
        assert path in entries, path
    assert not any("asyncio" in p or p.endswith(".py") for p in entries)


def test_command_line(tmp_path: Path) -> None:
    launch = qemu.Launch(kernel=tmp_path / "k", initrd=tmp_path / "i",
                         blocks={"docteur": tmp_path / "a,b.img"}, console_log=tmp_path / "log",
                         qmp_fd=5, port_fd=6, verify="full")  # fmt: skip
    argv = launch.argv("qemu")
    assert argv[:3] == ["qemu", "-M", "microvm"] and "-no-reboot" in argv
    assert f"id=d0,file={tmp_path}/a,,b.img,if=none,readonly=on,format=raw" in argv
    assert "virtio-blk-device,drive=d0,serial=docteur" in argv
    assert "virtserialport,chardev=port,name=org.docteur.0" in argv
    cmdline = argv[argv.index("-append") + 1]
    for word in ("panic=-1", "tsc_early_khz=", "docteur.verify=full", "docteur.blocks=docteur"):
        assert word in cmdline
    with pytest.raises(qemu.QemuError):
        qemu.check_block_name("no,commas")
    with pytest.raises(qemu.QemuError):
        qemu.check_block_name("x" * 21)


def test_accel_auto_needs_vmx_or_svm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "_cpu_flags", lambda: {"fpu", "sse2"})
    assert qemu.choose_accel("auto") == "tcg"
    assert qemu.choose_accel("kvm") == "kvm"  # forced: the user's choice
    monkeypatch.setattr(qemu, "_cpu_flags", lambda: {"vmx"})
    monkeypatch.setattr(qemu.os, "access", lambda *a: True)
    assert qemu.choose_accel("auto") == "kvm"


@pytest.mark.skipif(not (GUEST / "initrd").exists(), reason="guest not built")
def test_qemu_missing_is_one_line(tmp_path: Path) -> None:
    import subprocess

    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 4096)
    proc = subprocess.run(
        [*DOCTEUR, "run", str(image), "--filename", "/README.md"],
        env={"PATH": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "docteur: error: qemu-system-x86_64 not found: install qemu-system-x86 (make setup does)"
    ]
