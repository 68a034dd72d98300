"""Repository consistency: every published file a device may fetch is what the manifests say.

For each published version up to the one checked: each MoM line's bundle manifest exists and
hashes to it; each non-deleted entry has its fullfile with exactly one member ``<H>`` whose data
and metadata hash to H; zero packs hold every entry and each pack member hashes to its name;
plain manifests equal their tars; signatures verify (given certificates); the markers agree
and point at a published version. Versions before a rebase version (:mod:`..swupd.rebase`)
get their manifests checked only: devices on them fetch nothing else of theirs, and
``prune --www-before`` may have retired the rest. Problems accumulate in the report, so one
run lists them all.

Fullfiles and packs verified clean by an earlier run and unchanged since are skipped
(:mod:`.stamps`): the gate runs on every publish and would otherwise re-read the whole history.

Bundles (issue 15): each MoM must list os-core, each bundle once and at a version not after its
own, exactly the bundles of the split the version was built from (while its tree is stored),
and no path live in two of its bundles with different hashes.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..bundles.assignment import CORE, assignment_path, read_assignment
from ..client.archive import ARCHIVE_ERRORS, member_hash, open_tar, strip_dot
from ..client.manifests import read_manifest_tar
from ..errors import ClientError, ManifestError, StorageError, SwupdRepoError
from ..progress import Reporter
from ..storage import Storage, read_version_file
from ..swupd.manifest import Manifest, manifest_hash, parse_manifest
from ..swupd.names import fullfile_relpath, pack_name
from .report import CheckReport
from .simulation import read_manifest
from .stamps import Stamps, signature


class Consistency:
    """The file-level checks of one run; results accumulate in ``report``."""

    def __init__(self, storage: Storage, report: CheckReport, reporter: Reporter,
                 trusted_certs: Sequence[Any] | None, check_time: bool,
                 stamps: Stamps | None = None) -> None:
        self.storage = storage
        self.www = storage.www_dir
        self.report = report
        self.rep = reporter
        self.certs = None
        self.trust_context = ""
        if trusted_certs:
            from ..swupd.signing import load_trusted

            self.certs = load_trusted(trusted_certs)
            # what a signature stamp was verified against: these certificates, and the day
            # when validity periods count (a certificate may expire between two runs)
            der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.certs)
            today = datetime.date.today().isoformat() if check_time else "any time"
            self.trust_context = f"{hashlib.sha256(der).hexdigest()[:16]}@{today}"
        self.check_time = check_time
        self.stamps = stamps
        self.signed_in_tar: set[tuple[str, int]] = set()
        self.bundles_tried: set[tuple[str, int]] = set()
        #: bundle manifests parsed for the versions checked last, by (name, version)
        self.loaded: dict[tuple[str, int], Manifest] = {}
        self.manifest_hashes: dict[tuple[str, int], str] = {}
        self.fullfiles: set[tuple[int, str]] = set()
        self.packs: set[Path] = set()

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def markers(self, version: int) -> None:
        """Both markers readable and naming published versions; the www one (what devices
        run) not after ``version`` nor after the image one (the last build, which is ahead
        of it while versions are staged, see :mod:`..release`)."""
        values = {}
        for marker in (self.storage.latest_www_marker, self.storage.latest_image_marker):
            try:
                values[marker] = read_version_file(marker)
            except StorageError as exc:
                self.problem(str(exc))
        www, image = (values.get(self.storage.latest_www_marker),
                      values.get(self.storage.latest_image_marker))
        if www is not None and image is not None and www > image:
            self.problem("markers disagree: " + ", ".join(f"{m} says {v}"
                                                          for m, v in values.items()))
        for marker, value in values.items():
            if value and not (self.storage.www(value) / "Manifest.MoM.tar").is_file():
                self.problem(f"{marker} names version {value}, but "
                             f"{self.storage.www(value)}/Manifest.MoM.tar is missing")
        if www is not None and www > version:
            self.problem(f"{self.storage.latest_www_marker} names version {www}, after the "
                         f"checked {version}")

    def version(self, v: int, content: bool = True) -> None:
        """``content=False``: a version before a rebase (see :mod:`...retire`), whose files
        and packs no device fetches any more: only its manifests are checked."""
        self.rep.step(f"checking www/{v}")
        mom = self.manifest("MoM", v, None)
        if mom is None:
            return
        for line in mom.entries:
            if line.type != "M" or line.deleted:
                self.problem(f"{self.www / str(v)}/Manifest.MoM: unexpected entry "
                             f"{line.flags} {line.path}")
                continue
            key = (line.path, line.last_change)
            if key not in self.bundles_tried:
                self.bundles_tried.add(key)
                self.bundle(line.path, line.last_change, line.hash, v, content)
            elif key in self.manifest_hashes:
                # already checked; the hash must still match this MoM's line
                self._mom_line(line.path, line.last_change, line.hash, v)
        self.bundle_rules(v, mom)
        if self.certs:
            self.signatures(v)

    def bundle_rules(self, v: int, mom: Manifest) -> None:
        """The MoM's bundles as a whole (see the module docstring)."""
        where = f"{self.www / str(v)}/Manifest.MoM"
        listed: dict[str, Manifest | None] = {}
        for line in mom.entries:
            if line.type != "M" or line.deleted:
                continue  # reported by version()
            if line.path in listed:
                self.problem(f"{where}: bundle {line.path} is listed twice")
                continue
            if line.last_change > v:
                self.problem(f"{where}: bundle {line.path} names version {line.last_change}, "
                             "after this one")
                listed[line.path] = None
                continue
            key = (line.path, line.last_change)
            if key not in self.loaded and key in self.manifest_hashes:
                found = self._reread(line.path, line.last_change)
                if found is not None:
                    self.loaded[key] = found
            listed[line.path] = self.loaded.get(key)
        if CORE not in listed:
            self.problem(f"{where} has no {CORE} line: no device can install or update")
        self._split(v, where, set(listed))
        self._conflicts(where, {n: m for n, m in listed.items() if m is not None})
        # the next version mostly names the same manifests: keep only these in memory
        self.loaded = {(n, m.version): m for n, m in listed.items() if m is not None}

    def _reread(self, name: str, bv: int) -> Manifest | None:
        """A manifest checked for an earlier version and since dropped from memory."""
        try:
            return read_manifest(self.storage, bv, name)
        except (OSError, ClientError, ManifestError):
            return None  # reported when it was checked

    def _split(self, v: int, where: str, names: set[str]) -> None:
        """The MoM lists exactly os-core and the bundles of the split V was built from, when
        V's tree is still stored (:mod:`...bundles.assignment`)."""
        tree = self.storage.os_core(v)
        if not tree.is_dir():
            return
        try:
            split = read_assignment(tree)
        except StorageError as exc:
            self.problem(str(exc))
            return
        expected = set(split.names())
        if names != expected:
            self.problem(f"{where} lists the bundles {', '.join(sorted(names))}, but "
                         f"{assignment_path(tree)} gives {', '.join(sorted(expected))}")

    def _conflicts(self, where: str, manifests: dict[str, Manifest]) -> None:
        """A path live in two bundles must be the same object in both: the client drops both
        entries of a conflicting pair ("CONFLICT IN MANIFESTS"), so neither gets installed."""
        if len(manifests) < 2:
            return
        seen: dict[str, tuple[str, str]] = {}
        for name, manifest in sorted(manifests.items()):
            for e in manifest.entries:
                if e.deleted:
                    continue
                other = seen.setdefault(e.path, (name, e.hash))
                if other[1] != e.hash:
                    self.problem(f"{where}: {e.path} is in bundles {other[0]} and {name} with "
                                 "different hashes (a client installs neither)")

    def _mom_line(self, name: str, bv: int, expected: str, v: int) -> None:
        actual = self.manifest_hashes[(name, bv)]
        if actual != expected:
            tar = self.www / str(bv) / f"Manifest.{name}.tar"
            self.problem(f"{self.www / str(v)}/Manifest.MoM: line for {name} has hash {expected},"
                         f" but {tar} hashes to {actual}")

    def manifest(self, name: str, v: int, expected: str | None,
                 mom_version: int | None = None) -> Manifest | None:
        """Read ``www/<v>/Manifest.<name>.tar``, compare with the plain file and the MoM hash."""
        tar = self.www / str(v) / f"Manifest.{name}.tar"
        where = f"{self.www / str(mom_version or v)}/Manifest.MoM"
        try:
            plain, sig = read_manifest_tar(tar.read_bytes(), name, str(tar))
            manifest = parse_manifest(plain, str(tar))
        except FileNotFoundError:
            self.problem(f"{tar} is missing" + (f" (listed in {where})" if expected else ""))
            return None
        except (ClientError, ManifestError) as exc:
            self.problem(str(exc))
            return None
        self.report.manifests += 1
        self.manifest_hashes[(name, v)] = manifest_hash(plain)
        if name != "MoM":
            self.loaded[(name, v)] = manifest
        loose = tar.with_suffix("")
        if loose.is_file() and loose.read_bytes() != plain:
            self.problem(f"{loose} differs from the Manifest.{name} inside {tar}")
        if manifest.version != v:
            self.problem(f"{tar}: says version {manifest.version}, expected {v}")
        if expected is not None:
            self._mom_line(name, v, expected, mom_version or v)
        if sig is not None:
            self.signed_in_tar.add((name, v))
            if self.certs:
                self._verify(plain, sig, f"{tar} (member Manifest.{name}.signed)")
        return manifest

    def bundle(self, name: str, bv: int, expected: str, mom_version: int,
               content: bool = True) -> Manifest | None:
        manifest = self.manifest(name, bv, expected, mom_version)
        if manifest is None or not content:
            return manifest
        live = [e for e in manifest.entries if not e.deleted]
        self.rep.step(f"checking fullfiles of {name} at {bv}", len(live))
        for entry in live:
            self.fullfile(entry.last_change, entry.hash, entry.path)
            self.rep.advance()
        context = f"{name}@{bv}:{self.manifest_hashes[(name, bv)]}"
        self.zero_pack(name, bv, manifest, context)
        for pack in sorted((self.www / str(bv)).glob(f"pack-{name}-from-*.tar")):
            if not pack.name.endswith("-from-0.tar"):
                self.pack(pack, manifest, required=set(), context=context)
        return manifest

    def _unchanged(self, path: Path, context: str) -> tuple[bool, Any]:
        if self.stamps is None:
            return False, None
        sig = signature(path)
        if self.stamps.unchanged(path, sig, context):
            self.report.unchanged += 1
            return True, sig
        return False, sig

    def _record(self, path: Path, sig: Any, context: str, problems_before: int) -> None:
        if self.stamps is not None and len(self.report.problems) == problems_before:
            self.stamps.record(path, sig, context)

    def fullfile(self, last_change: int, digest: str, path: str) -> None:
        key = (last_change, digest)
        if key in self.fullfiles:
            return
        self.fullfiles.add(key)
        tar_path = self.www / fullfile_relpath(last_change, digest)
        skip, sig = self._unchanged(tar_path, path)
        self.report.fullfiles += 1
        if skip:
            return
        before = len(self.report.problems)
        self._fullfile(tar_path, digest, path)
        self._record(tar_path, sig, path, before)

    def _fullfile(self, tar_path: Path, digest: str, path: str) -> None:
        names: list[str] = []
        actual = ""
        try:
            with open(tar_path, "rb") as f, open_tar(f) as tar:
                for member in tar:
                    names.append(strip_dot(member.name))
                    if names == [digest]:
                        actual = member_hash(tar, member, path)
        except FileNotFoundError:
            self.problem(f"{tar_path} is missing (fullfile of {path})")
            return
        except ARCHIVE_ERRORS as exc:
            self.problem(f"{tar_path} (for {path}) is unreadable: {exc}")
            return
        if names != [digest]:
            self.problem(f"{tar_path} (for {path}): expected exactly one member {digest}, "
                         f"found {names[:3]}")
            return
        if actual != digest:
            self.problem(f"{tar_path}: content for {path} hashes to {actual}, not {digest}")

    def zero_pack(self, name: str, bv: int, manifest: Manifest, context: str) -> None:
        pack = self.www / str(bv) / pack_name(name, 0)
        if not pack.is_file():
            self.problem(f"{pack} is missing (needed to install {name} {bv})")
            return
        self.pack(pack, manifest, required={e.hash for e in manifest.entries if not e.deleted},
                  context=context + ":complete")

    def pack(self, pack: Path, manifest: Manifest, required: set[str], context: str) -> None:
        """Every ``staged/<H>`` member hashes to H; every hash in ``required`` is there."""
        if pack in self.packs:
            return
        self.packs.add(pack)
        skip, sig = self._unchanged(pack, context)
        if skip:
            return
        before = len(self.report.problems)
        self._pack(pack, manifest, required)
        self._record(pack, sig, context, before)

    def _pack(self, pack: Path, manifest: Manifest, required: set[str]) -> None:
        paths = {e.hash: e.path for e in manifest.entries if not e.deleted}
        seen: set[str] = set()
        try:
            with open(pack, "rb") as f, open_tar(f) as tar:
                for member in tar:
                    top, _, digest = strip_dot(member.name).partition("/")
                    if top != "staged" or not digest:
                        continue
                    if digest not in paths:
                        self.problem(f"{pack}: member staged/{digest} is not in "
                                     f"Manifest@{manifest.version}")
                        continue
                    seen.add(digest)
                    self.report.pack_members += 1
                    actual = member_hash(tar, member, paths[digest])
                    if actual != digest:
                        self.problem(f"{pack}: staged/{digest} ({paths[digest]}) hashes to "
                                     f"{actual}")
        except ARCHIVE_ERRORS as exc:
            self.problem(f"{pack} is unreadable: {exc}")
            return
        for digest in sorted(required - seen):
            self.problem(f"{pack} lacks staged/{digest} ({paths[digest]})")

    def signatures(self, v: int) -> None:
        """With certificates: the MoM must be signed, and every ``X.signed`` (PEM, 2.53) and
        ``X.sig`` (DER, later clients) must verify X."""
        directory = self.www / str(v)
        if not (directory / "Manifest.MoM.signed").is_file() and \
                ("MoM", v) not in self.signed_in_tar:
            self.problem(f"{directory}/Manifest.MoM is not signed, but certificates were given")
        for signed in sorted([*directory.glob("*.signed"), *directory.glob("*.sig")]):
            data = signed.with_suffix("")
            if not data.is_file():
                self.problem(f"{signed} signs {data.name}, which is missing")
                continue
            # packs are large: a signature verified clean and unchanged since, over data
            # unchanged since, is not verified again (the stamp is the signature file's)
            context = f"signs {signature(data)} for {self.trust_context}"
            skip, sig = self._unchanged(signed, context)
            if skip:
                self.report.signatures += 1
                continue
            before = len(self.report.problems)
            self._verify(data.read_bytes(), signed.read_bytes(), str(signed))
            self._record(signed, sig, context, before)

    def _verify(self, data: bytes, sig: bytes, where: str) -> None:
        from ..swupd.signing import verify

        try:
            verify(data, sig, self.certs, check_time=self.check_time)
        except SwupdRepoError as exc:
            self.problem(f"{where}: bad signature: {exc}")
            return
        self.report.signatures += 1
