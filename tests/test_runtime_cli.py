"""`docteur run --target unix` and `docteur query`, as a user types them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.cli import DOCTEUR, fails_in_one_line, run_cli
from tests.support.corrupt import corrupt
from tests.support.git import cat_blobs, ls_tree


def test_run_filename_prints_the_file_exactly(gen) -> None:
    repo, image = gen
    oid = next(o for _, _, o, p in ls_tree(repo) if p == b"big.bin")
    proc = run_cli("run", "--target", "unix", str(image), "--filename", "/big.bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cat_blobs(repo, [oid])[oid]
    proc = run_cli("run", "--target", "unix", "--block", f"docteur={image}", "--block",
                   f"second={image}", "--disk", "second", "--filename", "/bin/run.sh")  # fmt: skip
    assert proc.stdout == b"#!/bin/sh\necho hi\n"


def test_run_errors_are_one_line(gen, tmp_path: Path) -> None:
    image = str(gen[1])
    fails_in_one_line(run_cli("run", "--target", "unix", image, "--filename", "/nope"), "/nope")
    fails_in_one_line(run_cli("run", "--target", "unix", image, "--filename", "/bin"), "directory")
    fails_in_one_line(
        run_cli("run", "--target", "unix", str(tmp_path / "x.img"), "--filename", "/a"), "x.img"
    )
    bad = corrupt(gen[1], 5000, mask=1, dest=tmp_path / "bad.img")
    fails_in_one_line(
        run_cli("run", "--target", "unix", "--verify", "full", str(bad), "--filename", "/README.md"),
        "verify full failed",
    )


def test_run_socket_then_query(gen) -> None:
    where = tempfile.mkdtemp(prefix="dtq", dir="/tmp")
    sock = os.path.join(where, "s")
    proc = subprocess.Popen(
        [*DOCTEUR, "run", "--target", "unix", str(gen[1]), "--socket", sock],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().decode()
        assert sock in ready, ready
        q = ["query", "--socket", sock]
        assert run_cli(*q, "get", "/README.md").stdout.startswith(b"# generated")
        assert run_cli(*q, "get", "/README.md", "2", "9").stdout == b"generated"
        ls = run_cli(*q, "ls", "/bin").stdout.decode(errors="replace")
        assert "100755 file      /bin/run.sh" in ls and "120000 symlink   /bin/dangling" in ls
        stat = run_cli(*q, "stat", "/bin/run.sh").stdout.decode()
        assert "mode:   100755" in stat and "size:   18" in stat
        assert run_cli(*q, "exists", "/sub/module").stdout == b"submodule\n"
        assert len(run_cli(*q, "digest", "/README.md").stdout.strip()) == 40
        assert b"commit:" in run_cli(*q, "info").stdout
        fails_in_one_line(run_cli(*q, "get", "/missing"), "/missing")
        fails_in_one_line(run_cli(*q, "frobnicate"), "unknown command")
        console = run_cli(*q, input=b"help\nls /\nget /link-to-readme\nstat /nope\nquit\n")
        out = console.stdout.decode(errors="replace")
        assert console.returncode == 1  # `stat /nope` failed: a script is told
        assert "README.md" in out and "/big.bin" in out and "error:" in out and "ls [PATH]" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not os.path.exists(sock)
        shutil.rmtree(where, ignore_errors=True)
    fails_in_one_line(run_cli("query", "--socket", sock, "info"), "cannot connect")


def test_output_disk_full_is_one_plain_line(gen) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([*DOCTEUR, "run", "--target", "unix", str(gen[1]), "--filename",
                               "/README.md"], stdout=full, stderr=subprocess.PIPE, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.decode() == "docteur: error: writing the output: No space left on device\n"


def test_socket_path_never_replaces_a_file_or_a_live_server(gen, tmp_path: Path) -> None:
    """--socket on an existing file must not delete it; a live server is not taken over;
    a stale socket is replaced; too long or in a missing directory: one line, no boot."""
    import socket as so

    image = str(gen[1])
    victim = tmp_path / "precious.img"
    victim.write_bytes(b"keep me")
    for target in ("unix", "microvm"):
        proc = run_cli("run", "--target", target, image, "--socket", str(victim))
        fails_in_one_line(proc, "not a socket")
        assert victim.read_bytes() == b"keep me"
        fails_in_one_line(run_cli("run", "--target", target, image, "--socket", str(tmp_path)),
                       "directory")  # fmt: skip
        fails_in_one_line(run_cli("run", "--target", target, image, "--socket", "/nonexistent/d/s"),
                       "no directory")  # fmt: skip
        fails_in_one_line(run_cli("run", "--target", target, image, "--socket", "/tmp/" + "x" * 120),
                       "107")  # fmt: skip
    fails_in_one_line(run_cli("query", "--socket", "/tmp/" + "x" * 120, "ls"), "107")
    where = tempfile.mkdtemp(prefix="dtl", dir="/tmp")
    try:
        live = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        live.bind(os.path.join(where, "s"))
        live.listen(1)
        from docteur.vm.targets.serving import SocketPathError, claim_socket_path

        with pytest.raises(SocketPathError, match="already listening"):
            claim_socket_path(os.path.join(where, "s"))
        live.close()  # now stale: a socket file nobody accepts on
        claim_socket_path(os.path.join(where, "s"))
        assert not os.path.exists(os.path.join(where, "s"))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_kill9_of_run_socket_stops_the_guest_server(gen, tmp_path: Path) -> None:
    """kill -9 of `docteur run --target unix --socket`: its guest server does not live on
    as an orphan serving the socket; a directory given as IMAGE is one clear line."""
    where = tempfile.mkdtemp(prefix="dtk", dir="/tmp")
    sock = os.path.join(where, "s")
    proc = subprocess.Popen([*DOCTEUR, "run", "--target", "unix", str(gen[1]), "--socket", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert sock in proc.stdout.readline().decode()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        guest = int(children.stdout.split()[0])
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{guest}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{guest}"), "the guest server outlived docteur"
        assert not os.path.exists(sock)
    finally:
        proc.kill()
        shutil.rmtree(where, ignore_errors=True)
    fails_in_one_line(run_cli("run", "--target", "unix", str(tmp_path), "--filename", "/a"), "directory")


def test_console_output_is_clean(gen) -> None:
    """Commands piped into the console: no prompts, no stray blank lines, an error on its
    own line even after a file that does not end with a newline; unknown disks refused;
    info's long keys keep a space."""
    from tests.support.servers import serving

    with serving({"docteur": gen[1]}) as sock:
        proc = run_cli("query", "--socket", sock, input=b"get /README.md 2 9\nget /nope\n"
                       b"get /README.md 0 2\nstat /nope\ndisk zz\nls /\ninfo\n")  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # commands failed
    lines = proc.stdout.decode(errors="replace").splitlines()
    assert lines[0:4] == ["generated", "error: '/nope': no such file or directory in disk 'docteur'",
                          "# ", "error: '/nope': no such file or directory in disk 'docteur'"]  # fmt: skip
    assert lines[4] == "error: no disk named 'zz' (disks: docteur)"
    with serving({"docteur": gen[1]}) as sock:
        for args in (["99999999999999999999999"], ["0", str(1 << 64)]):  # over a u64
            fails_in_one_line(run_cli("query", "--socket", sock, "get", "/README.md", *args), "2^64")
    assert not any(ln.startswith("docteur:docteur>") for ln in lines)  # no prompts in a pipe
    assert "" not in lines and any(ln.startswith("verified.docteur: ") for ln in lines)


