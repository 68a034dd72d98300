"""Release management: move devices to a staged version, or back to an earlier version's tree.

Two markers, two meanings (storage.py): ``image/latest.version`` is the last *built* version,
the one the next build starts from; ``www/version/format3/latest`` is the last *released*
version, the one devices update to. A normal publish moves both. A staged publish
(``SWUPD_REPO_RELEASE = "0"``, ``--stage``) moves only the first, so:

* the next build's version is still above every staged version (``Storage.latest`` is the
  larger marker), and it is built on the newest staged version. The history has to stay one
  chain: an entry's ``last_change`` is only meaningful against the version before it, and a
  device on a staged version (one a tester pointed at it) must reach the next version by a
  normal update. Delta packs come, as always, from the bundle's last change points walked
  through the MoMs' ``previous:`` links (so they may be made from staged versions), and the
  native generator adds one from the bundle's change point at the *released* version when
  staged versions pushed it out of that window (``packs.with_released_source``): devices
  are there, so their update stays a pack, not fullfiles;
* :func:`release` later moves ``latest`` to a staged version: only forward, under the lock,
  after the gate when ``SWUPD_REPO_CHECK`` is on.

:func:`revert` publishes a new version N (the next version, above everything built) whose
tree is version V's with os-release saying N, through the normal build path: devices on any
version move back to V's content by an ordinary update, since versions only ever go up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .bundles.assignment import assignment_path
from .errors import StorageError, VersionError
from .osrelease import stamp_version_id
from .pipeline import (
    build_and_mark,
    check_os_release,
    locked_run,
    publishing_run,
    refresh_report,
    remove_leftovers,
    run_gate,
    storage_of,
    version_to_publish,
)
from .progress import Reporter
from .settings import Settings
from .storage import Storage, remove_tree
from .treemeta import record_path


def check_releasable(storage: Storage, version: int) -> None:
    """Refuse a version devices cannot be moved to: not built, or not after the released one."""
    require_published(storage, version,
                      hint="stage it first: swupd-repo publish --stage (or build --stage)")
    released = storage.released()
    if version <= released:
        raise VersionError(f"version {version} is not after the released version {released}: "
                           "latest only moves forward",
                           hint="to go back to an earlier version's content, use "
                                f"swupd-repo revert --to {version}")


def require_published(storage: Storage, version: int, *, hint: str) -> None:
    """Refuse a version whose ``www/<V>`` is not complete (no MoM), with what to do."""
    if not (storage.www(version) / "Manifest.MoM").is_file():
        raise VersionError(f"version {version} is not published ({storage.www(version)}/"
                           "Manifest.MoM does not exist)", hint=hint)


def release(settings: Settings, version: int, reporter: Reporter, *, wait: bool = True) -> int:
    """Point devices at the staged ``version``; returns the version released before it."""
    storage = storage_of(settings)
    with locked_run(storage, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        check_releasable(storage, version)
        before = storage.released()
        if settings.check:
            run_gate(storage, version, settings, run)
        run.step(f"moving latest to {version}")
        storage.write_release_marker(version)
        refresh_report(storage, settings.report, run)
    reporter.info(f"released version {version} (devices were on {before})")
    return before


def revert(settings: Settings, to: int, reporter: Reporter, *, wait: bool = True) -> int:
    """Publish version V's tree again as the next version N; returns N."""
    storage = storage_of(settings)
    with publishing_run(storage, settings, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        require_published(storage, to, hint="pass --to one of the versions in STORAGE/www")
        source = storage.os_core(to)
        if not source.is_dir():
            raise StorageError(f"{source} does not exist: version {to}'s tree is gone",
                               hint="pass --to a version whose image/<V>/os-core is kept")
        refuse_a_lossy_copy(storage, to)
        version = version_to_publish(settings, storage)
        if storage.image(version).exists():
            raise StorageError(f"{storage.image(version)} already exists",
                               hint=f"remove it, or pass --version above {version}")
        # Made under a temporary name and renamed whole, like an extraction: a killed copy
        # is a leftover the next run removes, never a half tree at image/<N>.
        work = storage.temp_path(storage.image_dir, f"revert-{version}")
        try:
            run.step(f"copying the tree of version {to} as version {version}")
            work.mkdir(parents=True)
            copy_tree(source, work / "os-core")
            stamp_version_id(work / "os-core", version)
            check_os_release(work / "os-core", version)
            work.rename(storage.image(version))
            build_and_mark(storage, version, settings, run)
        except BaseException:
            remove_tree(work)
            remove_tree(storage.image(version))
            raise
    return version


def refuse_a_lossy_copy(storage: Storage, version: int) -> None:
    """Refuse to copy a tree stored without a metadata record as a user other than root.

    Such a tree keeps its metadata on disk (stored before records, as root or under pseudo),
    and only root (or that pseudo, where the process is root too) can copy it with its owners,
    devices and ``security.*``/``trusted.*`` xattrs: a user's ``cp -a`` would make every file
    its own and publish the revert with those owners, without a word. Its record, written where
    that metadata is visible, makes the copy faithful for anyone.
    """
    tree = storage.os_core(version)
    if record_path(tree).exists() or os.geteuid() == 0:
        return
    raise StorageError(
        f"version {version}'s tree {tree} has no metadata record, and a copy made by uid "
        f"{os.geteuid()} would lose its owners, devices and xattrs",
        hint=f"write its record first, as root (or under the pseudo that extracted it): "
             f"swupd-repo record --storage {storage.root} --version {version}")


def copy_tree(source: Path, dest: Path) -> None:
    """A faithful copy of a stored tree with its metadata record (:mod:`.treemeta`) and its
    bundle split (:mod:`.bundles.assignment`), when it has them.

    ``cp -a`` keeps owners, modes, xattrs, times, hard links and devices (shutil.copytree
    keeps neither owners nor hard links) for a tree stored without a record, when run as root
    (:func:`refuse_a_lossy_copy`), and the record
    keeps them for one stored with it: the record is copied first, as extraction installs it
    first. A copy, not hard links: the os-release file is rewritten.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    cp = shutil.which("cp") or "cp"
    pairs = [(side(source), side(dest)) for side in (record_path, assignment_path)
             if side(source).exists()]
    for src, dst in [*pairs, (source, dest)]:
        done = subprocess.run([cp, "-a", "--", str(src), str(dst)], capture_output=True,
                              text=True, check=False)
        if done.returncode == 0:
            continue
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "cp failed"
        raise StorageError(f"cannot copy {source} to {dest}: {why}",
                           hint="check the free space and permissions of the storage")
