"""Subcommand parsers built only for the subcommand a run uses.

argparse makes every parser at once: each costs a few gettext look-ups (every one stats
the locale directories) and each argument a help formatter, ~8 ms for docteur's dozen
subcommands on every start. `Deferred` is the subparsers' `parser_class`: it records
what the command's declaration does to it (add_argument, groups, set_defaults) and
replays that on a real parser the first time argparse uses it for anything else (parsing
the subcommand's arguments, its --help). `docteur --help` lists the subcommands from
their `help=` alone, so it builds none of them.
"""

from __future__ import annotations

import argparse

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports on every start
    from typing import Any

# What a subcommand's declaration calls on its parser (and on its groups): recorded.
_RECORDED = frozenset({"add_argument", "add_argument_group", "add_mutually_exclusive_group",
                       "set_defaults"})  # fmt: skip


class _Calls:
    """The calls made on a parser or on one of its groups, to replay in order."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any], _Calls]] = []

    def _record(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> _Calls:
            result = _Calls()  # a group's own calls (an action's: none)
            self._calls.append((name, args, kwargs, result))
            return result

        return call

    def __getattr__(self, name: str) -> Any:
        if name in _RECORDED:
            return self._record(name)
        raise AttributeError(f"{name}: not available on a subcommand being declared")

    def _replay(self, target: Any) -> None:
        for name, args, kwargs, result in self._calls:
            result._replay(getattr(target, name)(*args, **kwargs))


class Deferred(_Calls):
    """A subcommand's parser, made for real on first use (see the module docstring)."""

    def __init__(self, parser_class: type[argparse.ArgumentParser], **kwargs: Any) -> None:
        super().__init__()
        self._make = (parser_class, kwargs)
        self._parser: argparse.ArgumentParser | None = None

    def __getattr__(self, name: str) -> Any:
        if name in _RECORDED and self._parser is None:
            return self._record(name)
        return getattr(self.parser, name)

    @property
    def parser(self) -> argparse.ArgumentParser:
        if self._parser is None:
            parser_class, kwargs = self._make
            self._parser = parser_class(**kwargs)
            self._replay(self._parser)
        return self._parser


def deferring(parser_class: type[argparse.ArgumentParser]) -> Any:
    """The `parser_class` for add_subparsers: Deferred parsers of `parser_class`."""
    return lambda **kwargs: Deferred(parser_class, **kwargs)
