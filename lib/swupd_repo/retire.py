"""Retiring old versions from ``www/`` (``swupd-repo prune --www-before V``).

What a device on a retired version X gets: it keeps updating. The client on X fetches
``X/Manifest.MoM.tar`` and its bundles' ``Manifest.<b>.tar`` to know what it runs (format3
§7.4 steps 3-4), then the new version's manifests, and downloads every entry whose
last_change is after X. Behind a released rebase version R >= V every live entry has a
last_change >= R (:mod:`.swupd.rebase`; later builds carry those or newer ones), so all it
downloads (fullfiles, packs from its bundle version if any) lives in ``www/<R or later>``. So
retiring X removes everything of ``www/X`` but its small manifest files (``Manifest.*`` in
every form: plain, ``.tar``, ``.signed``, ``.sig``) and the ``format`` and
``swupd-server-src-version`` notes: ``files/``, ``delta/``, the packs and the generator's
bookkeeping go. A retired version can no longer be installed from scratch (its zero pack is
gone); a new device installs latest.

The rebase must be released (devices told a version >= R): a version before it may still
name fullfiles of the versions to retire. So the retirement refuses unless a rebase R with
V <= R <= the released version exists; latest and the released version are then never
touched (both are >= R).

Removal is crash-safe like the tree prune: under the storage lock, each version's content is
renamed into one temporary directory (:data:`~.storage.TEMP_PREFIX`) per version, the
directories are synced, and only then removed. A killed run leaves versions with all, part
or none of their content and temporaries that the next run removes; a device on any of them
updates the same way, since none of it is fetched by devices on them any more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VersionError
from .progress import Reporter
from .prune import freed_bytes
from .storage import Storage, fsync_dir, remove_tree, temp_path
from .swupd.rebase import is_rebase

#: What a retired ``www/<X>`` keeps: its manifests in every form and the two notes.
KEPT = re.compile(r"Manifest\..+|format|swupd-server-src-version")


@dataclass
class RetirePlan:
    """Which versions lose which content, on the strength of which rebase, freeing how much."""

    before: int
    rebase: int
    content: dict[int, list[Path]] = field(default_factory=dict)  # version -> what goes
    freed_bytes: int = 0

    @property
    def versions(self) -> list[int]:
        return sorted(v for v, paths in self.content.items() if paths)


def is_kept(name: str) -> bool:
    """Whether a retired version keeps ``www/<X>/<name>``."""
    return KEPT.fullmatch(name) is not None


def plan(storage: Storage, before: int) -> RetirePlan:
    """What retiring every version before ``before`` removes; :class:`VersionError` (one
    line) unless a released rebase version at or after ``before`` allows it."""
    published = storage.published_versions()
    released = storage.released()
    # the first rebase at or after ``before`` decides: a later one allows nothing more
    rebase = next((v for v in published if v >= before and is_rebase(storage.www_dir, v)), 0)
    if rebase > released:
        raise VersionError(
            f"prune --www-before {before}: the rebase version {rebase} is not released "
            f"yet (devices are told {released}), and versions before it may still need "
            "older fullfiles",
            hint=f"release it first (swupd-repo release {rebase})")
    if not rebase:
        raise VersionError(
            f"prune --www-before {before}: no rebase version at or after {before} exists, so "
            "devices still fetch fullfiles from the versions before it",
            hint="publish a rebase version first (--rebase, SWUPD_REPO_REBASE = \"1\"), then "
            "prune --www-before that version")
    result = RetirePlan(before, rebase)
    for version in published:
        if version >= before:
            break
        directory = storage.www(version)
        # packs first: a version without its zero pack is one the check lays down from a
        # seed (:mod:`.check.retired`), whatever else a killed run left of it
        result.content[version] = sorted((p for p in directory.iterdir()
                                          if not is_kept(p.name)),
                                         key=lambda p: (not p.name.startswith("pack-"), p.name))
    result.freed_bytes = freed_bytes([p for paths in result.content.values() for p in paths])
    return result


def retire_locked(storage: Storage, retirement: RetirePlan, reporter: Reporter) -> None:
    """Remove the content of :func:`plan`'s versions (the caller holds the storage lock)."""
    aside = []
    for version in retirement.versions:
        reporter.step(f"retiring www/{version}")
        target = temp_path(storage.www_dir, f"retired-{version}")
        target.mkdir()
        aside.append(target)
        for path in retirement.content[version]:
            path.rename(target / path.name)
        fsync_dir(storage.www(version))
    fsync_dir(storage.www_dir)
    if not aside:
        return
    reporter.step("removing the retired content")
    for target in aside:
        remove_tree(target)
    reporter.info(f"retired the content of www/{', www/'.join(map(str, retirement.versions))}"
                  f" ({retirement.freed_bytes / 1e6:.1f} MB freed; rebase version "
                  f"{retirement.rebase})")


def retire(storage: Storage, before: int, *, dry_run: bool, reporter: Reporter,
           wait: bool = True, report: bool = True) -> RetirePlan:
    """Plan and (unless ``dry_run``) retire, under the lock, after cleaning leftovers.

    ``STORAGE/report.*`` shows each ``www/<V>``'s files and bytes: when a publish wrote it
    and ``report`` is on, it is written again after a retirement, as after a release."""
    from .pipeline import locked_run, refresh_report, remove_leftovers

    with locked_run(storage, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        result = plan(storage, before)
        if not dry_run:
            retire_locked(storage, result, run)
            if result.versions:
                refresh_report(storage, report, run)
    return result
