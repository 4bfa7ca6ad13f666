"""Shared Git helpers for tests: repositories, servers, and image checks with git as the oracle.

Others may import these. Fixtures (`git_daemon`, `http_git`, `ssh_git`) are plain
pytest fixtures: import them into a test module to use them.

Repositories are made with a fixed identity and dates, so their ids are stable.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from docteur.guest.image import Image
from docteur.guest.layout import read_layout

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

AUTHOR = ("A U Thor", "author@example.com")
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": AUTHOR[0],
    "GIT_AUTHOR_EMAIL": AUTHOR[1],
    "GIT_COMMITTER_NAME": AUTHOR[0],
    "GIT_COMMITTER_EMAIL": AUTHOR[1],
    "GIT_AUTHOR_DATE": "1700000000 +0100",
    "GIT_COMMITTER_DATE": "1700000000 +0100",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}


def git_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_ENV)
    env.update(extra)
    return env


def git(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
        input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    """Run git; return stdout; fail the test with git's stderr on error."""
    proc = subprocess.run(
        ["git", *map(os.fspath, args)], cwd=cwd, input=input, capture_output=True,
        env=env or git_env(), check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))}: {proc.stderr.decode()}")
    return proc.stdout


def rev(repo: Path, what: str = "HEAD") -> str:
    return git("rev-parse", what, cwd=repo).decode().strip()


# -- content -----------------------------------------------------------------


def populate(root: Path, *, weird_names: bool = True) -> None:
    """Files of every kind docteur keeps: plain, empty, exec, symlinks, hidden, deep."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# hello\n\nA test tree.\n")
    (root / "empty").write_bytes(b"")
    (root / ".hidden").write_text("hidden file\n")
    (root / ".config").mkdir()
    (root / ".config" / "settings.ini").write_text("[a]\nb = c\n")
    run = root / "bin" / "run.sh"
    run.parent.mkdir()
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "link-to-readme").symlink_to("README.md")
    (root / "bin" / "dangling").symlink_to("../nowhere/at/all")
    (root / "bin" / "outside").symlink_to("/etc/passwd")  # stored as a link, never followed
    deep = root.joinpath(*(f"d{i}" for i in range(30)))
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("at the bottom\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    # Similar files, so that the pack has deltas.
    for i in range(5):
        (root / "src").mkdir(exist_ok=True)
        (root / "src" / f"mod{i}.py").write_text(
            "".join(f"def f{j}():\n    return {j}\n\n" for j in range(200)) + f"# {i}\n"
        )
    (root / "name with spaces.txt").write_text("spaces\n")
    (root / "ünïcödé.txt").write_text("utf-8 name\n")
    if weird_names and sys.platform.startswith("linux"):
        name = os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9.txt")
        # Some filesystems refuse non-UTF-8 names: then the tree simply lacks one.
        with contextlib.suppress(OSError), open(name, "wb") as f:
            f.write(b"not utf-8 in the name\n")


def make_repo(path: Path, *, bare: bool = False, history: int = 3) -> Path:
    """A work tree (or a bare clone of one) with history, branches and tags.

    Branches: main (HEAD) and `feature`; tags: `v1` (annotated, on the first
    commit), `light` (lightweight, on the second). Returns the repository path.
    """
    work = path if not bare else path.with_name(path.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", work)
    git("config", "core.symlinks", "true", cwd=work)
    populate(work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first commit\n\nwith a body", cwd=work)
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    for i in range(1, history):
        (work / "history.txt").write_text(f"change {i}\n" * (i + 1))
        (work / "src" / "mod0.py").write_text(f"# revision {i}\n" + "x = 1\n" * 100)
        git("add", "-A", cwd=work)
        env = git_env(GIT_AUTHOR_DATE=f"{1700000000 + i * 60} +0100",
                      GIT_COMMITTER_DATE=f"{1700000000 + i * 60} +0100")
        git("commit", "-q", "-m", f"commit {i + 1}", cwd=work, env=env)
        if i == 1:
            git("tag", "light", cwd=work)
    git("branch", "feature", "HEAD~1" if history > 1 else "HEAD", cwd=work)
    if bare:
        git("clone", "-q", "--bare", work, path)
        return path
    return work


def without_head(bare: Path, *, keep_branches: tuple[str, ...] = ()) -> Path:
    """Delete the branches of a bare repository (but `keep_branches`): HEAD points at
    nothing, the tags remain. Many mirrors of releases look like this."""
    for line in git("for-each-ref", "--format=%(refname)", "refs/heads/", cwd=bare).decode().split():
        if line.removeprefix("refs/heads/") not in keep_branches:
            git("update-ref", "-d", line, cwd=bare)
    return bare


# -- checks against git -------------------------------------------------------


def extract(image: Path, dest: Path) -> tuple[Path, Path]:
    """The PACK and the IDX of an image, as files git can read."""
    with open(image, "rb") as f:
        layout = read_layout(f.fileno())
        data = f.read()
    pack = dest / "image.pack"
    idx = dest / "image-from-image.idx"
    pack.write_bytes(data[28 : layout.pack_end])
    idx.write_bytes(data[layout.idx_offset : layout.idx_end])
    return pack, idx


def tree_entries(repo: Path, commit: str) -> list[tuple[str, str, str, bytes]]:
    """(mode, type, oid, path) of every entry under the commit, trees included."""
    out = git("ls-tree", "-r", "-t", "-z", commit, cwd=repo)
    rows = []
    for rec in out.split(b"\0"):
        if rec:
            meta, path = rec.split(b"\t", 1)
            mode, kind, oid = meta.decode().split()
            rows.append((mode, kind, oid, path))
    return rows


def read_path(image: Image, path: bytes) -> tuple[int, bytes]:
    """(mode, oid) of a path, walking trees through guest's reader."""
    from docteur.guest.objects import Tree

    oid = image.commit_object().tree
    mode = 0o040000
    for part in path.split(b"/"):
        _kind, body = image.read_object(oid)
        entry = Tree.from_raw(body).get(part)
        assert entry is not None, f"{path!r}: {part!r} missing"
        mode, oid = entry.mode, entry.id
    return mode, oid


