"""The release gate: prove a repository is consistent and that every update path works.

Two parts, both run before ``latest`` moves (``SWUPD_REPO_CHECK = "1"``):

* **Consistency** of every published version up to the one checked: each MoM line's bundle
  manifest exists and hashes to it; each non-deleted entry has its fullfile with exactly one
  member ``<H>`` whose data and metadata hash to H; zero packs hold every entry and each pack
  member hashes to its name; plain manifests equal their tars; signatures verify (given
  certificates); the markers agree and point at a published version.
* **Update simulation** over real HTTP (our own server on 127.0.0.1): a fresh install of the
  new version, and for each earlier version still published (or those asked for), an install of
  it updated to the new one. Each result must verify clean and equal ``image/<V>/os-core``
  object by object (except what the format leaves to the device: ``/etc``, state paths).

Every problem is collected, so one run lists them all; :class:`CheckError` carries the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client.archive import ARCHIVE_ERRORS, member_hash, open_tar, strip_dot
from .client.manifests import mom_hash, read_manifest_tar
from .errors import CheckError, ClientError, ManifestError, StorageError, SwupdRepoError
from .progress import NullReporter, Reporter
from .storage import Storage, read_version_file
from .swupd.manifest import Manifest, parse_manifest

#: Problems shown in the exception message; the report keeps all of them.
SHOWN = 40


@dataclass
class Simulation:
    from_version: int  # 0 = fresh install
    to_version: int
    summary: str


@dataclass
class CheckReport:
    version: int
    versions: list[int] = field(default_factory=list)
    manifests: int = 0
    fullfiles: int = 0
    pack_members: int = 0
    signatures: int = 0
    simulations: list[Simulation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        sims = ", ".join(f"{s.from_version or 'install'}->{s.to_version}"
                         for s in self.simulations)
        return (f"version {self.version}: {len(self.versions)} versions, {self.manifests} "
                f"manifests, {self.fullfiles} fullfiles, {self.pack_members} pack members, "
                f"{self.signatures} signatures checked; simulated {sims or 'nothing'}; "
                f"{len(self.problems)} problems")


def check_repository(storage: Storage, version: int | None = None, *,
                     from_versions: Sequence[int] | None = None,
                     reporter: Reporter | None = None,
                     trusted_certs: Sequence[Any] | None = None,
                     check_time: bool = True, simulate: bool = True) -> CheckReport:
    """Check ``storage`` at ``version`` (default: latest); raises CheckError listing problems."""
    rep = reporter or NullReporter()
    version = version if version is not None else storage.latest()
    report = CheckReport(version)
    if version <= 0:
        report.problems.append(f"{storage.www_dir}: nothing published yet")
        _raise(report)
    versions = [v for v in storage.published_versions() if v <= version]
    if version not in versions:
        report.problems.append(f"{storage.www(version)}/Manifest.MoM is missing")
        _raise(report)
    report.versions = versions
    consistency = _Consistency(storage, report, rep, trusted_certs, check_time)
    consistency.markers(version)
    for v in versions:
        consistency.version(v)
    if simulate and report.ok:
        earlier = [v for v in versions if v < version] if from_versions is None \
            else list(from_versions)
        _simulate(storage, version, earlier, report, rep, trusted_certs, check_time)
    if not report.ok:
        _raise(report)
    rep.info(f"check passed: {report.summary()}")
    return report


def _raise(report: CheckReport) -> None:
    shown = "\n  ".join(report.problems[:SHOWN])
    more = len(report.problems) - SHOWN
    tail = f"\n  ... and {more} more" if more > 0 else ""
    error = CheckError(f"repository check of version {report.version} found "
                       f"{len(report.problems)} problem(s):\n  {shown}{tail}",
                       hint="the version was not published; fix the repository or rebuild it")
    error.report = report  # type: ignore[attr-defined]
    raise error


class _Consistency:
    """The file-level checks; results accumulate in the report."""

    def __init__(self, storage: Storage, report: CheckReport, reporter: Reporter,
                 trusted_certs: Sequence[Any] | None, check_time: bool) -> None:
        self.storage = storage
        self.www = storage.www_dir
        self.report = report
        self.rep = reporter
        self.certs = trusted_certs
        self.check_time = check_time
        self.bundles: dict[tuple[str, int], Manifest | None] = {}
        self.fullfiles: set[tuple[int, str]] = set()
        self.packs: set[Path] = set()

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def markers(self, version: int) -> None:
        """Both markers readable, equal, and naming a published version not after ``version``."""
        values = {}
        for marker in (self.storage.latest_www_marker, self.storage.latest_image_marker):
            try:
                values[marker] = read_version_file(marker)
            except StorageError as exc:
                self.problem(str(exc))
        if len(set(values.values())) > 1:
            self.problem("markers disagree: " + ", ".join(f"{m} says {v}"
                                                          for m, v in values.items()))
        for marker, value in values.items():
            if value and not (self.storage.www(value) / "Manifest.MoM.tar").is_file():
                self.problem(f"{marker} names version {value}, but "
                             f"{self.storage.www(value)}/Manifest.MoM.tar is missing")
            if value > version:
                self.problem(f"{marker} names version {value}, after the checked {version}")

    def version(self, v: int) -> None:
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
            if key not in self.bundles:
                self.bundles[key] = self.bundle(line.path, line.last_change, line.hash, v)
            elif self.bundles[key] is not None:
                # already checked; the hash must still match this MoM's line
                self._mom_line(line.path, line.last_change, line.hash, v)
        if self.certs:
            self.signatures(v)

    def _mom_line(self, name: str, bv: int, expected: str, v: int) -> None:
        tar = self.www / str(bv) / f"Manifest.{name}.tar"
        plain, _ = read_manifest_tar(tar.read_bytes(), name, str(tar))
        if mom_hash(plain) != expected:
            self.problem(f"{self.www / str(v)}/Manifest.MoM: line for {name} has hash {expected},"
                         f" but {tar} hashes to {mom_hash(plain)}")

    def manifest(self, name: str, v: int, expected: str | None,
                 mom_version: int | None = None) -> Manifest | None:
        """Read ``www/<v>/Manifest.<name>.tar``, compare with the plain file and the MoM hash."""
        tar = self.www / str(v) / f"Manifest.{name}.tar"
        where = f"{self.www / str(mom_version or v)}/Manifest.MoM"
        try:
            plain, signature = read_manifest_tar(tar.read_bytes(), name, str(tar))
            manifest = parse_manifest(plain, str(tar))
        except FileNotFoundError:
            self.problem(f"{tar} is missing" + (f" (listed in {where})" if expected else ""))
            return None
        except (ClientError, ManifestError) as exc:
            self.problem(str(exc))
            return None
        self.report.manifests += 1
        loose = tar.with_suffix("")
        if loose.is_file() and loose.read_bytes() != plain:
            self.problem(f"{loose} differs from the Manifest.{name} inside {tar}")
        if manifest.version != v:
            self.problem(f"{tar}: says version {manifest.version}, expected {v}")
        if expected is not None and mom_hash(plain) != expected:
            self.problem(f"{where}: line for {name} has hash {expected}, but {tar} hashes to "
                         f"{mom_hash(plain)}")
        if self.certs and signature is not None:
            self._verify(plain, signature, f"{tar} (member Manifest.{name}.signed)")
        return manifest

    def bundle(self, name: str, bv: int, expected: str, mom_version: int) -> Manifest | None:
        manifest = self.manifest(name, bv, expected, mom_version)
        if manifest is None:
            return None
        live = [e for e in manifest.entries if not e.deleted]
        self.rep.step(f"checking fullfiles of {name} at {bv}", len(live))
        for entry in live:
            self.fullfile(entry.last_change, entry.hash, entry.path)
            self.rep.advance()
        self.zero_pack(name, bv, manifest)
        for pack in sorted((self.www / str(bv)).glob(f"pack-{name}-from-*.tar")):
            if not pack.name.endswith("-from-0.tar"):
                self.pack(pack, manifest, required=set())
        return manifest

    def fullfile(self, last_change: int, digest: str, path: str) -> None:
        key = (last_change, digest)
        if key in self.fullfiles:
            return
        self.fullfiles.add(key)
        tar_path = self.www / str(last_change) / "files" / f"{digest}.tar"
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
        self.report.fullfiles += 1
        if actual != digest:
            self.problem(f"{tar_path}: content for {path} hashes to {actual}, not {digest}")

    def zero_pack(self, name: str, bv: int, manifest: Manifest) -> None:
        pack = self.www / str(bv) / f"pack-{name}-from-0.tar"
        if not pack.is_file():
            self.problem(f"{pack} is missing (needed to install {name} {bv})")
            return
        self.pack(pack, manifest, required={e.hash for e in manifest.entries if not e.deleted})

    def pack(self, pack: Path, manifest: Manifest, required: set[str]) -> None:
        """Every ``staged/<H>`` member hashes to H; every hash in ``required`` is there."""
        if pack in self.packs:
            return
        self.packs.add(pack)
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
        if not (directory / "Manifest.MoM.signed").is_file() and not _has_member(
                directory / "Manifest.MoM.tar", "Manifest.MoM.signed"):
            self.problem(f"{directory}/Manifest.MoM is not signed, but certificates were given")
        for signed in sorted([*directory.glob("*.signed"), *directory.glob("*.sig")]):
            data = signed.with_suffix("")
            if not data.is_file():
                self.problem(f"{signed} signs {data.name}, which is missing")
                continue
            self._verify(data.read_bytes(), signed.read_bytes(), str(signed))

    def _verify(self, data: bytes, signature: bytes, where: str) -> None:
        from .swupd.signing import verify

        try:
            verify(data, signature, self.certs, check_time=self.check_time)
        except SwupdRepoError as exc:
            self.problem(f"{where}: bad signature: {exc}")
            return
        self.report.signatures += 1


def _has_member(tar_path: Path, name: str) -> bool:
    try:
        with open(tar_path, "rb") as f, open_tar(f) as tar:
            return any(strip_dot(m.name) == name for m in tar)
    except ARCHIVE_ERRORS:
        return False


def _simulate(storage: Storage, version: int, earlier: list[int], report: CheckReport,
              rep: Reporter, trusted_certs: Sequence[Any] | None, check_time: bool) -> None:
    """Install and update scratch roots over real HTTP; compare with the image tree."""
    from .client import compare_trees, install, update, verify
    from .client.compare import skip_for
    from .serve import serve_in_thread

    image = storage.os_core(version)
    if not image.is_dir():
        report.problems.append(f"{image} is missing: cannot compare the update result with it")
        return
    target = parse_manifest((storage.www(version) / "Manifest.MoM").read_bytes())
    lines = {e.path: e for e in target.entries}
    core = lines.get("os-core")
    if core is None:
        report.problems.append(f"{storage.www(version)}/Manifest.MoM has no os-core line")
        return
    entries = parse_manifest((storage.www(core.last_change) / "Manifest.os-core")
                             .read_bytes()).by_path()
    skip = skip_for(entries)
    options: dict[str, Any] = {"trusted_certs": trusted_certs, "check_time": check_time}
    # devices will see this version as latest once it is published: show them that now
    latest = {f"/{storage.latest_www_marker.relative_to(storage.www_dir)}": f"{version}\n".encode()}
    with serve_in_thread(storage.www_dir, overrides=latest) as url:
        for start in [0, *earlier]:
            scratch = storage.temp_path(storage.root, f"check-{start}-{version}")
            shutil.rmtree(scratch, ignore_errors=True)
            root, state = scratch / "root", scratch / "state"
            label = f"install of {version}" if not start else f"update {start} -> {version}"
            rep.step(f"simulating {label}")
            try:
                stats = install(url, root, start or version, state_dir=state, **options)
                if start:
                    stats = update(url, root, to=version, state_dir=state, **options)
                found = verify(url, root, version=version, **options)
                problems = [f"{label}: verify: {m}" for m in found.mismatches]
                problems += [f"{label}: {d}" for d in compare_trees(root, image, skip)]
                if stats.deltas_failed:
                    # a pristine root: every delta in the pack should have applied
                    problems.append(f"{label}: {stats.deltas_failed} delta(s) in "
                                    f"{', '.join(stats.packs)} failed (see warnings)")
            except SwupdRepoError as exc:
                problems = [f"{label}: {exc}"]
                stats = None
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            report.problems.extend(problems)
            if stats is not None:
                report.simulations.append(Simulation(start, version, stats.summary()))
                rep.info(f"{label}: {stats.summary()}; {len(problems)} problems")
