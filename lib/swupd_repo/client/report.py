"""What a client run did, so callers (tests, ``check``, the CLI) can assert and print it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientStats:
    """Counters of one install or update."""

    from_version: int = 0
    to_version: int = 0
    installed: int = 0        # objects placed (files, links, directories)
    deleted: int = 0          # deleted entries removed from the target
    from_pack: int = 0        # staged objects taken from a pack (hash-checked)
    from_fullfile: int = 0    # fullfiles downloaded (hash-checked)
    deltas_applied: int = 0   # deltas whose result had the expected hash
    deltas_failed: int = 0    # deltas that failed or gave a wrong hash (fell back)
    packs: list[str] = field(default_factory=list)   # packs downloaded
    added: list[str] = field(default_factory=list)   # bundles installed (not os-core)
    removed: list[str] = field(default_factory=list)  # bundles removed
    conflicts: list[str] = field(default_factory=list)
    requests: int = 0
    bytes_received: int = 0

    def counts(self) -> str:
        """The counters alone, for callers that name the versions themselves."""
        return (f"{self.installed} installed, {self.deleted} deleted; {self.from_pack} from "
                f"packs, {self.deltas_applied} deltas ({self.deltas_failed} fell back), "
                f"{self.from_fullfile} fullfiles; {self.requests} requests, "
                f"{self.bytes_received} bytes")

    def summary(self) -> str:
        return f"{self.from_version} -> {self.to_version}: {self.counts()}"


@dataclass(frozen=True)
class Mismatch:
    """One verify finding: ``actual`` is None when the path is missing."""

    path: str
    expected: str
    actual: str | None

    def __str__(self) -> str:
        what = "missing" if self.actual is None else f"hash {self.actual}"
        return f"{self.path}: {what}, expected {self.expected}"


@dataclass
class VerifyReport:
    version: int
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # deleted entries still on disk
    bundles: list[str] = field(default_factory=list)  # the bundles verified
    #: tracked bundles the version's MoM does not list (their files were not verified)
    unknown_bundles: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches
