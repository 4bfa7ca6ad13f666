"""Where `docteur run` serves an image: `microvm` (QEMU) or `unix` (a host process).

Each target module has `session(config)` (an async context giving a connected protocol
client) and `serve(config, path)` (serve the unix socket `path` until stopped), both
taking a TargetConfig (config.py); serving.py holds what they share.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from docteur.cli.errors import HostError

TARGETS = ("microvm", "unix")  # the first is the default


def load(name: str) -> ModuleType:
    """The target module; imported only when used (the microvm one needs qemu.qmp)."""
    if name not in TARGETS:
        raise HostError(f"no target {name!r} (targets: {', '.join(TARGETS)})")
    try:
        return importlib.import_module(f"docteur.vm.targets.{name}")
    except ImportError as exc:
        raise HostError(f"the {name} target is not available ({exc}); use --target unix") from None
