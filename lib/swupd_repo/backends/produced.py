"""Is the ``www/<V>`` a tool produced complete? Checked before ``latest`` may move.

A container's exit status says little: the real swupd-server scripts only log a pack member
they failed to stage and exit 0 with an empty pack. So every version a container writes goes
through :class:`~swupd_repo.check.consistency.Consistency` (the release gate's file checks:
manifests parse and agree with the MoM, each live entry's fullfile exists and holds what its
hash says, each zero pack holds every live entry), whatever ``SWUPD_REPO_CHECK`` says, plus
what the gate leaves out: every delta pack covers each entry that changed since its source
version, by ``staged/<H>`` or a ``delta/<F>-<T>-<H>``. Only version V's MoM is walked (its
bundles' manifests may be older). Verification stamps of earlier checks are trusted for
files unchanged since, and none are written: this is not the gate.
"""

from __future__ import annotations

from pathlib import Path

from ..check.consistency import Consistency
from ..check.report import CheckReport
from ..check.stamps import Stamps
from ..client.archive import ARCHIVE_ERRORS, open_tar, strip_dot
from ..errors import ManifestError
from ..progress import NullReporter
from ..storage import Storage
from ..swupd.manifest import Manifest, parse_manifest


class IncompleteOutput(Exception):
    """``args[0]``: the first problem found (one line), with the count of the others."""


def verify_produced(storage: Storage, version: int) -> CheckReport:
    """Check ``www/<version>``; raise :class:`IncompleteOutput` naming the first problem."""
    report = CheckReport(version, versions=[version])
    checker = ProducedCheck(storage, report)
    checker.version(version)
    if report.problems:
        first, more = report.problems[0], len(report.problems) - 1
        raise IncompleteOutput(first + (f" (and {more} more problems)" if more else ""))
    return report


class ProducedCheck(Consistency):
    """The gate's consistency checks, with delta packs held to what they must carry."""

    def __init__(self, storage: Storage, report: CheckReport) -> None:
        super().__init__(storage, report, NullReporter(), trusted_certs=None, check_time=False,
                         stamps=Stamps(storage, trust=True))

    def pack(self, pack: Path, manifest: Manifest, required: set[str], context: str) -> None:
        checked = pack in self.packs
        super().pack(pack, manifest, required, context)
        source = delta_pack_source(pack)
        if checked or not source:
            return
        old = self.old_manifest(pack, source)
        if old is not None:
            self.delta_coverage(pack, old, manifest)

    def old_manifest(self, pack: Path, source: int) -> Manifest | None:
        bundle = pack.name[len("pack-"):-len(f"-from-{source}.tar")]
        path = self.www / str(source) / f"Manifest.{bundle}"
        try:
            return parse_manifest(path.read_bytes(), str(path))
        except FileNotFoundError:
            self.problem(f"{pack}: its source manifest {path} is missing")
        except ManifestError as exc:
            self.problem(str(exc))
        return None

    def delta_coverage(self, pack: Path, old: Manifest, new: Manifest) -> None:
        """Every entry new since ``old``, or changed after it, is in the pack (the
        client otherwise has nothing to update that path from)."""
        staged, deltas = set(), set()
        try:
            with open(pack, "rb") as f, open_tar(f) as tar:
                for member in tar:
                    top, _, name = strip_dot(member.name).partition("/")
                    if top == "staged" and name:
                        staged.add(name)
                    elif top == "delta" and name:
                        deltas.add(name.rsplit("-", 1)[-1])
        except ARCHIVE_ERRORS:
            return  # Consistency.pack already said it is unreadable
        before = {e.path for e in old.entries if not e.deleted}
        for entry in new.entries:
            if entry.deleted or entry.type not in "FDL":
                continue
            if entry.path in before and entry.last_change <= old.version:
                continue
            if entry.hash not in staged and entry.hash not in deltas:
                self.problem(f"{pack} lacks staged/{entry.hash} ({entry.path}) and any "
                             f"delta to it")
                return


def delta_pack_source(pack: Path) -> int:
    """N of ``pack-<bundle>-from-N.tar``; 0 for a zero pack or another name."""
    stem = pack.name.removesuffix(".tar")
    _, sep, number = stem.rpartition("-from-")
    return int(number) if sep and number.isdigit() else 0
