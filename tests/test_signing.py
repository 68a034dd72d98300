"""Signing with a CA generated here: openssl accepts our .signed files, tampering fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers_signing import certificate
from swupd_repo.errors import SigningError
from swupd_repo.swupd import signing

PASS = b"correct horse battery staple"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    root_key = rsa.generate_private_key(65537, 2048)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = rsa.generate_private_key(65537, 2048)
    root = certificate("Test Root", root_key, "Test Root", root_key, ca=True)
    mid = certificate("Test Intermediate", mid_key, "Test Root", root_key, ca=True)
    leaf = certificate("R0-0", leaf_key, "Test Intermediate", mid_key, ca=False)
    # the key as swupd's test set has it: traditional PEM, AES-256-CBC
    (d / "leaf.key.pem").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(PASS)))
    (d / "leaf.cert.pem").write_bytes(_pem(leaf))
    (d / "ca-chain.cert.pem").write_bytes(_pem(leaf) + _pem(mid) + _pem(root))
    (d / "root.pem").write_bytes(_pem(root))
    (d / "passphrase").write_bytes(PASS + b"\n")
    (d / "other.key.pem").write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {p.name: p for p in d.iterdir()}


def _material(pki: dict[str, Path]) -> signing.SigningMaterial:
    return signing.load_signing_material(pki["leaf.key.pem"], pki["leaf.cert.pem"],
                                         pki["ca-chain.cert.pem"], pki["passphrase"])


def test_openssl_verifies_our_pem_and_der(pki: dict[str, Path], tmp_path: Path) -> None:
    data = b"MANIFEST\t3\nversion:\t20\n" * 50
    (tmp_path / "Manifest.MoM").write_bytes(data)
    m = _material(pki)
    pem = signing.sign_pem(m, data)
    assert pem.startswith(b"-----BEGIN PKCS7-----")
    (tmp_path / "Manifest.MoM.signed").write_bytes(pem)
    (tmp_path / "Manifest.MoM.sig").write_bytes(signing.sign_der(m, data))
    for name, form in (("Manifest.MoM.signed", "PEM"), ("Manifest.MoM.sig", "DER")):
        subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", form,
                        "-in", str(tmp_path / name), "-content", str(tmp_path / "Manifest.MoM"),
                        "-CAfile", str(pki["root.pem"]), "-purpose", "any",
                        "-out", "/dev/null"], check=True, capture_output=True)
    printed = subprocess.run(["openssl", "pkcs7", "-print_certs", "-noout", "-in",
                              str(tmp_path / "Manifest.MoM.signed")],
                             capture_output=True, text=True, check=True).stdout
    assert {"CN = R0-0", "CN = Test Intermediate", "CN = Test Root"} <= {
        line.split("subject=")[1].strip() for line in printed.splitlines()
        if "subject=" in line}
    asn1 = subprocess.run(["openssl", "asn1parse", "-inform", "PEM", "-in",
                           str(tmp_path / "Manifest.MoM.signed")],
                          capture_output=True, text=True, check=True).stdout
    assert "sha256" in asn1 and "messageDigest" in asn1 and "signingTime" in asn1


def test_verify_accepts_and_rejects(pki: dict[str, Path]) -> None:
    m = _material(pki)
    data = b"pack bytes" * 1000
    for sig in (signing.sign_pem(m, data), signing.sign_der(m, data)):
        signing.verify(data, sig, [pki["root.pem"]])
        with pytest.raises(SigningError, match="message digest"):
            signing.verify(data + b"!", sig, [pki["root.pem"]])
        other = certificate("Other Root", rsa.generate_private_key(65537, 2048), "Other Root",
                      rsa.generate_private_key(65537, 2048), ca=True)
        with pytest.raises(SigningError, match="trusted"):
            signing.verify(data, sig, [other])
    sig = bytearray(signing.sign_der(m, data))
    sig[-5] ^= 0xFF  # inside the signature value
    with pytest.raises(SigningError, match="invalid"):
        signing.verify(data, bytes(sig), [pki["root.pem"]])


def test_openssl_rejects_tampered_data(pki: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "f"
    data.write_bytes(b"hello")
    (tmp_path / "f.signed").write_bytes(signing.sign_pem(_material(pki), b"hello"))
    data.write_bytes(b"hellO")
    result = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "PEM",
                             "-in", str(tmp_path / "f.signed"), "-content", str(data),
                             "-CAfile", str(pki["root.pem"]), "-purpose", "any"],
                            capture_output=True)
    assert result.returncode != 0


def test_expired_chain_needs_no_check_time(pki: dict[str, Path], tmp_path: Path) -> None:
    """Like the swupd test certificates (expired 2015): verify only without the time check."""
    key = rsa.generate_private_key(65537, 2048)
    old = certificate("Old", key, "Old", key, ca=True, days=(-800, -400))
    (tmp_path / "k").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "c").write_bytes(_pem(old))
    m = signing.load_signing_material(tmp_path / "k", tmp_path / "c", None, None)
    sig = signing.sign_pem(m, b"x")
    with pytest.raises(SigningError, match="not valid now"):
        signing.verify(b"x", sig, [old])
    signing.verify(b"x", sig, [old], check_time=False)


def test_loading_errors_name_the_file(pki: dict[str, Path], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the passphrase\n")
    with pytest.raises(SigningError, match=r"leaf\.key\.pem.*wrong passphrase"):
        signing.load_signing_material(pki["leaf.key.pem"], pki["leaf.cert.pem"], None, wrong)
    with pytest.raises(SigningError, match="encrypted but no passphrase"):
        signing.load_signing_material(pki["leaf.key.pem"], pki["leaf.cert.pem"], None, None)
    with pytest.raises(SigningError, match=r"missing\.pem"):
        signing.load_signing_material(tmp_path / "missing.pem", pki["leaf.cert.pem"], None,
                                      None)
    with pytest.raises(SigningError, match=r"other\.key\.pem does not belong"):
        signing.load_signing_material(pki["other.key.pem"], pki["leaf.cert.pem"], None, None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    with pytest.raises(SigningError, match=r"garbage\.pem"):
        signing.load_signing_material(pki["other.key.pem"], garbage, None, None)
    # chain: the leaf itself is not carried twice
    assert len(_material(pki).chain) == 2
