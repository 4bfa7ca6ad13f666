"""`docteur make https://…`: smart HTTP over TLS on loopback, with a throwaway CA.

The CA is trusted the ways git users do it: SSL_CERT_FILE (OpenSSL's store),
GIT_SSL_CAINFO, git's http.sslCAInfo. An untrusted or wrong-host certificate is
one line, never silently accepted; credentials in the URL work and never show.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import docteur, fails
from tests.support.git import needs_git, rev
from tests.support.oracle import check_image
from tests.support.repos import make_repo
from tests.support.servers import run_http_git
from tests.support.tls import TLSMaterial, needs_openssl, tls_material

pytestmark = [needs_git, needs_openssl]
SECRET = "tl5-Passw0rd"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # any store without the test CA


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("https")
    make_repo(base / "project.git", bare=True)
    return base


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No CA named anywhere (the process's environment may name the system's): each
    test says which one it trusts, and how."""
    monkeypatch.delenv("GIT_SSL_CAINFO", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", SYSTEM_BUNDLE if os.path.exists(SYSTEM_BUNDLE) else os.devnull)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))  # none yet
    yield monkeypatch


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _same_as_file(img: Path, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`img` holds what an image of the same repository made over file:// holds: the same
    commit and exactly its objects (the packs may differ in their deltas), and verifies."""
    bare = served / "project.git"
    check_image(img, bare, rev(bare), tmp_path)
    ref = tmp_path / "file.img"
    assert docteur(capsys, "make", f"file://{bare}", ref)[0] == 0
    rc, report, _ = docteur(capsys, "verify", ref)
    assert rc == 0
    rc, got, _ = docteur(capsys, "verify", img)
    assert rc == 0 and got == report  # same commit, author, root and message


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "GIT_SSL_CAINFO", "http.sslCAInfo"])
def test_trusted_certificate(how: str, tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch, out: Path,
                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    if how == "SSL_CERT_FILE":
        trust.setenv("SSL_CERT_FILE", str(tls.ca))
    elif how == "GIT_SSL_CAINFO":
        trust.setenv("GIT_SSL_CAINFO", str(tls.ca))
    else:
        (tmp_path / "gitconfig").write_text(f"[http]\n\tsslCAInfo = {tls.ca}\n")
    img = out / "disk.img"
    with run_http_git(served, tls=TLSMaterial.server_context(tls.good)) as url:
        assert url.startswith("https://")
        rc, _, err = docteur(capsys, "make", f"{url}/project.git", img)
    assert rc == 0, err
    _same_as_file(img, served, tmp_path, capsys)


def test_no_trusted_ca(tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch, out: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The right certificate, but its CA is trusted nowhere."""
    with run_http_git(served, tls=TLSMaterial.server_context(tls.good)) as url:
        line = fails(capsys, "make", f"{url}/project.git", out / "disk.img")
    assert f"untrusted TLS certificate from {url}/project.git" in line, line
    assert "GIT_SSL_CAINFO" in line  # says how to trust it
    assert list(out.iterdir()) == []


def test_certificate_of_another_ca(tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch, out: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    trust.setenv("GIT_SSL_CAINFO", str(tls.ca))
    with run_http_git(served, tls=TLSMaterial.server_context(tls.untrusted)) as url:
        line = fails(capsys, "make", f"{url}/project.git", out / "disk.img")
    assert f"untrusted TLS certificate from {url}/project.git" in line, line
    assert list(out.iterdir()) == []


def test_wrong_host(tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch, out: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Signed by the trusted CA, but for wrong-host.example: refused all the same."""
    trust.setenv("GIT_SSL_CAINFO", str(tls.ca))
    with run_http_git(served, tls=TLSMaterial.server_context(tls.wrong_host)) as url:
        line = fails(capsys, "make", f"{url}/project.git", out / "disk.img")
    assert f"TLS certificate of {url}/project.git is for another host" in line, line
    assert "127.0.0.1" in line.split("another host", 1)[1]
    assert list(out.iterdir()) == []


def test_missing_ca_file(tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch, out: Path,
                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    trust.setenv("GIT_SSL_CAINFO", str(tmp_path / "no-such-ca.pem"))
    with run_http_git(served, tls=TLSMaterial.server_context(tls.good)) as url:
        line = fails(capsys, "make", f"{url}/project.git", out / "disk.img")
    missing = tmp_path / "no-such-ca.pem"
    assert f"cannot read the CA certificates {missing} (from GIT_SSL_CAINFO)" in line, line
    assert list(out.iterdir()) == []


def test_credentials_work_and_stay_hidden(tls: TLSMaterial, served: Path, trust: pytest.MonkeyPatch,
                                          out: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    trust.setenv("GIT_SSL_CAINFO", str(tls.ca))
    img = out / "disk.img"
    server = run_http_git(served, credentials=("alice", SECRET), tls=TLSMaterial.server_context(tls.good))
    with server as url:
        authed = url.replace("https://", f"https://alice:{SECRET}@") + "/project.git"
        rc, stdout, err = docteur(capsys, "--log-format", "json", "-vv", "make", authed, img)
        assert rc == 0, err
        assert SECRET not in stdout + err
        assert base64.b64encode(f"alice:{SECRET}".encode()).decode() not in err  # nor the header
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        fetching = [e for e in events if e.get("event") == "fetching"]
        assert fetching and fetching[0]["source"] == url.replace("https://", "https://***@") + "/project.git"
        rc, stdout, err = docteur(capsys, "-vv", "make", authed, img)  # the console format too
        assert rc == 0 and SECRET not in stdout + err
        _same_as_file(img, served, tmp_path, capsys)
        shutil.rmtree(out)
        out.mkdir()
        wrong = url.replace("https://", "https://alice:wr0ng-Passw0rd@") + "/project.git"
        rc, stdout, err = docteur(capsys, "--log-format", "json", "make", wrong, out / "no.img")
        assert rc == 1
        assert "wr0ng-Passw0rd" not in stdout + err
        (error,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert "authentication failed" in json.dumps(error), error
        nobody = url + "/project.git"  # no credentials at all: refused too, not prompted
        assert "authentication failed" in fails(capsys, "make", nobody, out / "no.img")
    assert list(out.iterdir()) == []
