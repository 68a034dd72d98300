"""Signing and tampering helpers for the repository tests (client, check, builder).

Importable from any test (``from helpers_signing import ...``; tests/ is on ``sys.path`` under
pytest). Certificates are made here, valid from yesterday to tomorrow, so no test depends on
the expired 2016 test certificates unless it means to.
"""

from __future__ import annotations

import datetime
import io
import tarfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from swupd_repo.swupd.signing import SigningMaterial, sign_pem

PASSPHRASE = b"correct horse"


def certificate(subject: str, key: Any, issuer: str, issuer_key: Any, *,
                ca: bool, days: tuple[int, int] = (-1, 1)) -> x509.Certificate:
    """A certificate for ``key`` signed by ``issuer_key``, valid ``days`` around now (from
    yesterday to tomorrow)."""
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def make_signer(tmp_path: Path, name: str) -> tuple[SigningMaterial, Path]:
    """A self-signed RSA certificate valid now; returns (SigningMaterial, cert PEM path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = certificate(name, key, name, key, ca=True)
    pem = tmp_path / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SigningMaterial(key, cert), pem


def make_ca_chain(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A CA and a leaf it signed (EC P-256): (leaf key, leaf cert, CA cert, passphrase file).

    The leaf key is encrypted with :data:`PASSPHRASE`, which the passphrase file holds.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    leaf = certificate("test leaf", leaf_key, "test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = (tmp_path / "leaf.key", tmp_path / "leaf.pem", tmp_path / "chain.pem",
             tmp_path / "pass")
    files[0].write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE)))
    files[1].write_bytes(leaf.public_bytes(pem))
    files[2].write_bytes(ca.public_bytes(pem))
    files[3].write_bytes(PASSPHRASE + b"\n")
    return files


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """An xz tar of regular files (name, body), mode 0644, like a manifest tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def manifest_tar(plain: bytes, name: str) -> bytes:
    """``Manifest.<name>.tar`` holding only the plain manifest (unsigned)."""
    return tar_of([(f"Manifest.{name}", plain)])


def sign_www(www: Path, material: SigningMaterial) -> None:
    """Sign every manifest like swupd-server 2.53: ``.signed`` inside the tar and beside it."""
    for plain in www.glob("*/Manifest.*"):
        if plain.suffix in (".tar", ".signed") or "-delta-" in plain.name:
            continue
        data = plain.read_bytes()
        signature = sign_pem(material, data)
        plain.with_name(plain.name + ".signed").write_bytes(signature)
        plain.with_name(plain.name + ".tar").write_bytes(
            tar_of([(plain.name, data), (plain.name + ".signed", signature)]))


def tamper_fullfile(path: Path) -> None:
    """Same single member name, different content (so a new size and mtime on disk)."""
    with tarfile.open(path, "r:*") as tar:
        member = tar.getmembers()[0]
        data = tar.extractfile(member).read() + b"evil"
    member.size = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        out.addfile(member, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