def test_console_ends_when_the_server_goes_away(gen) -> None:
    """The server stops under the console: one error, exit 1 (not an error per command)."""
    from tests.support.servers import serving, shutdown

    with serving({"docteur": gen[1]}) as sock:
        proc = subprocess.Popen([*DOCTEUR, "query", "--socket", sock], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"pong in ")  # a pipe: no banner first
        shutdown(sock)
        out, err = proc.communicate(b"ping\nls /\nstat /README.md\n", timeout=30)
    assert proc.returncode == 1, (out, err)
    errors = [ln for ln in out.decode().splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and ("connection lost" in errors[0] or "closed" in errors[0]), out


def test_console_history_command(gen) -> None:
    """`history` lists what was typed (readline's history); as a one-shot command it says
    where it belongs."""
    import readline

    from docteur.vm.targets import console

    readline.clear_history()
    for line in ("ls /", "get /README.md"):
        readline.add_history(line)
    assert console._history() == ["ls /", "get /README.md"]
    readline.clear_history()
    assert "history" in console.HELP
    from tests.support.servers import serving

    with serving({"docteur": gen[1]}) as sock:
        fails_in_one_line(run_cli("query", "--socket", sock, "history"), "only in the console")


def test_console_ends_on_sigterm(gen) -> None:
    """Ctrl-C at the prompt is a fresh prompt; SIGTERM ends the console (exit 143)."""
    from tests.support.servers import serving

    with serving({"docteur": gen[1]}) as sock:
        proc = subprocess.Popen([*DOCTEUR, "query", "--socket", sock], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")  # a pipe has no banner: its answer says the console is up
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"pong in ")  # and now waits for a command
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143 and err == b"docteur: error: terminated\n", err


def test_unix_serve_ends_on_a_client_shutdown_like_the_microvm(gen) -> None:
    """A client's `shutdown`: exit 0 and a plain line (as the microVM's power-off), not
    "error: the guest server stopped: <its last log line>"."""
    from tests.support.servers import shutdown

    where = tempfile.mkdtemp(prefix="dtu", dir="/tmp")
    sock = os.path.join(where, "s")
    proc = subprocess.Popen([*DOCTEUR, "run", "--target", "unix", str(gen[1]), "--socket", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and sock in proc.stdout.readline().decode()
        shutdown(sock)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and err == b"docteur: the guest server stopped\n", err
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(where, ignore_errors=True)