def repo_from_image(image: Path, tmp: Path) -> Path:
    """A bare repository holding exactly the image's objects (to ask git about them)."""
    repo = tmp / "from-image.git"
    git("init", "-q", "--bare", repo)
    pack, _idx = extract(image, tmp)
    dest = repo / "objects" / "pack" / "pack-image.pack"
    shutil.copyfile(pack, dest)
    git("index-pack", dest, cwd=repo)
    return repo


def check_image(image: Path, repo: Path, commit: str, tmp: Path) -> None:
    """git accepts the image's PACK, the IDX is git's, every path reads back as git has it."""
    pack, idx = extract(image, tmp)
    git_idx = tmp / "image.idx"
    git("index-pack", "--fsck-objects", "-o", git_idx, pack)
    assert git_idx.read_bytes() == idx.read_bytes(), "IDX differs from git index-pack's"
    verify = git("verify-pack", "-v", git_idx).decode()
    count = sum(1 for line in verify.splitlines() if len(line) > 40 and line[40] == " ")
    entries = tree_entries(repo, commit)
    oids = {commit, rev(repo, f"{commit}^{{tree}}")}
    oids |= {oid for mode, _k, oid, _p in entries if mode != "160000"}
    assert count == len(oids), f"pack holds {count} objects, the commit needs {len(oids)}"
    blobs = [(m, o, p) for m, k, o, p in entries if k == "blob"]
    contents = _cat_blobs(repo, [o for _m, o, _p in blobs])
    with Image.open(str(image)) as img:
        assert img.commit.hex() == commit
        for mode, oid, path in blobs:
            got_mode, got_oid = read_path(img, path)
            assert (f"{got_mode:o}", got_oid.hex()) == (mode, oid), path
            kind, body = img.read_object(got_oid)
            assert kind == "blob" and body == contents[oid], path


def _cat_blobs(repo: Path, oids: list[str]) -> dict[str, bytes]:
    out = git("cat-file", "--batch", cwd=repo, input="".join(o + "\n" for o in oids).encode())
    result, pos = {}, 0
    while pos < len(out):
        nl = out.index(b"\n", pos)
        oid, _kind, size = out[pos:nl].decode().split()
        start = nl + 1
        result[oid] = out[start : start + int(size)]
        pos = start + int(size) + 1
    return result


