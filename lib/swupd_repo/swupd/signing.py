"""Detached PKCS#7 signatures, as swupd-server 2.53 and mixer make them (format3 §6).

``sign_pem`` writes what ``openssl smime -sign -binary -outform PEM -md sha256 -certfile
chain`` writes (the ``.signed`` files: SignedData, SHA-256, signed attributes, signer and chain
certificates); ``sign_der`` the DER form later clients fetch as ``Manifest.MoM.sig``.

``verify`` is implemented here rather than by calling ``openssl``: ``cryptography`` builds
PKCS#7 but cannot verify it, and a library check needs no external binary at run time. It
parses the SignedData with a minimal DER reader, then checks (1) the ``messageDigest``
attribute equals SHA-256/384/512 of the data, (2) the signer's signature over the DER of the
signed attributes, (3) a chain from the signer certificate through the certificates carried
in the signature to one of the trusted certificates, each link signed by the next, and with
``check_time`` each certificate's validity period. It does not evaluate key usage, name or
policy constraints (``openssl smime -verify`` with ``-purpose any`` is the closest match);
the tests cross-check it against ``openssl smime -verify``.

Loading is strict and early: a wrong passphrase, an unreadable key or certificate, or a key
that does not belong to the certificate raise :class:`SigningError` naming the file before
the caller writes anything.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from ..errors import SigningError

_OPTIONS = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]


@dataclass(frozen=True)
class SigningMaterial:
    """A loaded leaf key, its certificate and the chain to include in every signature."""

    key: pkcs7.PKCS7PrivateKeyTypes
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the signing {what} {path}: {exc.strerror}",
                           hint="check SWUPD_REPO_SIGNING_* / signing_* settings") from exc


def _certs(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise SigningError(f"the signing {what} {path} holds no PEM or DER certificate",
                               hint="give a PEM file with -----BEGIN CERTIFICATE-----") from exc
    return certs


def load_signing_material(key: Path, cert: Path, chain: Path | None,
                          passphrase_file: Path | None) -> SigningMaterial:
    """Load and cross-check the signing files (openssl's ``-passin file:``: first line)."""
    password = None
    if passphrase_file is not None:
        lines = _read(passphrase_file, "passphrase file").splitlines()
        password = lines[0] if lines else b""
    key_data = _read(key, "key")
    try:
        private = serialization.load_pem_private_key(key_data, password)
    except TypeError as exc:
        if password is None:
            raise SigningError(f"the signing key {key} is encrypted but no passphrase file "
                               "was given", hint="set the signing passphrase file") from exc
        private = _load_plain(key, key_data)  # a passphrase for an unencrypted key: harmless
    except ValueError as exc:
        why = "wrong passphrase or damaged key" if password is not None else "not a PEM key"
        raise SigningError(f"cannot load the signing key {key}: {why}",
                           hint=f"check the passphrase in {passphrase_file}"
                           if passphrase_file else "give a PEM private key") from exc
    except UnsupportedAlgorithm as exc:
        raise SigningError(f"the signing key {key} uses an unsupported algorithm") from exc
    if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError(f"the signing key {key} must be RSA or EC for PKCS#7 signing")
    leaf = _certs(cert, "certificate")[0]
    if (leaf.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
            != private.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)):
        raise SigningError(f"the signing key {key} does not belong to the certificate {cert}",
                           hint="give the key and certificate of the same leaf")
    extra = tuple(c for c in (_certs(chain, "chain") if chain else []) if c != leaf)
    return SigningMaterial(private, leaf, extra)


def _load_plain(path: Path, data: bytes) -> pkcs7.PKCS7PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, None)  # type: ignore[return-value]
    except (ValueError, TypeError) as exc:
        raise SigningError(f"cannot load the signing key {path}") from exc


def _builder(material: SigningMaterial, data: bytes) -> pkcs7.PKCS7SignatureBuilder:
    builder = (pkcs7.PKCS7SignatureBuilder().set_data(data)
               .add_signer(material.cert, material.key, hashes.SHA256()))
    for c in material.chain:
        builder = builder.add_certificate(c)
    return builder


def sign_pem(material: SigningMaterial, data: bytes) -> bytes:
    """Detached SignedData, PEM (``-----BEGIN PKCS7-----``): the 2.53 ``.signed`` files."""
    return _builder(material, data).sign(serialization.Encoding.PEM, _OPTIONS)


def sign_der(material: SigningMaterial, data: bytes) -> bytes:
    """Detached SignedData, DER: ``Manifest.MoM.sig`` for later clients."""
    return _builder(material, data).sign(serialization.Encoding.DER, _OPTIONS)


# --------------------------------------------------------------------------- verification

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_DIGESTS = {"2.16.840.1.101.3.4.2.1": (hashlib.sha256, hashes.SHA256()),
            "2.16.840.1.101.3.4.2.2": (hashlib.sha384, hashes.SHA384()),
            "2.16.840.1.101.3.4.2.3": (hashlib.sha512, hashes.SHA512())}


@dataclass(frozen=True)
class _Tlv:
    tag: int
    raw: bytes  # the whole encoding, header included
    body: bytes


def _tlv(buf: bytes, pos: int = 0) -> tuple[_Tlv, int]:
    if pos + 2 > len(buf):
        raise SigningError("signature is truncated (DER)")
    tag, first = buf[pos], buf[pos + 1]
    hdr = 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + 2 + n > len(buf):
            raise SigningError("signature has an invalid DER length")
        length = int.from_bytes(buf[pos + 2:pos + 2 + n], "big")
        hdr += n
    end = pos + hdr + length
    if end > len(buf):
        raise SigningError("signature is truncated (DER)")
    return _Tlv(tag, buf[pos:end], buf[pos + hdr:end]), end


