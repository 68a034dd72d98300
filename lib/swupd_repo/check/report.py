"""What a check found: counts, simulated update paths and every problem, plus the error that
carries it when the gate refuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import CheckError

#: Problems shown in the exception message; the report keeps all of them.
SHOWN = 40

#: Why the check ran, for the hint of a failure: inside ``publish``/``build`` (the version is
#: then not published) or on its own (``swupd-repo check``: nothing was changed).
Context = Literal["publish", "standalone"]

_HINTS: dict[str, str] = {
    "publish": "the version was not published; fix the repository or rebuild it",
    "standalone": "nothing was changed; fix the repository or rebuild the named version, "
                  "then run the check again",
}


@dataclass
class Simulation:
    from_version: int  # 0 = fresh install
    to_version: int
    summary: str
    #: the device's bundle set ("os-core", "all bundles"); empty when the repository has only
    #: os-core, so there is one set
    bundles: str = ""

    def label(self) -> str:
        path = f"{self.from_version or 'install'}->{self.to_version}"
        return f"{path} [{self.bundles}]" if self.bundles else path


@dataclass
class CheckReport:
    version: int
    versions: list[int] = field(default_factory=list)
    manifests: int = 0
    fullfiles: int = 0
    pack_members: int = 0
    signatures: int = 0
    #: fullfiles and packs skipped because their verification stamp still matches
    unchanged: int = 0
    simulations: list[Simulation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        sims = ", ".join(s.label() for s in self.simulations)
        return (f"version {self.version}: {len(self.versions)} versions, {self.manifests} "
                f"manifests, {self.fullfiles} fullfiles, {self.pack_members} pack members, "
                f"{self.signatures} signatures checked ({self.unchanged} files unchanged since "
                f"their last check); simulated {sims or 'nothing'}; "
                f"{len(self.problems)} problems")


class CheckFailed(CheckError):
    """The check found problems; :attr:`report` lists all of them (the message the first
    :data:`SHOWN`)."""

    def __init__(self, report: CheckReport, context: Context = "publish") -> None:
        shown = "\n  ".join(report.problems[:SHOWN])
        more = len(report.problems) - SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"repository check of version {report.version} found "
                         f"{len(report.problems)} problem(s):\n  {shown}{tail}",
                         hint=_HINTS[context])
        self.report = report
