"""The devices the update simulation plays: one per bundle set, and what each must end with.

Two sets cover what devices do: os-core alone (the base system; with what os-core includes)
and every bundle. A device of the second kind installs every bundle its starting version has,
updates, then adds the bundles that appeared since, so it ends with every bundle of the new
version; bundles dropped on the way must be gone. A repository with os-core alone has one set,
and the simulation is what it always was.

The expected tree for a set is the stored image ``image/<V>/os-core`` (the whole image, every
bundle's content) without the paths only other bundles list: the paths of os-core plus the
set's manifests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..client.bundleset import closure, live_paths
from ..client.tracking import CORE
from ..swupd.manifest import Entry, Manifest

#: Reads ``www/<v>/Manifest.<name>`` (the simulation's :func:`.simulation.read_manifest`).
Reader = Callable[[int, str], Manifest]


@dataclass(frozen=True)
class BundleSet:
    """A kind of device: ``everything`` = every bundle of each version, else os-core alone."""

    everything: bool
    label: str = ""

    def start(self, mom: Manifest) -> list[str]:
        """The bundles (besides os-core) a device of this kind installs at ``mom``'s version."""
        return sorted(e.path for e in mom.entries if e.path != CORE) if self.everything else []


def bundle_sets(moms: Mapping[int, Manifest]) -> list[BundleSet]:
    """os-core alone, plus every bundle when some version (``moms``) has more than os-core;
    labelled only then."""
    if all({e.path for e in mom.entries} <= {CORE} for mom in moms.values()):
        return [BundleSet(False)]
    return [BundleSet(False, CORE), BundleSet(True, "all bundles")]


@dataclass
class Expected:
    """What a device of one set must have at one version."""

    bundles: list[str]            # its installed set (os-core first)
    entries: dict[str, Entry]     # every bundle's entries at that version (for skip rules)
    not_expected: set[str]        # paths of the image only other bundles list


def expected(mom: Manifest, read: Reader, bundle_set: BundleSet) -> Expected:
    """The bundles and paths a device of ``bundle_set`` must end with at ``mom``'s version."""
    lines = {e.path: e for e in mom.entries}
    manifests = {name: read(line.last_change, name) for name, line in lines.items()}

    def includes_of(name: str) -> tuple[str, ...]:
        return manifests[name].includes if name in manifests else ()

    names = closure(bundle_set.start(mom), includes_of)
    names = [n for n in names if n in manifests]
    entries: dict[str, Entry] = {}
    for manifest in manifests.values():
        for entry in manifest.entries:
            if entry.path not in entries or entries[entry.path].deleted:
                entries[entry.path] = entry
    mine = live_paths(manifests[n] for n in names)
    others = live_paths(m for n, m in manifests.items() if n not in names)
    return Expected(names, entries, others - mine)
