"""``install``, ``update`` and ``verify`` of a target root against a repository URL.

The data path is the format-3 client's (format3 §7): ``latest``, MoM, subscribed bundle
manifests, consolidation, packs, deltas, fullfiles, staging, renames, deletions. Everything
is downloaded and hash-checked before the target is touched, so a bad repository fails the
run with the target unchanged; and the target is found by its own os-release, never by the
host's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClientError
from ..osrelease import read_version_id
from ..progress import NullReporter, Reporter
from ..swupd.manifest import Entry, Manifest, deleted_entry
from ..versions import is_update_source
from .apply import apply_entries
from .bundleset import dropped_deletions, live_paths
from .consolidate import (
    consolidate,
    fullfile_bounds,
    install_list,
    update_list,
    verify_list,
)
from .http import DownloadLimits, Fetcher
from .manifests import ManifestSource, bundle_lines
from .report import ClientStats, VerifyReport
from .staging import Staging
from .state import DEFAULT_RELATIVE, StateDir
from .targetpath import target_path
from .tracking import CORE, installed_bundles, tracking_path
from .verify import verify_entries

LATEST = "version/format3/latest"
#: ``latest`` holds a number and a newline; anything much longer is not one.
LATEST_LIMIT = 4096


@dataclass
class Session:
    """One run's connection to a repository: fetcher, manifest checks, progress."""

    url: str
    trusted_certs: Sequence[Any] | None = None
    check_time: bool = True
    reporter: Reporter = field(default_factory=NullReporter)
    retries: int = 3
    limits: DownloadLimits | None = None

    def __post_init__(self) -> None:
        self.fetcher = Fetcher(self.url, retries=self.retries,
                               limits=self.limits or DownloadLimits())
        self.manifests = ManifestSource(self.fetcher, self.trusted_certs, self.check_time)

    def latest(self) -> int:
        """``version/format3/latest``: the version devices are told to run."""
        text = self.fetcher.get(LATEST, limit=LATEST_LIMIT).decode("ascii", "replace")
        match = re.fullmatch(r"\s*([0-9]+)\s*", text)
        if not match or int(match.group(1)) <= 0:
            raise ClientError(f"{self.fetcher.url(LATEST)} does not hold a version: "
                              f"{text[:40]!r}")
        return int(match.group(1))

    def bundle_set(self, mom: Manifest, names: Sequence[str]) -> tuple[dict[str, Manifest],
                                                                         list[str]]:
        """The manifests of ``names`` with os-core and their includes (those ``mom`` lists),
        and the names it does not list; a MoM without os-core is refused."""
        found, missing = self.manifests.closure(mom, names)
        if CORE not in found:
            raise ClientError(f"{self.fetcher.url(f'{mom.version}/Manifest.MoM.tar')} lists "
                              f"no {CORE}, which every bundle needs")
        return found, missing

    def mom_url(self, version: int) -> str:
        return self.fetcher.url(f"{version}/Manifest.MoM.tar")

    def finish(self, stats: ClientStats) -> ClientStats:
        stats.requests = self.fetcher.requests
        stats.bytes_received = self.fetcher.bytes_received
        return stats


def current_version(root: Path) -> int:
    """The version the target runs, from its os-release (usr/lib, then etc), as swupd reads it."""
    version, where = read_version_id(root)
    if version is None or version <= 0:
        raise ClientError(
            f"cannot tell which version {root} runs: no VERSION_ID in "
            f"{where or root / 'usr/lib/os-release'}",
            hint="install a version first (swupd-repo client install --version V)")
    return version


