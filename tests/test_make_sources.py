"""How SOURCE arguments are understood (no network, no git needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docteur.builder.errors import BuildError
from docteur.builder.source import parse_source


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("http://h:8080/r", "http://h:8080/r"),
        ("git://h/r.git", "git://h/r.git"),
        ("ssh://git@h:2222/r.git", "ssh://git@h:2222/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("host.example:r.git", "host.example:r.git"),
        ("https://TOKEN123@h/r.git", "https://***@h/r.git"),
        ("https://u:pw-123@h/r.git", "https://***@h/r.git"),
        ("ssh://u:pw-123@h/r.git", "ssh://u:***@h/r.git"),
    ],
)
def test_remote(text: str, display: str) -> None:
    src = parse_source(text)
    assert (src.kind, src.location, src.display) == ("remote", text, display)


def test_local_kinds(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (tmp_path / "work" / ".git").mkdir(parents=True)
    bare = tmp_path / "bare.git"
    for sub in ("objects", "refs"):
        (bare / sub).mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    assert parse_source(f"file://{plain}").kind == "directory"
    assert parse_source(f"file://localhost{plain}").kind == "directory"
    assert parse_source(f"file://{tmp_path / 'work'}").kind == "local-git"
    assert parse_source(str(bare)).kind == "local-git"
    assert parse_source("plain", cwd=str(tmp_path)).location == str(plain)
    assert parse_source("relativize://plain", cwd=str(tmp_path)).location == str(plain)
    # A colon in an existing local name is a path, not host:path.
    (tmp_path / "a:b").mkdir()
    assert parse_source("a:b", cwd=str(tmp_path)).kind == "directory"
    assert parse_source("./a:b", cwd=str(tmp_path)).kind == "directory"


@pytest.mark.parametrize(
    "text", ["", "ftp://h/r", "file://rel", "relativize://", "https://h", "https:///r"]
)
def test_bad(text: str) -> None:
    with pytest.raises(BuildError):
        parse_source(text)
