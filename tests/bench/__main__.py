"""`python -m tests.bench`: run every tests/bench/bench_*.py module's `rows()`, print a table.

Each row is (what, measured, peer, goal text); ratio = measured / peer.
A module that fails (e.g. no QEMU) is reported and skipped, the others still run.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path


def _modules() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(f"tests.bench.{p.stem}" for p in here.glob("bench_*.py"))


def _machine() -> str:
    """CPU model and count, for the README's table."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = [m for m in _modules() if not argv or any(a in m for a in argv)]
    table: list[tuple[str, str, str, str, str]] = []
    failed = 0
    for name in wanted:
        start = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            rows = importlib.import_module(name).rows()
        except Exception:
            failed += 1
            print(f"bench: {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        print(f"bench: {name} took {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for what, measured, peer, goal in rows:
            ratio = f"{measured / peer:.2f}×" if peer else "n/a"
            table.append((what, f"{measured:.3f}", f"{peer:.3f}", ratio, goal))
    header = ("what", "docteur", "peer", "ratio", "goal")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(5)]
    print(f"{time.strftime('%Y-%m-%d', time.gmtime())}, {_machine()}, "
          f"Python {platform.python_version()}")
    for row in [header, tuple("-" * w for w in widths), *table]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