def _children(body: bytes) -> list[_Tlv]:
    out, pos = [], 0
    while pos < len(body):
        item, pos = _tlv(body, pos)
        out.append(item)
    return out


def _oid(tlv: _Tlv) -> str:
    if tlv.tag != 0x06 or not tlv.body:
        raise SigningError("signature: expected an OBJECT IDENTIFIER")
    b = tlv.body
    parts = [min(b[0] // 40, 2), b[0] - 40 * min(b[0] // 40, 2)]
    value = 0
    for byte in b[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _der(signature: bytes) -> bytes:
    if signature.lstrip().startswith(b"-----BEGIN"):
        import base64

        lines = [ln for ln in signature.strip().splitlines() if not ln.startswith(b"-----")]
        return base64.b64decode(b"".join(lines))
    return signature


def _as_cert(c: x509.Certificate | str | Path) -> list[x509.Certificate]:
    if isinstance(c, x509.Certificate):
        return [c]
    return _certs(Path(c), "trusted certificate")


def load_trusted(certs: Iterable[x509.Certificate | str | Path]) -> list[x509.Certificate]:
    """Certificates and certificate files as loaded certificates: a run that verifies many
    signatures reads the files once (and a bad file fails once, up front)."""
    return [c for t in certs for c in _as_cert(t)]


def verify(data: bytes, signature: bytes,
           trusted_certs: Iterable[x509.Certificate | str | Path], *,
           check_time: bool = True) -> None:
    """Check a detached PKCS#7 (PEM or DER) over ``data``; raise :class:`SigningError`."""
    trusted = load_trusted(trusted_certs)
    try:
        content_info, _ = _tlv(_der(signature))
        ci = _children(content_info.body)
        if _oid(ci[0]) != _OID_SIGNED_DATA or ci[1].tag != 0xA0:
            raise SigningError("signature is not a PKCS#7 SignedData")
        signed_data = _children(_children(ci[1].body)[0].body)
        carried = [x509.load_der_x509_certificate(c.raw)
                   for t in signed_data if t.tag == 0xA0 for c in _children(t.body)]
        signer_infos = [t for t in signed_data if t.tag == 0x31][-1]
        infos = _children(signer_infos.body)
    except (IndexError, ValueError) as exc:
        raise SigningError(f"signature is malformed: {exc}") from exc
    if not infos:
        raise SigningError("signature has no signer")
    for info in infos:
        _verify_signer(data, _children(info.body), carried, trusted, check_time)


def _verify_signer(data: bytes, fields: list[_Tlv], carried: list[x509.Certificate],
                   trusted: list[x509.Certificate], check_time: bool) -> None:
    issuer_serial = _children(fields[1].body)
    serial = int.from_bytes(issuer_serial[1].body, "big", signed=True)
    signer = next((c for c in carried + trusted if c.serial_number == serial
                   and c.issuer.public_bytes() == issuer_serial[0].raw), None)
    if signer is None:
        raise SigningError("the signer's certificate is not in the signature")
    digest_oid = _oid(_children(fields[2].body)[0])
    if digest_oid not in _DIGESTS:
        raise SigningError(f"unsupported digest algorithm {digest_oid}")
    hash_fn, hash_alg = _DIGESTS[digest_oid]
    attrs = fields[3] if fields[3].tag == 0xA0 else None
    if attrs is None:
        raise SigningError("signature has no signed attributes")
    digest = None
    for attr in _children(attrs.body):
        parts = _children(attr.body)
        if _oid(parts[0]) == _OID_MESSAGE_DIGEST:
            digest = _children(parts[1].body)[0].body
    if digest != hash_fn(data).digest():
        raise SigningError("signature does not match the data (message digest differs)")
    signed = b"\x31" + attrs.raw[1:]  # the signature covers the attributes as a SET
    sig_value = fields[5].body
    _check_signature(signer.public_key(), sig_value, signed, hash_alg)
    _check_chain(signer, carried, trusted, check_time)


def _check_signature(key: object, sig: bytes, signed: bytes, alg: hashes.HashAlgorithm) -> None:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, signed, padding.PKCS1v15(), alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, signed, ec.ECDSA(alg))
        else:
            raise SigningError("unsupported signer key type")
    except InvalidSignature as exc:
        raise SigningError("signature is invalid (signed attributes do not verify)") from exc


def _check_chain(cert: x509.Certificate, carried: Sequence[x509.Certificate],
                 trusted: Sequence[x509.Certificate], check_time: bool) -> None:
    now = datetime.datetime.now(datetime.UTC)
    seen = 0
    while True:
        if check_time and not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise SigningError(f"certificate {cert.subject.rfc4514_string()} is not valid now "
                               f"({cert.not_valid_before_utc:%Y-%m-%d} to "
                               f"{cert.not_valid_after_utc:%Y-%m-%d})")
        if cert in trusted:
            return
        issuer = next((c for c in [*trusted, *carried] if c.subject == cert.issuer
                       and _issued_by(cert, c)), None)
        if issuer is None or seen > 16:
            raise SigningError(f"certificate {cert.subject.rfc4514_string()} does not chain to "
                               "a trusted certificate")
        cert, seen = issuer, seen + 1


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
