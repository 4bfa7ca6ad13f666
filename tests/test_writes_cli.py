"""The writing commands end to end: make --capacity, grow, put, rm, mv, commit, log, export,
each through the real `docteur` command, checked through the store and through git."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from docteur.builder.defaults import DEFAULT_AUTHOR
from docteur.guest.objects import MODE_EXEC, MODE_FILE, MODE_LINK
from tests.support.git import git, needs_git
from tests.support.repos import make_repo, populate
from tests.support.writes import (
    DATE,
    committed,
    docteur,
    git_head_files,
    head_files,
    made,
    write_files,
)

pytestmark = needs_git

FILES = {"index.html": b"<p>front</p>\n", "docs/a.txt": b"a\n", "docs/deep/b.txt": b"b\n"}


def _data(listing: dict[str, tuple[int, bytes]]) -> dict[str, bytes]:
    return {path: data for path, (_, data) in listing.items()}


# -- room for writes -----------------------------------------------------------------------------
def test_the_first_generation_is_what_plain_make_writes(tmp_path: Path) -> None:
    src = write_files(tmp_path / "src", FILES)
    plain, roomy = tmp_path / "plain.img", tmp_path / "roomy.img"
    docteur("make", "-d", DATE, src, plain)
    docteur("make", "--capacity", "1M", "-d", DATE, src, roomy)
    first = plain.read_bytes()
    assert roomy.stat().st_size == 1 << 20
    assert roomy.read_bytes()[: len(first)] == first
    # Still so after writes and a compaction.
    docteur("put", roomy, "/new.txt", "-", input=b"new\n")
    docteur("compact", roomy)
    assert roomy.read_bytes()[: len(first)] == first
    # grow gives a plain image the same kind of room, the first generation untouched.
    docteur("grow", plain, "2M")
    assert plain.stat().st_size == 2 << 20 and plain.read_bytes()[: len(first)] == first
    committed(docteur("put", plain, "/new.txt", "-", input=b"new\n"))


def test_make_capacity_refuses_an_existing_read_only_image_and_a_too_small_size(tmp_path: Path) -> None:
    image = made(tmp_path, FILES, capacity=None)
    before = image.read_bytes()
    src = tmp_path / "src-w.img"
    for args, says in (  # an existing image is looked at before the source is
        (["--capacity", "8M"], f"{image} is an existing read-only image: docteur grow {image} SIZE"),
        (["--capacity", "12Q"], "not a size"),
    ):
        proc = docteur("make", *args, "-d", DATE, src, image, check=False)
        line = proc.stderr.decode().strip().splitlines()[-1]
        assert proc.returncode in (1, 2) and says in line, line
        assert image.read_bytes() == before
    # A new path: too small is one line, and nothing is left beside it.
    proc = docteur("make", "--capacity", "4K", "-d", DATE, src, tmp_path / "new.img", check=False)
    assert proc.returncode == 1 and "too small" in proc.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src-w.img", "w.img"]


def test_make_does_not_replace_an_image_holding_writes(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    docteur("make", "--capacity", "8M", "-d", DATE, tmp_path / "src-w.img", image)  # generation 0: replaced
    assert image.stat().st_size == 8 << 20
    committed(docteur("put", image, "/x", "-", input=b"x\n"))
    before = image.read_bytes()
    proc = docteur("make", "-d", DATE, tmp_path / "src-w.img", image, check=False)
    assert proc.returncode == 1 and "holds writes (generation 1)" in proc.stderr.decode()
    assert image.read_bytes() == before


# -- the commands ---------------------------------------------------------------------------------
def test_put_rm_mv_are_one_commit_each(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\n")
    script.chmod(0o755)
    c1 = committed(docteur("put", image, "/bin/run.sh", script, "-m", "a script"))
    with open(script, "rb") as f:  # stdin a regular file: its size is known, no spool
        c2 = committed(docteur("put", image, "/copy.sh", "-", stdin=f))
    c3 = committed(docteur("put", image, "/piped.txt", "-", input=b"through a pipe\n"))
    c4 = committed(docteur("rm", image, "/docs/deep"))
    c5 = committed(docteur("mv", image, "/index.html", "/docs", "--author", "Ann <ann@example.com>"))
    head, files = head_files(image)
    assert head == c5
    assert files == {
        "bin/run.sh": (MODE_EXEC, b"#!/bin/sh\n"),
        "copy.sh": (MODE_FILE, b"#!/bin/sh\n"),
        "piped.txt": (MODE_FILE, b"through a pipe\n"),
        "docs/a.txt": (MODE_FILE, b"a\n"),
        "docs/index.html": (MODE_FILE, b"<p>front</p>\n"),
    }
    assert not [p for p in tmp_path.iterdir() if ".docteur-" in p.name]  # the stdin spool is gone
    lines = docteur("log", image).stdout.decode().splitlines()
    assert [line.split()[:2] for line in lines] == [
        [str(n), c.hex()] for n, c in zip(range(5, 0, -1), [c5, c4, c3, c2, c1], strict=True)
    ] + [["0", lines[-1].split()[1]]]
    assert lines[0].split(" ", 3)[3] == "mv /index.html /docs"
    assert lines[-2].endswith(" a script") and lines[-1].split()[2] == "2024-01-01T00:00:00+00:00"
    repo = tmp_path / "check.git"
    _, by_git = git_head_files(image, repo)
    assert by_git == files
    who = git("log", "-2", "--format=%an <%ae>|%cn <%ce>", "main", cwd=repo).decode().split()
    assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>", "main", cwd=repo).decode().strip() == (
        "Ann <ann@example.com>|Ann <ann@example.com>"
    )
    assert " ".join(who).count(DEFAULT_AUTHOR) == 2  # the commit before: the default author


def test_commit_makes_a_directory_the_whole_tree(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    site = tmp_path / "site"
    populate(site, weird_names=False)
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("a nested repository is left out\n")
    big = os.urandom(3 << 20)
    (site / "big.bin").write_bytes(big)  # streamed
    oid = committed(docteur("commit", image, site, "-m", "deploy"))
    head, files = head_files(image)
    assert head == oid and files["big.bin"] == (MODE_FILE, big)
    assert files["bin/run.sh"][0] == MODE_EXEC and files[".hidden"] == (MODE_FILE, b"hidden file\n")
    assert files["link-to-readme"] == (MODE_LINK, b"README.md")
    assert files["bin/outside"] == (MODE_LINK, b"/etc/passwd")
    assert not any(p.startswith((".git/", "index.html", "docs/")) for p in files)
    # What git makes of the same directory is the same tree.
    work = tmp_path / "gitwork"
    git("init", "-q", work)
    git("--work-tree", site, "add", "-A", ".", cwd=work)
    tree = git("write-tree", cwd=work).decode().strip()
    repo = tmp_path / "export.git"
    docteur("export", image, repo)
    assert git("rev-parse", "main^{tree}", cwd=repo).decode().strip() == tree
    # The same directory again changes nothing: no commit, nothing on stdout, exit 0.
    before = image.read_bytes()
    proc = docteur("commit", image, site)
    assert proc.stdout == b"" and b"nothing changed, no commit" in proc.stderr
    assert image.read_bytes() == before


def test_commit_leaves_out_the_image_inside_the_directory(tmp_path: Path) -> None:
    site = write_files(tmp_path / "site", {"a.txt": b"a\n"})
    image = site / "site.img"
    docteur("make", "--capacity", "4M", "-d", DATE, site, image)
    (site / "b.txt").write_bytes(b"b\n")
    committed(docteur("commit", image, site))
    assert _data(head_files(image)[1]) == {"a.txt": b"a\n", "b.txt": b"b\n"}


def test_export_is_a_repository_git_checks_logs_and_pushes(tmp_path: Path) -> None:
    """A first generation fetched at depth 1 (its parents are not in the image), then batches."""
    repo = make_repo(tmp_path / "origin", history=3)
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", f"file://{repo}", image)
    commits = [committed(docteur("put", image, f"/n{i}.txt", "-", input=b"%d\n" % i)) for i in range(3)]
    commits.append(committed(docteur("rm", image, "/src")))
    out = tmp_path / "out.git"
    proc = docteur("export", image, out)
    assert b"branch main" in proc.stderr
    git("fsck", "--strict", "--no-dangling", cwd=out)
    first = git("rev-parse", "HEAD", cwd=repo).decode().strip()
    hashes = git("log", "--format=%H", cwd=out).decode().split()
    assert hashes == [c.hex() for c in reversed(commits)] + [first]
    assert (out / "shallow").read_text() == first + "\n"
    head, files = head_files(image)
    listing = [e.split(b"\t", 1) for e in git("ls-tree", "-r", "-z", "HEAD", cwd=out).split(b"\0") if e]
    modes = {os.fsdecode(path): int(meta.split()[0], 8) for meta, path in listing}
    assert modes == {path: mode for path, (mode, _) in files.items()}
    for path, (_, data) in files.items():
        assert git("cat-file", "blob", f"HEAD:{path}", cwd=out) == data, path
    # Stock git pushes it back where the first generation came from (a repository that
    # has the parents the image lacks: a shallow history cannot start a new one).
    target = tmp_path / "pushed.git"
    git("clone", "-q", "--bare", repo, target)
    git("push", "-q", str(target), "main", cwd=out)
    assert git("rev-parse", "main", cwd=target).decode().strip() == head.hex()
    # An existing destination is refused, untouched.
    proc = docteur("export", image, out, check=False)
    assert proc.returncode == 1 and "exists already" in proc.stderr.decode()


# -- bad input: one line, exit 1, the image unchanged ---------------------------------------------
BAD = [
    (["put", "{img}", "/nope/../x", "{file}"], "'.' and '..' segments are refused"),
    (["put", "{img}", "/a//b", "{file}"], "empty segment"),
    (["put", "{img}", "/a\x01b/.git", "{file}"], "git refuses the name"),
    (["put", "{img}", "/docs", "{file}"], "a file was expected but a directory is there"),
    (["put", "{img}", "/index.html/x", "{file}"], "a directory was expected but a file is there"),
    (["put", "{img}", "/", "{file}"], "the root is a directory"),
    (["put", "{img}", "/x", "{missing}"], "cannot read: No such file or directory"),
    (["put", "{img}", "/x", "{dir}"], "a directory (docteur commit takes one)"),
    (["put", "{img}", "/x", "{file}", "--author", "nobody"], "give 'Name <email>'"),
    (["put", "{img}", "/x", "{file}", "-d", "yesterday"], "bad date"),
    (["rm", "{img}", "/nope"], "'/nope': no such file or directory"),
    (["rm", "{img}", "/"], "cannot be removed"),
    (["rm", "{img}", "/index.html/x"], "'/index.html/x': no such file or directory"),
    (["mv", "{img}", "/nope", "/x"], "'/nope': no such file or directory"),
    (["mv", "{img}", "/docs", "/docs/deep/in"], "cannot move '/docs' inside itself"),
    (["mv", "{img}", "/docs", "/index.html"], "a directory cannot replace the file"),
    (["mv", "{img}", "/index.html", "/docs/a.txt/x"], "a directory was expected but a file is there"),
    (["commit", "{img}", "{missing}"], "no such directory"),
    (["commit", "{img}", "{file}"], "not a directory"),
    (["commit", "{img}", "{empty}"], "empty directory, nothing to commit"),
    (["commit", "{img}", "{fifo_dir}"], "a fifo; only files, directories and symlinks"),
    (["put", "{plain}", "/x", "{file}"], "has no room for writes: run docteur grow"),
    (["rm", "{missing}", "/x"], "no such file"),
    (["put", "{file}", "/x", "{file}"], "{file}"),  # not an image
    (["grow", "{img}", "1M"], "give a bigger size"),
    (["export", "{img}", "{file}"], "exists already"),
]


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, str]:
    image = made(tmp_path, FILES)
    committed(docteur("put", image, "/later.txt", "-", input=b"a generation on top\n"))
    plain = made(tmp_path, FILES, capacity=None, name="plain.img")
    (tmp_path / "file.txt").write_bytes(b"content\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty").mkdir()
    os.mkfifo(write_files(tmp_path / "fifo_dir", {"ok.txt": b"ok\n"}) / "pipe")
    return {"img": str(image), "plain": str(plain), "file": str(tmp_path / "file.txt"),
            "missing": str(tmp_path / "missing"), "dir": str(tmp_path / "dir"),
            "empty": str(tmp_path / "empty"), "fifo_dir": str(tmp_path / "fifo_dir")}  # fmt: skip


@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join([*a[:1], s[:24]]) for a, s in BAD])
def test_bad_input_is_one_line_and_changes_nothing(bad_inputs: dict[str, str], args: list[str],
                                                   says: str) -> None:  # fmt: skip
    images = [Path(bad_inputs["img"]), Path(bad_inputs["plain"])]
    before = [p.read_bytes() for p in images]
    proc = docteur(*[a.format(**bad_inputs) for a in args], check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert len(err.splitlines()) == 1 and err.startswith("docteur: error: "), err
    assert says.format(**bad_inputs) in err
    assert [p.read_bytes() for p in images] == before


def test_no_space_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    image = made(tmp_path, FILES, capacity="256K")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(1 << 20))
    before = image.read_bytes()
    proc = docteur("put", image, "/noise.bin", noise, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.splitlines()) == 1 and "no space" in err, err
    assert image.read_bytes() == before
    docteur("grow", image, "4M")  # the way out the line points to
    committed(docteur("put", image, "/noise.bin", noise))


_HOLD = """
import sys, time
from docteur.guest.device import FileDevice
dev = FileDevice(sys.argv[1], writable=True)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_gets_one_line_and_kill_9_leaves_no_lock(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(image)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        before = image.read_bytes()
        for args in (["put", image, "/x", "-"], ["rm", image, "/docs"], ["compact", image]):
            proc = docteur(*args, input=b"x\n", check=False)
            err = proc.stderr.decode()
            assert proc.returncode == 1 and len(err.splitlines()) == 1, err
            assert f"{image} is being written by another process (pid {holder.pid})" in err
        assert image.read_bytes() == before
        assert docteur("log", image).stdout.startswith(b"0 ")  # readers are not blocked
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    committed(docteur("put", image, "/x", "-", input=b"x\n"))


def test_a_refused_put_from_a_pipe_leaves_no_spool(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    before = image.read_bytes()
    proc = docteur("put", image, "/index.html/x", "-", input=os.urandom(2 << 20), check=False)
    assert proc.returncode == 1 and "a directory was expected but a file is there" in proc.stderr.decode()
    assert image.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".docteur-" in p.name]


def test_sizes_take_binary_suffixes() -> None:
    import argparse

    from docteur.cli.parser import size

    assert [size(t) for t in ("4096", "512K", "256M", "2g", "1T")] == [
        4096,
        512 << 10,
        256 << 20,
        2 << 30,
        1 << 40,
    ]
    for bad in ("0", "-1M", "12Q", "M", "1.5G", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)


def test_grow_keeps_the_history_and_adds_room(tmp_path: Path) -> None:
    image = made(tmp_path, FILES, capacity="1M")
    commit = committed(docteur("put", image, "/a.bin", "-", input=os.urandom(300_000)))
    log = docteur("log", image).stdout
    free = int(docteur("grow", image, "3M").stderr.decode().split()[3])
    assert image.stat().st_size == 3 << 20 and docteur("log", image).stdout == log
    assert free > 2 << 20
    big = committed(docteur("put", image, "/b.bin", "-", input=os.urandom(1 << 20)))  # fits now
    head, files = head_files(image)
    assert head == big and set(files) >= {"a.bin", "b.bin"} and commit != big
