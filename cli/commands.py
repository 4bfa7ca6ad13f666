"""What each `docteur` subcommand does, from its parsed arguments.

The builder (`docteur.builder`) and the VM side (`docteur.vm`) are imported here, inside
the command that needs them: each side stays unaware of the other, and `docteur --help`
loads neither.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

from docteur.guest.defaults import DEFAULT_DISK

from . import log
from .errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports on every start
    from types import ModuleType

    from docteur.vm.targets.config import TargetConfig


def make(args: argparse.Namespace) -> int:
    from docteur.builder.make import make

    from .progress import human_bytes

    s = make(args.source, args.image, ref=args.ref, date=args.date, block_size=args.bs,
             timeout=args.timeout, capacity=args.capacity)  # fmt: skip
    log.notice(
        f"{s.image}: commit {s.commit.hex()}, {s.objects} objects, {human_bytes(s.size)} ({s.size} bytes)",
        "image written", image=s.image, commit=s.commit.hex(), objects=s.objects, size=s.size,
    )
    return 0


def verify(args: argparse.Namespace) -> int:
    from docteur.builder.report import verify_image

    verify_image(args.image, sys.stdout.buffer, quiet=args.quiet)
    return 0


def block_specs(image: str | None, specs: Sequence[str]) -> dict[str, str]:
    """--block NAME=IMAGE (repeatable) and a bare IMAGE (= --block docteur=IMAGE)."""
    blocks: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--block {spec}: expected NAME=IMAGE")
        if name in blocks:
            raise UsageError(f"--block {name} given twice")
        blocks[name] = path
    if image:
        if DEFAULT_DISK in blocks:
            raise UsageError(f"IMAGE and --block {DEFAULT_DISK}=... both given")
        blocks = {DEFAULT_DISK: image, **blocks}
    if not blocks:
        raise UsageError("no image: give IMAGE or --block NAME=IMAGE")
    return blocks


def target_config(args: argparse.Namespace) -> TargetConfig:
    from docteur.vm.targets.config import TargetConfig

    return TargetConfig(
        blocks=block_specs(args.image, args.block), verify=args.verify, timeout=args.timeout,
        writable=args.rw,
        disk=args.disk, filename=args.filename, socket=args.socket, memory=args.memory,
        accel=args.accel, kernel=args.kernel, initrd=args.initrd, snapshot=args.snapshot,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from docteur.vm import targets
    from docteur.vm.client import run as run_async
    from docteur.vm.targets.serving import print_file

    target = targets.load(args.target)
    config = target_config(args)
    if config.socket:
        return run_async(target.serve(config, config.socket))
    if config.filename is None:
        return run_console(target, config)
    return run_async(print_file(target, config))


def run_console(target: ModuleType, config: TargetConfig) -> int:
    """`docteur run IMAGE` alone: the query console on the booted guest; leaving it powers
    the guest off (the session's exit)."""
    from docteur.vm.client import new_runner
    from docteur.vm.targets.console import console
    from docteur.vm.targets.serving import say_not_writable

    with new_runner() as runner:
        session = target.session(config)
        client = runner.run(session.__aenter__())
        try:
            say_not_writable(config, client.hello)
            return console(runner, client)
        finally:  # Ctrl-C and SIGTERM too: a clean power-off, not a killed VM
            runner.run(session.__aexit__(None, None, None))


def guest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from docteur.vm.guestbuild import cache

    if args.action != "build" and (args.force or args.from_manifest):
        raise UsageError(f"guest {args.action}: --force and --from-manifest are for `guest build`")
    if args.action == "build":
        where = cache.build(args.force, Path(args.from_manifest) if args.from_manifest else None)
        print(where)
        return 0
    where = cache.locate(build_missing=False)
    if args.action == "path":
        if where is None:
            raise cache.GuestError(f"no guest built yet (in {cache.guest_root()}): `docteur guest build`")
        print(where)
        return 0
    info = cache.describe(where)
    width = max(len(k) for k in info) + 2
    for key, value in info.items():
        print(f"{key + ':':<{width}}{value}")
    return 0


def query(args: argparse.Namespace) -> int:
    from docteur.vm.client import Client, new_runner
    from docteur.vm.targets.console import console, execute
    from docteur.vm.targets.serving import check_path_length

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    check_path_length(args.socket)  # connect() would say "No such file or directory"
    with new_runner() as runner:
        client = runner.run(Client.open_unix(args.socket, timeout=args.timeout, disk=args.disk))
        try:
            if not argv:
                return console(runner, client)
            runner.run(execute(client, argv, sys.stdout.buffer))
            return 0
        finally:
            with contextlib.suppress(Exception):
                runner.run(client.close())


def _written(result: object) -> int:
    """The new commit id on stdout; an unchanged tree makes none, and says so."""
    from docteur.builder.writes import Result

    assert isinstance(result, Result)
    if result.commit is None:
        log.notice(f"{result.image}: nothing changed, no commit (head {result.head.hex()})",
                   "unchanged", image=result.image, head=result.head.hex())  # fmt: skip
        return 0
    print(result.commit.hex(), flush=True)
    log.notice(f"{result.image}: generation {result.generation}", "committed", image=result.image,
               commit=result.commit.hex(), generation=result.generation)  # fmt: skip
    return 0


def put(args: argparse.Namespace) -> int:
    from docteur.builder.writes import put

    return _written(put(args.image, args.path, args.file, args.message, args.author, args.date))


def rm(args: argparse.Namespace) -> int:
    from docteur.builder.writes import remove

    return _written(remove(args.image, args.path, args.message, args.author, args.date))


def mv(args: argparse.Namespace) -> int:
    from docteur.builder.writes import move

    return _written(move(args.image, args.source, args.dest, args.message, args.author, args.date))


def commit(args: argparse.Namespace) -> int:
    from docteur.builder.writes import commit_directory

    return _written(commit_directory(args.image, args.directory, args.message, args.author, args.date))


def history(args: argparse.Namespace) -> int:
    from docteur.builder.writes import log_lines

    out = sys.stdout
    for line in log_lines(args.image):
        out.write(line + "\n")
    out.flush()
    return 0


def compact(args: argparse.Namespace) -> int:
    from docteur.builder.writes import compact

    c = compact(args.image)
    log.notice(
        f"{args.image}: compacted into generation {c.generation}, {c.commits} commits kept; "
        f"{c.used_before} bytes in use before, {c.used_after} after",
        "compacted", image=args.image, generation=c.generation, commits=c.commits,
        used_before=c.used_before, used_after=c.used_after,
    )  # fmt: skip
    return 0


def export(args: argparse.Namespace) -> int:
    from docteur.builder.writes import export

    head, branch = export(args.image, args.dest)
    log.notice(f"{args.dest}: branch {branch} at {head.hex()}", "exported", dest=args.dest,
               branch=branch, head=head.hex())  # fmt: skip
    return 0


def grow(args: argparse.Namespace) -> int:
    from docteur.guest.capacity import grow

    free = grow(args.image, args.size)
    log.notice(f"{args.image}: {args.size} bytes, {free} free for writes", "grown", image=args.image,
               size=args.size, free=free)  # fmt: skip
    return 0


COMMANDS = {
    "make": make, "verify": verify, "run": run, "query": query, "put": put, "rm": rm, "mv": mv,
    "commit": commit, "log": history, "compact": compact, "export": export, "grow": grow,
    "guest": guest,
}  # fmt: skip


# -- push and pull (issue 10) ---------------------------------------------------------------------
def _sync_target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(IMAGE, REMOTE) of push and pull: with --socket there is no IMAGE, so the one
    positional given is the REMOTE."""
    if args.socket is None:
        if args.image is None:
            raise UsageError(f"{args.command}: give IMAGE (or --socket PATH)")
        if args.disk is not None:
            raise UsageError(f"{args.command}: --disk goes with --socket (an image file is one disk)")
        return args.image, args.remote
    if args.remote is not None:
        raise UsageError(f"{args.command} --socket takes no IMAGE: give [REMOTE] only")
    return None, args.image


@contextlib.contextmanager
def _sync_image(args: argparse.Namespace, image: str | None) -> Iterator[object]:
    """The image push and pull work on: the file, or the appliance's disk."""
    from docteur.builder.sync.image import file_image

    if image is not None:
        with file_image(image) as target:
            yield target
        return
    from .parser import QUERY_TIMEOUT
    from .syncsocket import socket_image

    disk = args.disk or DEFAULT_DISK
    with socket_image(args.socket, disk, max(args.timeout, QUERY_TIMEOUT)) as target:
        yield target


def push(args: argparse.Namespace) -> int:
    from docteur.builder.sync.push import push_from

    image, remote = _sync_target(args)
    with _sync_image(args, image) as target:
        p = push_from(target, remote, args.branch, args.timeout)  # type: ignore[arg-type]
    if p.objects or p.old != p.head:
        log.notice(f"{p.remote}: {p.old.hex() if p.old else '(new branch)'} -> {p.head.hex()}, "
                   f"{p.objects} objects sent", "pushed", remote=p.remote, old=p.old.hex() if p.old else None,
                   head=p.head.hex(), objects=p.objects)  # fmt: skip
    else:
        log.notice(f"{p.remote}: up to date at {p.head.hex()}", "up to date", remote=p.remote,
                   head=p.head.hex())  # fmt: skip
    print(p.head.hex(), flush=True)
    return 0


def pull(args: argparse.Namespace) -> int:
    from docteur.builder.sync.pull import pull_into

    image, remote = _sync_target(args)
    with _sync_image(args, image) as target:
        p = pull_into(target, remote, args.branch, args.merge, args.author, args.timeout)  # type: ignore[arg-type]
    out = sys.stdout
    for kind, path in p.changes:
        out.write(f"{kind} {os.fsdecode(path)}\n")
    out.write(f"head {p.head.hex()}\n")
    out.flush()
    detail = f", {p.ahead} commits to push" if p.ahead else ""
    log.notice(f"{p.remote}: {p.outcome}{detail}, generation {p.generation}", p.outcome, remote=p.remote,
               head=p.head.hex(), generation=p.generation, changes=len(p.changes))  # fmt: skip
    return 0


COMMANDS.update(push=push, pull=pull)
