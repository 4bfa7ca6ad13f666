"""structlog set-up: logs go to stderr, human-readable or JSON lines.

structlog is imported only by `configure` (after the command line is parsed) and
`get_logger`: `docteur --help` and usage errors stay cheap.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from . import progress
from .progress import is_terminal
from .redact import redact


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


def _json_line(level: str, event: str, fields: dict[str, Any]) -> None:
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
    """`fmt`: 'console' or 'json'; `verbose`: 0 warnings, 1 info, 2+ debug."""
    import structlog

    set_format(fmt)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
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
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    import structlog

    return structlog.get_logger(name) if name else structlog.get_logger()