def directory_tree_id(directory: Path, tmp: Path) -> str:
    """The tree id git gives a directory (`git add -A; git write-tree`)."""
    gd = tmp / "oracle.git"
    env = git_env(GIT_DIR=str(gd), GIT_WORK_TREE=str(directory))
    git("init", "-q", "--bare", gd)
    git("config", "core.symlinks", "true", env=env)
    git("config", "core.fileMode", "true", env=env)
    git("add", "-A", ".", cwd=directory, env=env)
    return git("write-tree", env=env, cwd=directory).decode().strip()


# -- servers -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def run_git_daemon(base: Path) -> Iterator[str]:
    """`git daemon` serving every repository under `base`; yields git://127.0.0.1:PORT"""
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


class _GitHTTPHandler(BaseHTTPRequestHandler):
    """Smart HTTP: hands each request to `git http-backend` (CGI)."""

    root: str = ""
    credentials: tuple[str, str] | None = None

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        if self.credentials is not None:
            want = base64.b64encode(":".join(self.credentials).encode()).decode()
            if self.headers.get("Authorization") != f"Basic {want}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = git_env(
            GIT_PROJECT_ROOT=self.root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
            QUERY_STRING=query, REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
            REMOTE_ADDR="127.0.0.1", GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
        )
        if self.headers.get("Content-Encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            if not line:
                continue
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _QuietHTTPServer(ThreadingHTTPServer):
    """Handshakes a client rejects (an untrusted certificate) are part of the tests, not noise."""

    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # The handshake happens in the handler's thread, on its first read: a client
            # that stalls or hangs up mid-handshake holds up nobody else.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextlib.contextmanager
def run_http_git(base: Path, credentials: tuple[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Smart HTTP on loopback for the repositories under `base`; yields http://127.0.0.1:PORT
    (https:// with `tls`, a server-side context)."""
    handler = type("Handler", (_GitHTTPHandler,), {"root": str(base),
                                                   "credentials": credentials})
    server = _QuietHTTPServer(("127.0.0.1", 0), handler)
    server.tls = tls
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SSH_STANDIN = """#!/bin/sh
# Stands in for ssh the way git's own tests do: drop the options, log the
# host, run the remote command here.
while [ $# -gt 0 ]; do
    case "$1" in
        -o) case "$2" in *GIT_PROTOCOL=*) export GIT_PROTOCOL="${2#*GIT_PROTOCOL=}";; esac
            shift 2;;
        -p|-i|-l|-F) shift 2;;
        -*) shift;;
        *) break;;
    esac
done
echo "$1" >> "$0.log"
shift
exec sh -c "$*"
"""


def ssh_standin(directory: Path) -> Path:
    """Write the stand-in; point GIT_SSH at it. Hosts it was asked for go to `<it>.log`."""
    script = directory / "fake-ssh"
    script.write_text(SSH_STANDIN)
    script.chmod(0o755)
    return script


@pytest.fixture
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(base directory, git:// URL): put bare repositories under base."""
    base = tmp_path_factory.mktemp("daemon")
    with run_git_daemon(base) as url:
        yield base, url


@pytest.fixture
def http_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    base = tmp_path_factory.mktemp("http")
    with run_http_git(base) as url:
        yield base, url


@pytest.fixture
def ssh_git(tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The stand-in script, with GIT_SSH pointing at it (GIT_SSH_COMMAND unset)."""
    d = tmp_path_factory.mktemp("ssh")
    script = ssh_standin(d)
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.setenv("GIT_SSH", str(script))
    yield script


# -- running the CLI in-process ---------------------------------------------------


def docteur(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """Run `docteur ARGS` in this process; (exit status, stdout, stderr)."""
    from docteur.cli.main import main

    capsys.readouterr()
    rc = main([os.fspath(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def fails(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> str:
    """Run `docteur ARGS`; it must exit 1 with one error line, which is returned."""
    rc, _out, err = docteur(capsys, *args)
    assert rc == 1, err
    return one_error_line(err)


def one_error_line(err: str) -> str:
    """The single `docteur: error: ...` line a failure must print, without traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("docteur: error: ")]
    assert len(errors) == 1, err
    return errors[0]
