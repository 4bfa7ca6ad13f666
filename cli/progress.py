"""A one-line progress display on a terminal, silent when stderr is a pipe.

    with Progress("packing", unit="objects") as p:
        p.update(done, total)       # redrawn at most 10 times a second
        p.message("remote: ...")    # free text (dulwich's sideband)

`enabled=None` means "stderr is a terminal" (and the logs are not JSON). Nothing is ever written when
disabled, so callers need no checks of their own.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports on every start
    from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_ALLOWED = [True]  # False under --log-format json: stderr is for JSON lines only


_SHOWN: list[Progress] = []  # bars with a line on screen now


def clear_line() -> None:
    """Erase a progress line before something else is written to the terminal (a log
    line): the bar draws itself again at its next update."""
    for bar in list(_SHOWN):
        bar.close()


def allow(flag: bool) -> None:
    """Progress displays on (a terminal) or off whatever stderr is (JSON logs)."""
    _ALLOWED[0] = flag


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(
        self,
        label: str,
        *,
        unit: str = "B",
        total: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _ALLOWED[0] and is_terminal(self.stream) if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fmt(self, n: int) -> str:
        return human_bytes(n) if self.unit == "B" else f"{n} {self.unit}"

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and not (self.total and done >= self.total):
            return
        self._last = now
        if self.total:
            pct = 100 * done // self.total
            text = f"{self.label}: {pct:3d}% ({self._fmt(done)} / {self._fmt(self.total)})"
        else:
            text = f"{self.label}: {self._fmt(done)}"
        self._draw(text)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def message(self, text: str) -> None:
        """Show free text (e.g. the server's own progress) on the same line, at most
        every `interval` like the counts (a line saying `done` always shows)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and not text.rstrip().endswith("done."):
            return
        self._last = now
        self._draw(text.strip())

    def _draw(self, text: str) -> None:
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True
        if self not in _SHOWN:
            _SHOWN.append(self)

    def close(self) -> None:
        """Erase the line so that what follows starts clean."""
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
        if self in _SHOWN:
            _SHOWN.remove(self)
