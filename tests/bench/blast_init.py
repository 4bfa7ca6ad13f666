#!/usr/bin/python3.11 -IS
"""/init of the benchmark's raw-port boot (see initrds.py): the guest's own machine
set-up, then `docteur.blast_mib` MiB of zeros written to the protocol port, then off."""

import os
import sys

from docteur.guest import pid1


def blast(port: str, total: int) -> None:
    buf = memoryview(bytes(1 << 18))
    fd = os.open(port, os.O_WRONLY)
    sent = 0
    while sent < total:
        sent += os.write(fd, buf[: min(len(buf), total - sent)])  # writes can be short
    os.close(fd)


try:
    params = pid1.setup()
    blast(pid1.server_argv(params)[-1], int(params.get("blast_mib", "64")) << 20)
except BaseException as exc:  # PID 1: whatever happened, power off below
    pid1.log(f"FATAL: {type(exc).__name__}: {exc}")
finally:
    sys.stderr.flush()
    pid1.power_off()
    os._exit(1)
