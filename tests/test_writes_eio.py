"""An I/O error while the server writes: the batch fails with the error, no END; from
then on every write is read_only with the reason, reads go on, and the image still
opens at the last commit that reached its commit point. The errors come from a real
device whose writes or flushes start failing (EIO), in process."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest.device import FileDevice
from docteur.guest.image import Image
from docteur.guest.protocol import End, Error
from docteur.guest.service import Service
from docteur.guest.treeview import Disk
from docteur.guest.values import CommitArgs
from docteur.guest.writer import DiskWriter
from tests.support.v2 import FILES, Session, writable_image
from tests.support.writes import head_files


class FailingDevice(FileDevice):
    """The image file, whose writes (after `writes_ok` of them) or flushes fail with EIO."""

    def __init__(self, path: str, writes_ok: int | None = None, flushes_ok: int | None = None):
        super().__init__(path, writable=True)
        self.writes_ok, self.flushes_ok = writes_ok, flushes_ok

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        if self.writes_ok is not None:
            if self.writes_ok == 0:
                raise OSError(errno.EIO, "Input/output error")
            self.writes_ok -= 1
        super()._raw_pwrite(data, off)

    def _raw_flush(self) -> None:
        if self.flushes_ok is not None:
            if self.flushes_ok == 0:
                raise OSError(errno.EIO, "Input/output error")
            self.flushes_ok -= 1
        super()._raw_flush()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eio")


@pytest.fixture
def image(base: Path, tmp_path: Path) -> Path:
    return writable_image(base, tmp_path)


@pytest.fixture
def served(image: Path) -> Iterator[tuple[Service, FailingDevice]]:
    """The service `--rw` boots, on a device that works until told to fail."""
    device = FailingDevice(str(image))
    served = Image.open(str(image), "pack", lock=False, device=device)
    disk = Disk("docteur", served)
    service = Service({"docteur": disk}, {"status": "ok"}, None, {"docteur": DiskWriter(disk)})
    yield service, device
    service.close()


def after_failure(session: Session, image: Path, head: bytes, files: dict[str, bytes]) -> None:
    """Writes refused with the reason, reads served, the image at `head` on disk."""
    err = session.error("begin")
    assert err.code == "read_only"
    assert "after an I/O error" in err.message and "restart to write again" in err.message
    put = session.put(b"/again", b"x", commit=CommitArgs())
    assert isinstance(put, Error) and put.code == "read_only"
    fresh = Session(session.pair.server.app)  # type: ignore[arg-type]
    assert "after an I/O error" in fresh.hello.fields["writable.docteur"]
    for path, data in files.items():
        assert fresh.get(b"/" + path.encode()) == data
    on_disk_head, on_disk = head_files(image)
    assert on_disk_head == head
    assert {p: d for p, (_, d) in on_disk.items()} == files


def test_eio_writing_the_data_fails_the_put(served: tuple[Service, FailingDevice], image: Path) -> None:
    service, device = served
    head, _ = head_files(image)
    session = Session(service)
    session.ok("begin")
    assert isinstance(session.put(b"/small", b"small"), End)
    device.writes_ok = 0
    noise = random.Random(3).randbytes(6 << 20)  # past the writer's buffer: written while it comes
    put = session.put(b"/big", noise)
    assert isinstance(put, Error) and put.code == "image", put
    assert "I/O error" in put.message and "Input/output error" in put.message
    assert session.error("commit", args=CommitArgs()).code == "no_batch"  # the batch is gone
    after_failure(session, image, head, FILES)


@pytest.mark.parametrize("flushes_ok", [0, 1], ids=["flush-before-root", "flush-after-root"])
def test_eio_on_a_flush_fails_the_commit(
    served: tuple[Service, FailingDevice], image: Path, flushes_ok: int
) -> None:
    service, device = served
    session = Session(service)
    done = session.ok("remove", b"/run.sh")  # a commit that works first
    files = {p: d for p, d in FILES.items() if p != "run.sh"}
    device.flushes_ok = flushes_ok
    session.ok("begin")
    session.put(b"/new", b"new")
    err = session.error("commit", args=CommitArgs("lost"))
    assert err.code == "image" and "flush failed" in err.message, err
    # Served: the last commit answered. After a failed second flush the root record may
    # or may not be on the disk: a restart then finds the new commit or the one before.
    assert session.ok("info")["commit"] == done.commit.hex()  # type: ignore[union-attr]
    if flushes_ok == 0:
        after_failure(session, image, done.commit, files)  # type: ignore[union-attr]
    else:
        assert session.error("begin").code == "read_only"
        assert session.get(b"/README.md") == FILES["README.md"]
        on_disk_head, on_disk = head_files(image)
        contents = {p: d for p, (_, d) in on_disk.items()}
        assert contents in (files, {**files, "new": b"new"})
        assert (on_disk_head == done.commit) == (contents == files)  # type: ignore[union-attr]
