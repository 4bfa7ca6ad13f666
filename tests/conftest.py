"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime_images import generated_image


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