def install(url: str, root: Path, version: int, *, state_dir: Path | None = None,
            packs: bool = True, bundles: Sequence[str] | None = None,
            trusted_certs: Sequence[Any] | None = None, check_time: bool = True,
            reporter: Reporter | None = None, limits: DownloadLimits | None = None,
            force: bool = False) -> ClientStats:
    """Lay down ``version`` into ``root`` from zero packs (like ``verify --install``).

    ``root`` must be missing or empty (the state directory aside): an install lays down a
    whole tree and would otherwise mix it with whatever is there; ``force`` installs anyway.
    """
    if not force:
        refuse_non_empty(root, state_dir)
    session = Session(url, trusted_certs, check_time, reporter or NullReporter(),
                      limits=limits)
    rep = session.reporter
    session.latest()  # must answer, as in the real client
    mom = session.manifests.mom(version)
    manifests, missing = session.bundle_set(mom, [*installed_bundles(root), *(bundles or ())])
    if missing:
        raise ClientError(f"cannot install {', '.join(missing)}: version {version} has no such "
                          f"bundle ({session.mom_url(version)} lists "
                          f"{', '.join(bundle_lines(mom))})")
    merged = consolidate(manifests.values())
    stats = ClientStats(from_version=0, to_version=version, conflicts=merged.conflicts,
                        added=[n for n in manifests if n != CORE])
    root.mkdir(parents=True, exist_ok=True)
    staging = Staging(StateDir.for_root(root, state_dir), session.fetcher, stats, rep)
    staging.size_bounds = fullfile_bounds(manifests.values())
    if packs:
        lines = bundle_lines(mom)
        for name in manifests:
            staging.stage_pack(name, 0, lines[name].last_change, required=True)
    entries = install_list(merged.entries)
    stage_all(staging, entries, rep)
    rep.step(f"installing {len(entries)} objects of version {version} into {root}",
             len(entries))
    apply_staged(staging, root, entries, version, rep)
    rep.info(f"installed version {version} into {root}")
    return session.finish(stats)


def update(url: str, root: Path, *, to: int | None = None, state_dir: Path | None = None,
           packs: bool = True, trusted_certs: Sequence[Any] | None = None,
           check_time: bool = True, reporter: Reporter | None = None,
           limits: DownloadLimits | None = None) -> ClientStats:
    """Update ``root`` from the version its os-release names to ``to`` (default: latest)."""
    session = Session(url, trusted_certs, check_time, reporter or NullReporter(),
                      limits=limits)
    rep = session.reporter
    latest = session.latest()
    target = to if to is not None else latest
    current = current_version(root)
    if not is_update_source(current):
        raise ClientError(f"{root} runs version {current}, a devel/reserved build (ending in "
                          "8 or 9) that swupd never updates from")
    stats = ClientStats(from_version=current, to_version=target)
    if target <= current:
        rep.info(f"{root} runs version {current}; nothing newer than {target} to update to")
        stats.to_version = current
        return session.finish(stats)
    names = installed_bundles(root)
    old_mom = session.manifests.mom(current)
    new_mom = session.manifests.mom(target)
    old, _ = session.bundle_set(old_mom, names)
    new, gone = session.bundle_set(new_mom, names)
    old_merged, new_merged = consolidate(old.values()), consolidate(new.values())
    stats.conflicts = new_merged.conflicts
    # bundles the new MoM no longer lists go (what only they had is deleted, their tracking
    # files with it); bundles a new includes: pulls in come whole, like a bundle-add
    dropped = [n for n in old if n not in new]
    stats.removed = dropped + [n for n in gone if n not in old]
    stats.added = [n for n in new if n not in old]
    for name in stats.removed:
        rep.warning(f"bundle {name} is not in version {target} any more: removing what only "
                    "it had")
    staging = Staging(StateDir.for_root(root, state_dir), session.fetcher, stats, rep)
    staging.size_bounds = fullfile_bounds(new.values())
    if packs:
        old_lines, new_lines = bundle_lines(old_mom), bundle_lines(new_mom)
        for name in new:
            was = old_lines[name].last_change if name in old else 0
            now = new_lines[name].last_change
            if now != was:
                staging.stage_pack(name, was, now, required=False)
    entries = update_list(new_merged.entries, current,
                          live_paths(new[n] for n in stats.added))
    listed = {e.path for e in entries} | live_paths(new.values())
    for entry in [*dropped_deletions((old[n] for n in dropped), new.values(), target),
                  *(deleted_entry(tracking_path(n), target) for n in stats.removed)]:
        if entry.path not in listed:
            listed.add(entry.path)
            entries.append(entry)
    entries.sort(key=lambda e: e.path)
    _apply_deltas(staging, root, entries, old_merged.entries)
    stage_all(staging, [e for e in entries if not e.deleted], rep)
    rep.step(f"updating {root} from {current} to {target}", len(entries))
    apply_staged(staging, root, entries, target, rep)
    # the counters are final only now: report them once, complete (the CLI prints the summary)
    session.finish(stats)
    rep.info(f"updated {root} from {current} to {target}")
    return stats


