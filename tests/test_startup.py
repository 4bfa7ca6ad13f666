"""The CLI's start-up: `docteur verify` and `--version` load only what they use.

Counted in modules, not milliseconds (timings swing with the machine's load): each
library left out here cost 4-50 ms of imports on every start (make bench has the times).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.git import needs_git
from tests.support.repos import make_repo

# What neither command needs: the logging stack (structlog loads asyncio), typing,
# importlib.metadata, the guest server's modules, the builder's fetcher.
NOT_AT_START = {
    "structlog", "asyncio", "logging", "typing", "importlib.metadata", "datetime", "json",
    "signal", "dulwich", "docteur.guest.protocol", "docteur.guest.service",
    "docteur.guest.server", "docteur.builder.make", "docteur.vm.runtime.appliance",
}  # fmt: skip


def _loaded(*argv: str) -> tuple[int, str, set[str], list[str]]:
    """(status, stdout, the modules loaded, stderr's lines) of `docteur ARGV` in a fresh
    interpreter."""
    code = (
        "import sys\nfrom docteur.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    *err, line = proc.stderr.splitlines()
    assert line.startswith("MODULES "), proc.stderr
    return proc.returncode, proc.stdout, set(line.split()[1:]), err


@needs_git
def test_verify_loads_only_the_check(tmp_path: Path) -> None:
    from tests.support.images import image_of

    image = image_of(make_repo(tmp_path / "r.git", bare=True, history=1), tmp_path / "a.img")
    rc, out, loaded, _ = _loaded("verify", str(image))
    assert rc == 0 and out.startswith("commit\t: ")
    assert "docteur.guest.verify" in loaded  # it did verify
    assert not NOT_AT_START & loaded, sorted(NOT_AT_START & loaded)


@needs_git
def test_a_failing_verify_still_says_one_line(tmp_path: Path) -> None:
    """The error path (log.error_line, redaction) loads what it needs late, and works."""
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"\0" * 4096)
    rc, out, _, err = _loaded("verify", str(bad))
    assert rc == 1 and out == ""
    assert len(err) == 1 and err[0].startswith(f"docteur: error: {bad}"), err


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["verify", "--help"]])
def test_version_and_help_load_nothing_heavy(argv: list[str]) -> None:
    rc, out, loaded, _ = _loaded(*argv)
    assert rc == 0 and out.startswith(("docteur 0.", "usage: docteur"))
    assert not NOT_AT_START & loaded, sorted(NOT_AT_START & loaded)
    assert not {"docteur.guest.verify", "docteur.guest.image"} & loaded


def test_only_the_subcommand_used_gets_its_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """Subcommand parsers are made when used (cli/deferred.py): parsing `verify` makes
    verify's alone; the others still parse and show their help in full when asked."""
    from docteur.cli.main import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if a.dest == "command")
    args = parser.parse_args(["verify", "-q", "x.img"])
    assert args.quiet and args.image == "x.img"
    made = {name for name, p in sub.choices.items() if p._parser is not None}
    assert made == {"verify"}
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "--memory MiB" in out and "microvm target:" in out and "--filename PATH" in out
    args = parser.parse_args(["run", "a.img", "--socket", "/tmp/s", "--memory", "96"])
    assert (args.image, args.socket, args.memory, args.func.__name__) == ("a.img", "/tmp/s", 96, "run")
    with pytest.raises(SystemExit):  # the mutually exclusive group was replayed too
        parser.parse_args(["run", "a.img", "--socket", "/tmp/s", "--filename", "/x"])
    assert "not allowed with argument" in capsys.readouterr().err
