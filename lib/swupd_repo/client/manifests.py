"""Fetching the MoM and bundle manifests, and proving each one is the one the server meant.

Checks the 2016 client skipped (format3 §7.6) are made here: the ``version:`` line must be the
version asked for, every bundle manifest must hash (without xattrs, stat 0100644 0 0) to its
``M`` line in the MoM, and with trusted certificates each manifest's detached signature
(``Manifest.<X>.signed``, inside the tar or beside it) must verify. So a valid MoM signature
vouches, through hashes, for every manifest entry and so for every file installed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import ClientError, ManifestError
from ..swupd.manifest import Entry, Manifest, manifest_hash, parse_manifest, valid_bundle_name
from .archive import ARCHIVE_ERRORS, open_tar, strip_dot
from .bundleset import closure
from .http import Fetcher

#: The most a plain manifest may hold once decompressed (Clear Linux's largest, Manifest.full
#: of tens of thousands of files, is a few MB): a small tar must not expand without bound.
MANIFEST_LIMIT = 256 << 20


def read_manifest_tar(data: bytes | IO[bytes], name: str,
                      source: str) -> tuple[bytes, bytes | None]:
    """(``Manifest.<name>``, its ``.signed`` member or None) from ``Manifest.<name>.tar``
    (its bytes, or a seekable file holding them)."""
    wanted = f"Manifest.{name}"
    found: dict[str, bytes] = {}
    try:
        with open_tar(io.BytesIO(data) if isinstance(data, bytes) else data) as tar:
            for member in tar:
                key = strip_dot(member.name)
                if member.isreg() and key in (wanted, wanted + ".signed"):
                    if member.size > MANIFEST_LIMIT:
                        raise ClientError(f"{source}: {key} claims {member.size} bytes, more "
                                          f"than a manifest may hold ({MANIFEST_LIMIT})")
                    f = tar.extractfile(member)
                    assert f is not None
                    found[key] = f.read()
    except ARCHIVE_ERRORS as exc:
        raise ClientError(f"{source} is not a readable tar archive: {exc}") from None
    if wanted not in found:
        raise ClientError(f"{source} does not contain {wanted}")
    return found[wanted], found.get(wanted + ".signed")


@dataclass
class ManifestSource:
    """Where manifests come from, and what to require of them."""

    fetcher: Fetcher
    trusted_certs: Sequence[Any] | None = None
    check_time: bool = True
    #: manifests already fetched and checked in this run, by (name, version, M hash): an
    #: update's old and new MoM share the lines of unchanged bundles
    _seen: dict[tuple[str, int, str | None], Manifest] = field(default_factory=dict,
                                                                init=False, repr=False)

    def __post_init__(self) -> None:
        if self.trusted_certs:
            from ..swupd.signing import load_trusted

            self.trusted_certs = load_trusted(self.trusted_certs)

    def fetch(self, name: str, version: int, expected_hash: str | None = None) -> Manifest:
        """``<version>/Manifest.<name>.tar``, checked; ``expected_hash`` is the MoM's M hash."""
        key = (name, version, expected_hash)
        if key not in self._seen:
            self._seen[key] = self._fetch(name, version, expected_hash)
        return self._seen[key]

    def _fetch(self, name: str, version: int, expected_hash: str | None) -> Manifest:
        path = f"{version}/Manifest.{name}.tar"
        url = self.fetcher.url(path)
        with self.fetcher.fetch_temporary(path) as tar:
            plain, signature = read_manifest_tar(tar, name, url)
        if expected_hash is not None:
            actual = manifest_hash(plain)
            if actual != expected_hash:
                raise ClientError(
                    f"{url}: Manifest.{name} hashes to {actual}, but the MoM says "
                    f"{expected_hash}; the repository is inconsistent or was tampered with")
        if self.trusted_certs:
            self._verify_signature(plain, signature, f"{version}/Manifest.{name}")
        try:
            manifest = parse_manifest(plain, f"{url} (Manifest.{name})")
        except ManifestError as exc:
            raise ClientError(str(exc)) from None
        if manifest.version != version:
            raise ClientError(f"{url}: Manifest.{name} says version {manifest.version}, "
                              f"expected {version}")
        return manifest

    def _verify_signature(self, data: bytes, signature: bytes | None, path: str) -> None:
        from ..errors import SigningError
        from ..swupd.signing import verify

        if signature is None:
            signature = self.fetcher.get_optional(path + ".signed")
        if signature is None:
            raise ClientError(f"{self.fetcher.url(path)} is not signed (no {path}.signed), "
                              "but a certificate was given")
        try:
            verify(data, signature, self.trusted_certs, check_time=self.check_time)
        except SigningError as exc:
            raise ClientError(f"{self.fetcher.url(path)}: bad signature: {exc}") from None

    def mom(self, version: int) -> Manifest:
        mom = self.fetch("MoM", version)
        for entry in mom.entries:
            if entry.type != "M" or entry.deleted:
                raise ClientError(f"{self.fetcher.url(f'{version}/Manifest.MoM.tar')}: "
                                  f"unexpected entry {entry.flags} {entry.path} in a MoM")
            if not valid_bundle_name(entry.path):
                raise ClientError(f"{self.fetcher.url(f'{version}/Manifest.MoM.tar')}: "
                                  f"{entry.path!r} cannot be a bundle name")
        return mom

    def closure(self, mom: Manifest, names: Sequence[str]) -> tuple[dict[str, Manifest],
                                                                      list[str]]:
        """The manifests of ``names``, os-core and every bundle they include, recursively
        (:func:`.bundleset.closure`), and the names among them the MoM does not list."""
        lines = bundle_lines(mom)
        found: dict[str, Manifest] = {}
        missing: list[str] = []

        def includes_of(name: str) -> Sequence[str]:
            if name not in lines:
                missing.append(name)
                return ()
            line = lines[name]
            found[name] = self.fetch(name, line.last_change, line.hash)
            return found[name].includes

        closure(names, includes_of)
        return found, missing


def bundle_lines(mom: Manifest) -> dict[str, Entry]:
    return {e.path: e for e in mom.entries if e.type == "M"}