def verify(url: str, root: Path, *, version: int | None = None,
           trusted_certs: Sequence[Any] | None = None, check_time: bool = True,
           reporter: Reporter | None = None,
           limits: DownloadLimits | None = None) -> VerifyReport:
    """Hash every file of the target's installed bundles at its version (not config, state or
    boot) against the repo."""
    session = Session(url, trusted_certs, check_time, reporter or NullReporter(),
                      limits=limits)
    session.latest()
    version = version if version is not None else current_version(root)
    mom = session.manifests.mom(version)
    manifests, missing = session.bundle_set(mom, installed_bundles(root))
    merged = consolidate(manifests.values())
    deleted = [e for e in merged.entries.values() if e.deleted]
    report = verify_entries(root, version, verify_list(merged.entries), deleted)
    report.bundles, report.unknown_bundles = list(manifests), missing
    return report


def refuse_non_empty(root: Path, state_dir: Path | None) -> None:
    """ClientError unless ``root`` is missing, empty, or holds only the client's state
    directory (and its parents), as an earlier failed install leaves it."""
    if root.exists() and not root.is_dir():
        raise ClientError(f"cannot install into {root}: it is not a directory")
    if not root.exists():
        return
    state = (tuple(DEFAULT_RELATIVE.split("/")) if state_dir is None
             else StateDir(Path(state_dir)).inside(root))
    found = _besides_state(root, state or ())
    if found:
        shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        raise ClientError(f"cannot install into {root}: it is not empty ({shown})",
                          hint="install into a new or empty directory, use 'update' for an "
                          "installed root, or pass --force to lay the version over what is "
                          "there")


def _besides_state(directory: Path, state: tuple[str, ...], prefix: str = "") -> list[str]:
    """What ``directory`` holds other than the path to the state directory ``state``."""
    found = []
    for name in sorted(os.listdir(directory)):
        here = directory / name
        if state and name == state[0] and here.is_dir() and not here.is_symlink():
            if len(state) > 1:
                found += _besides_state(here, state[1:], f"{prefix}{name}/")
            continue
        found.append(prefix + name)
    return found


def apply_staged(staging: Staging, root: Path, entries: list[Entry], version: int,
           rep: Reporter) -> None:
    """Put the staged entries in place, then record ``version`` in the state directory,
    found again in case the entries moved it (an image that makes ``/var/lib`` a link)."""
    state = staging.state
    inside = state.inside(root)
    if inside == ():
        raise ClientError(f"the state directory {state.path} is the target root itself",
                          hint="pass a --state-dir outside the root, or leave it unset")
    installed, deleted = apply_entries(root, entries, staging.ensure, rep.advance, state=inside,
                                       warn=rep.warning)
    staging.stats.installed += installed
    staging.stats.deleted += deleted
    state.reresolve().write_version(version)


def _apply_deltas(staging: Staging, root: Path, entries: list[Entry],
                  old: dict[str, Entry]) -> None:
    """Try the packs' deltas for changed regular files whose old version was a regular file."""
    for entry in entries:
        before = old.get(entry.path)
        if (entry.type == "F" and not entry.deleted and before is not None
                and before.type == "F" and not before.deleted and before.hash != entry.hash):
            staging.try_delta(entry, before, target_path(root, entry.path))


def stage_all(staging: Staging, entries: list[Entry], rep: Reporter) -> None:
    """Download and hash-check everything before the target is touched."""
    rep.step(f"staging {len(entries)} objects", len(entries))
    for entry in entries:
        staging.ensure(entry)
        rep.advance()
