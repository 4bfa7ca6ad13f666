"""Throwaway certificates for TLS on loopback, made with the openssl command."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@dataclass(frozen=True)
class TLSMaterial:
    ca: Path  # the CA certificate a client is told to trust
    good: tuple[Path, Path]  # (certificate, key) for 127.0.0.1, signed by `ca`
    wrong_host: tuple[Path, Path]  # signed by `ca`, but for wrong-host.example only
    untrusted: tuple[Path, Path]  # for 127.0.0.1, signed by a CA nobody trusts

    @staticmethod
    def server_context(pair: tuple[Path, Path]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair[0], pair[1])
        return ctx


def _openssl(*args: str | os.PathLike[str], cwd: Path) -> None:
    proc = subprocess.run(["openssl", *map(os.fspath, args)], cwd=cwd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))}: {proc.stderr.decode()}")


_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", *_KEY, "-keyout", key, "-out", cert, "-days", "2",
             "-subj", f"/CN=docteur test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], alt_names: str) -> tuple[Path, Path]:
    cert, key, csr, ext = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext, cwd=d)  # fmt: skip
    return cert, key


def tls_material(d: Path) -> TLSMaterial:
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    return TLSMaterial(
        ca=ca[0],
        good=_leaf(d, "good", ca, "IP:127.0.0.1,DNS:localhost"),
        wrong_host=_leaf(d, "wrong-host", ca, "DNS:wrong-host.example"),
        untrusted=_leaf(d, "untrusted", other, "IP:127.0.0.1,DNS:localhost"),
    )
