"""The guest's Python: only the stdlib modules docteur.guest needs, as .pyc.

The set is found at build time by running the guest's own interpreter (Debian's
python3.11, unpacked, started through its own loader so the host's Python and
libraries play no part): it imports every docteur.guest module plus every
module named by an import statement in guest/ (including those inside
functions), then reports sys.modules. Frozen and built-in modules need no file.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from docteur.vm.guestbuild import elf

PYVER = "3.11"
STDLIB = f"usr/lib/python{PYVER}"
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
LOADER = "lib64/ld-linux-x86-64.so.2"
# The interpreter finds its prefix by the landmark os.py/os.pyc ("Could not find
# platform independent libraries" otherwise), although os itself is frozen.
LANDMARKS = ("os.py",)
# Never wanted in the guest even if some guest/ file names them (host-only paths:
# socket, with the enum/selectors it drags in, only for the server's --listen).
# _hashlib (and its 4.7 MB libcrypto) is kept: OpenSSL's SHA-1 is ~2.3x faster than
# the builtin one under TCG; the guest loads it only for big hashes.
EXCLUDE = ("asyncio", "_asyncio", "_ssl", "socket", "_socket")

# What the guest's interpreter has imported, as NAME\tFILE lines: the end of both scripts.
_REPORT = r"""for name, mod in sorted(sys.modules.items()):
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec else None
    if origin and origin.startswith("/"):
        sys.stdout.write(f"{name}\t{origin}\n")
"""

# Both scripts use only what the interpreter has loaded at start-up or the
# guest imports anyway (__import__, _signal), so that sys.modules is the guest's need.
_TRACE = r"""
import sys
for name in sys.argv[1:]:
    quiet = name.startswith("?")  # a guess (`from pkg import name`): may not be a module
    try:
        __import__(name.lstrip("?"))
    except BaseException as exc:  # SystemExit too: a module may run code on import
        if not quiet:
            sys.stderr.write(f"trace: cannot import {name}: {type(exc).__name__}: {exc}\n")
"""
_TRACE += _REPORT

# Serve a short session on stdin/stdout against a disk that is not an image, so
# that what the serving and error paths import lazily is seen too.
_EXERCISE = r"""
import os, sys
from _signal import SIGALRM, alarm, signal
from docteur.guest import protocol as p, server

def timeout(*_):
    raise TimeoutError("the guest server did not finish its dry run")

signal(SIGALRM, timeout)
alarm(20)
session = p.GREET_FRAME + b"".join(
    p.encode_request(i, op, "docteur", b"/README.md")
    for i, op in enumerate(("ping", "info", "stat", "get", "list", "shutdown"), start=1))
r, w = os.pipe()
os.write(w, session)
os.close(w)
out = os.open(os.devnull, os.O_WRONLY)
saved = os.dup(0), os.dup(1), os.dup(2)
os.dup2(r, 0); os.dup2(out, 1); os.dup2(out, 2)
try:
    server.main(["--block", "docteur=/dev/null", "--verify", "none", "--stdio"])
except BaseException:
    pass
finally:
    alarm(0)
    for fd, old in enumerate(saved):
        os.dup2(old, fd)
