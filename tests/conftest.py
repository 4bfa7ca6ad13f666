"""Fixtures shared by several test modules (the helpers they use are in tests/support/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import generated_image
from tests.support.repos import history_repo as make_history_repo
from tests.support.servers import run_git_daemon, run_http_git, ssh_standin


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that boots a microVM takes seconds at least: `make check` (-m "not slow")
    leaves it to `make test`."""
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def runtime_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the runtime tests keep their generated repository and images."""
    path = tmp_path_factory.getbasetemp() / "runtime"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def gen(runtime_base: Path) -> tuple[Path, Path]:
    """(bare repository, image) of the generated repository with thousands of files."""
    return generated_image(runtime_base)


@pytest.fixture(scope="session")
def history_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose files change over many commits, so its pack has delta chains."""
    return make_history_repo(tmp_path_factory.mktemp("history"))


# -- git servers on loopback -----------------------------------------------------------------


@pytest.fixture
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(base directory, git:// URL): put bare repositories under base."""
    base = tmp_path_factory.mktemp("daemon")
    with run_git_daemon(base) as url:
        yield base, url


@pytest.fixture
def http_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(base directory, http:// URL): smart HTTP for the bare repositories under base."""
    base = tmp_path_factory.mktemp("http")
    with run_http_git(base) as url:
        yield base, url


@pytest.fixture
def ssh_git(tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ssh stand-in script, with GIT_SSH pointing at it (GIT_SSH_COMMAND unset)."""
    script = ssh_standin(tmp_path_factory.mktemp("ssh"))
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.setenv("GIT_SSH", str(script))
    yield script


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests never write the user's cache: what `docteur run` keeps there (its
    snapshots) goes to a session directory (the checkout's build/guest is still found
    first; the tests of the guest cache name their own)."""
    path = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(path))
        yield path
