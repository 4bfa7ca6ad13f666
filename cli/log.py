"""structlog set-up: logs go to stderr, human-readable or JSON lines.

structlog (~50 ms of imports: it loads asyncio) is imported only when a logger
`get_logger` gave writes a line its level lets through, and configured then with what
`configure` recorded: `docteur --help`, usage errors, `docteur verify` and a push or
pull without -v never load it. Only cheap imports at the top
(json, datetime, the redaction's re come when a line is written).
"""

from __future__ import annotations

import sys

from . import progress
from .progress import is_terminal

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports on every start
    from typing import Any

_LEVELS = (30, 20, 10)  # logging.WARNING, INFO, DEBUG (logging itself is not needed)


def redact(text: str) -> str:
    from .redact import redact as masked  # re and urllib.parse: only once a line is written

    return masked(text)


def _redacted(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return _redacted(event)


def _write_line(text: str) -> None:
    progress.clear_line()  # a line never lands in the middle of a progress line
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class _StderrLogger:
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        _write_line(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_FORMAT = ["console"]  # what configure() chose, for the lines below
# configure()'s (format, verbosity), and whether structlog has been given them yet.
_CONFIG: list[tuple[str, int]] = [("console", 0)]
_APPLIED = [False]


def _json_line(level: str, event: str, fields: dict[str, Any]) -> None:
    import json
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as structlog's TimeStamper
    record = _redacted(fields)
    record.update(event=redact(event), level=level, timestamp=stamp)
    _write_line(json.dumps(record))


def is_json() -> bool:
    return _FORMAT[0] == "json"


def error_line(message: str, prog: str = "docteur") -> None:
    """The one line a failure prints on stderr: `docteur: error: ...`, or a JSON
    object ({"event": ..., "level": "error"}) under --log-format json."""
    if _FORMAT[0] == "json":
        _json_line("error", message, {})
        return
    _write_line(f"{prog}: error: {redact(message)}")


def notice(text: str, event: str | None = None, **fields: Any) -> None:
    """A line meant for the user on stderr (a summary), shown at any verbosity:
    `text` as is, or under --log-format json `event` with `fields`."""
    if _FORMAT[0] == "json":
        _json_line("info", event or text, fields)
        return
    _write_line(redact(text))


def set_format(fmt: str) -> None:
    """Only the format of the lines written here (error_line, notice), before the
    command line is parsed: a usage error under --log-format json is JSON too."""
    _FORMAT[0] = fmt
    progress.allow(fmt != "json")  # a progress line would break the JSON on a terminal


def configure(fmt: str = "console", verbose: int = 0) -> None:
    """`fmt`: 'console' or 'json'; `verbose`: 0 warnings, 1 info, 2+ debug. structlog
    follows at once when loaded, else when `get_logger` first loads it."""
    set_format(fmt)
    _CONFIG[0] = (fmt, verbose)
    if _APPLIED[0]:
        _apply()


def _apply() -> None:
    import structlog

    fmt, verbose = _CONFIG[0]
    level = _LEVELS[min(verbose, 2)]
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=is_terminal(sys.stderr)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,  # a later configure() still applies
    )
    _APPLIED[0] = True


# The level of each logging method (a filtering bound logger's).
_METHOD_LEVELS = {"debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40,
                  "exception": 40, "critical": 50, "fatal": 50}  # fmt: skip


class _Logger:
    """What `get_logger` gives: a call below the level `configure` set returns at once;
    anything else loads structlog then (not at the logging module's import: push and
    pull log only with -v, and would pay structlog's imports on every run)."""

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._real: Any = None

    def _logger(self) -> Any:
        if self._real is None:
            if not _APPLIED[0]:
                _apply()
            import structlog

            self._real = structlog.get_logger(self._name) if self._name else structlog.get_logger()
        return self._real

    def __getattr__(self, method: str) -> Any:
        level = _METHOD_LEVELS.get(method)
        if level is None:
            return getattr(self._logger(), method)

        def call(*args: Any, **kwargs: Any) -> Any:
            if level < _LEVELS[min(_CONFIG[0][1], 2)]:
                return None
            return getattr(self._logger(), method)(*args, **kwargs)

        return call


def get_logger(name: str | None = None) -> Any:
    """A structlog logger, configured as `configure` last said (structlog loaded by its
    first call that the level lets through)."""
    return _Logger(name)