"""
_EXERCISE += _REPORT

_COMPILE = r"""
import sys, py_compile
for line in sys.stdin:
    src, dst, shown = line.rstrip("\n").split("\t")
    py_compile.compile(src, cfile=dst, dfile=shown, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:`: its imports are for type checkers only, never in the guest."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _has_import_fallback(node: ast.AST) -> bool:
    """`try: ... except ImportError:`: its imports have a fallback (e.g. _sha256 on 3.11,
    _sha2 on 3.12+), tried, not required."""
    if not isinstance(node, ast.Try):
        return False
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(k is None or (isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError"))
               for k in kinds):  # fmt: skip
            return True
    return False


def _inside(tree: ast.AST, picked: Callable[[ast.AST], bool]) -> set[int]:
    """The ids of every node in the body of the statements `picked` chooses."""
    return {id(n) for node in ast.walk(tree) if picked(node) for stmt in node.body for n in ast.walk(stmt)}  # type: ignore[attr-defined]


def imported_names(sources: list[Path]) -> set[str]:
    """Every module an import statement in these files may load, dotted names included."""
    names: set[str] = set()
    for src in sources:
        tree = ast.parse(src.read_bytes(), str(src))
        typing_only = _inside(tree, _is_type_checking)
        optional = _inside(tree, _has_import_fallback)
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            mark = "?" if id(node) in optional else ""
            if isinstance(node, ast.Import):
                names.update(mark + alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(mark + node.module)
                # `from pkg import sub` may name a submodule: try it, failures are ignored.
                names.update(f"?{node.module}.{a.name}" for a in node.names if a.name != "*")
    top = {n: n.lstrip("?").split(".")[0] for n in names}
    return {n for n in names if top[n] not in EXCLUDE and top[n] != "docteur"}


def run_guest_python(root: Path, args: list[str], stdin: str | None = None,
                     timeout: float | None = None) -> str:  # fmt: skip
    """Run the unpacked interpreter on the host through its own loader and libraries."""
    lib_path = ":".join(str(root / d) for d in LIB_DIRS)
    cmd = [str(root / LOADER), "--library-path", lib_path, str(root / "usr/bin/python3.11")]
    env = {"PYTHONHOME": str(root / "usr"), "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"}
    proc = subprocess.run(
        [*cmd, "-S", "-s", *args], env=env, input=stdin, text=True,
        capture_output=True, check=False, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"guest python failed: {proc.stderr.strip()[-500:]}")
    if sys.stderr.isatty():  # details on a terminal; a pipe gets the build's one line
        for line in proc.stderr.splitlines():
            print(line, file=sys.stderr)
    return proc.stdout


def trace(root: Path, guest_modules: list[str], stdlib_names: set[str]) -> dict[str, Path]:
    """Module name -> file (under root) for what importing the guest needs, and
    what a dry-run session of its server imports on the way."""
    names = [*sorted(guest_modules), *sorted(stdlib_names)]
    out = run_guest_python(root, ["-c", _TRACE, *names])
    try:
        out += run_guest_python(root, ["-c", _EXERCISE], timeout=60)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # best effort: imports still count
        print(f"guest: the server's dry run failed, import trace only ({exc})", file=sys.stderr)
    stdlib = str(root / STDLIB) + "/"
    found: dict[str, Path] = {}
    for line in out.splitlines():
        name, origin = line.split("\t")
        if origin.startswith(stdlib) and name.split(".")[0] not in ("docteur", *EXCLUDE):
            found[name] = Path(origin)
    return found


def compile_all(root: Path, jobs: list[tuple[Path, Path, str]]) -> None:
    """(source, .pyc destination, path shown in tracebacks) with the guest's compiler."""
    for _, dst, _ in jobs:
        dst.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{s}\t{d}\t{shown}\n" for s, d, shown in jobs)
    run_guest_python(root, ["-c", _COMPILE], stdin=lines)


def symlink_chain(root: Path, rel: str) -> list[str]:
    """rel and every path its symlinks lead to, resolved inside root (never the host)."""
    chain = [rel]
    while (root / rel).is_symlink():
        target = os.readlink(root / rel)
        rel = target.lstrip("/") if target.startswith("/") else os.path.join(os.path.dirname(rel), target)
        rel = os.path.normpath(rel)
        chain.append(rel)
    return chain


def shared_libraries(root: Path, binaries: list[Path]) -> list[str]:
    """Paths (relative to root) of the libraries these ELF files need, transitively,
    symlinks and their targets both, plus the program loader."""
    wanted: list[str] = []
    todo = list(binaries)
    seen: set[str] = set()
    while todo:
        for soname in elf.needed(todo.pop()):
            if soname in seen:
                continue
            seen.add(soname)
            for d in LIB_DIRS:
                if (root / d / soname).is_symlink() or (root / d / soname).exists():
                    chain = symlink_chain(root, f"{d}/{soname}")
                    wanted.extend(chain)
                    todo.append(root / chain[-1])
                    break
            else:
                raise RuntimeError(f"shared library {soname} is in none of the packages")
    return sorted(set(wanted))
