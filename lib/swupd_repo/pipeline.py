"""The job end to end (DESIGN.md steps 1-8), shared by the bbclass and the CLI.

``publish``: disk image -> ``image/<V>/os-core`` -> backend -> check -> markers.
``build_version``: the same from an ``image/<V>/os-core`` that is already there.

Everything runs under the storage lock, starts by removing what an earlier failed run left,
and on failure removes what this run added, so earlier versions and both ``latest`` markers
are exactly as they were.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from .backends import get_backend
from .bundles.assignment import assignment_path
from .bundles.tracking import store_split
from .dedup import previous_tree_path, share_with_previous
from .errors import ExtractError, SettingsError, StorageError, SwupdRepoError, VersionError
from .osrelease import read_version_id
from .progress import Reporter
from .runreporter import RunReporter
from .settings import Settings
from .storage import Storage
from .swupd import hashcache
from .treemeta import record_path
from .versions import next_version, validate_new_version


def storage_of(settings: Settings) -> Storage:
    if settings.storage_dir is None:
        raise SettingsError("no storage directory given",
                            hint="set SWUPD_REPO_STORAGE_DIR or pass --storage DIR")
    return Storage(Path(settings.storage_dir))


def version_to_publish(settings: Settings, storage: Storage) -> int:
    """OS_VERSION when set, else latest + step; validated against latest."""
    latest = storage.latest()
    version = settings.os_version or next_version(latest, settings.version_step)
    validate_new_version(version, latest, force=settings.force)
    return version


def build_version(settings: Settings, reporter: Reporter, version: int | None = None, *,
                  wait: bool = True) -> int:
    """Publish ``www/<V>`` from an existing ``image/<V>/os-core``; returns V.

    ``wait`` False: fail at once when another run holds the storage.
    """
    storage = storage_of(settings)
    with publishing_run(storage, settings, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        if version is not None:
            settings = settings.replace(os_version=version)
        version = version_to_publish(settings, storage)
        if not storage.os_core(version).is_dir():
            raise StorageError(
                f"{storage.os_core(version)} does not exist",
                hint="extract the rootfs first (swupd-repo extract) or use swupd-repo publish",
            )
        if settings.bundles:
            split = assignment_path(storage.os_core(version))
            run.warning("bundle definitions are resolved when a rootfs is stored (publish, "
                        f"extract); version {version} is built with "
                        + (f"the split stored in {split}" if split.exists() else
                           "os-core alone, as it was stored"))
        build_and_mark(storage, version, settings, run)
        _prune_after(storage, settings, run)
    return version


def publish(settings: Settings, reporter: Reporter, *, layout_text: str | None = None,
            wait: bool = True) -> int:
    """Extract the rootfs of ``settings.disk_image`` and publish it; returns the version.

    The layout comes from ``settings.disk_layout`` or, when given, ``layout_text`` (the
    ``DSK_IMAGE_LAYOUT`` variable's value, named so in errors). Layout and image are
    validated before anything is created in the storage (not even its lock file).
    """
    from .extract import extract_rootfs
    from .gpt import find_partition
    from .layout import load_layout, parse_layout

    storage = storage_of(settings)
    if settings.disk_image is None:
        raise SettingsError("no disk image given",
                            hint="set SWUPD_REPO_DISK_IMAGE or pass --dsk IMAGE.dsk")
    if layout_text is not None:
        layout = parse_layout(layout_text, "DSK_IMAGE_LAYOUT")
    elif settings.disk_layout is not None:
        layout = load_layout(Path(settings.disk_layout))
    else:
        raise SettingsError("no disk layout given",
                            hint="set SWUPD_REPO_DISK_LAYOUT or pass --layout JSON")
    part = layout.rootfs(settings.partition)
    extent = find_partition(Path(settings.disk_image), part, reporter)
    with publishing_run(storage, settings, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        version = version_to_publish(settings, storage)
        dest = storage.os_core(version)
        image_existed = storage.image(version).exists()
        try:
            # An existing tree is the published one (a forced rebuild of latest) or one a
            # killed run left: either way it is put back, with its record and side file of
            # hashes, if this run fails. The bundle split (image/<V>/os-core.bundles) is part
            # of the stored tree: a forced rebuild resolves the definitions again, a failed
            # one puts the old back.
            with storage.replacing(dest), storage.replacing(record_path(dest)), \
                    storage.replacing(hashcache.cache_path(dest)), \
                    storage.replacing(assignment_path(dest)):
                run.step(f"extracting partition {extent.number} ({part.name}) of "
                         f"{settings.disk_image}")
                extract_rootfs(Path(settings.disk_image), extent.offset, extent.size, dest,
                               run, max_file_size=settings.max_file_size,
                               share_with=previous_tree_path(storage, version))
                check_os_release(dest, version)
                store_split(dest, settings.bundles, run)
                share_with_previous(storage, version, run)
                build_and_mark(storage, version, settings, run)
        except BaseException:
            if not image_existed:
                shutil.rmtree(storage.image(version), ignore_errors=True)
            raise
        _prune_after(storage, settings, run)
    return version


@contextlib.contextmanager
def locked_run(storage: Storage, reporter: Reporter, *, wait: bool = True
               ) -> Iterator[RunReporter]:
    """The storage lock for one run, and the reporter the run passes down.

    A write the storage's filesystem refuses (full, over quota, read-only) anywhere in the
    run, in this process or a pool worker, ends as one :class:`StorageError` naming the
    storage and the step; the run's own cleanup has already put everything back.
    """
    with storage.lock(wait=wait, notify=reporter.info) as held:
        run = RunReporter(reporter, held)
        try:
            yield run
        except OSError as exc:
            error = storage.write_error(exc, run.current)
            if error is None:
                raise
            raise error from exc


@contextlib.contextmanager
def publishing_run(storage: Storage, settings: Settings, reporter: Reporter, *,
                   wait: bool = True) -> Iterator[RunReporter]:
    """:func:`locked_run` for a run that publishes a version (publish, build, revert; the
    BitBake task calls publish): when its body has ended well, ``STORAGE/report.*`` is
    written again (:func:`refresh_report`), under the same lock.

    Here and not in :func:`build_and_mark`: the callers' rollbacks (``Storage.replacing`` of
    the tree and of ``www/<V>``) wrap that, and an interrupt while the report is written
    must not put an old tree back under a published version. Past the body every rollback
    scope is closed and the version is published; a failure is only a warning.
    """
    with locked_run(storage, reporter, wait=wait) as run:
        yield run
        refresh_report(storage, settings.report, run)


def refresh_report(storage: Storage, report: bool, reporter: Reporter) -> None:
    """A publish, a release, a revert or a retirement changes what ``STORAGE/report.*`` shows
    (the versions, the released one, every device's download to it, a version's files):
    write it again when one is there (the BitBake task writes it, ``SWUPD_REPO_REPORT``; a
    user may have: ``swupd-repo report --html STORAGE/report.html``) and ``report`` is on.
    The lock is held; a failure is a warning (:func:`~.report.refresh_report_files`)."""
    from .report import has_report_files, refresh_report_files

    if report and has_report_files(storage):
        refresh_report_files(storage, reporter)


def check_os_release(root: Path, version: int) -> None:
    """Refuse a tree whose os-release does not say ``VERSION_ID=<version>`` (a stale image)."""
    found, where = read_version_id(root)
    if found is None:
        raise ExtractError(
            f"the image's rootfs has no VERSION_ID in usr/lib/os-release or etc/os-release "
            f"(looked in {root})",
            hint=f"build the image with OS_VERSION = \"{version}\" (inherit swupd-repo sets it) "
                 "so devices can tell which version they run",
        )
    if found != version:
        raise VersionError(
            f"the image says VERSION_ID={found} in {where}, but version {version} would be "
            "published (a stale image?)",
            hint=f"rebuild the image with OS_VERSION = \"{version}\", or set OS_VERSION / "
                 f"--version to {found} if that is the version you mean",
        )


def remove_leftovers(storage: Storage, reporter: Reporter) -> None:
    """What an interrupted run left (:meth:`Storage.clean_leftovers`); every locked run
    that writes starts with it."""
    for path in storage.clean_leftovers():
        reporter.info(f"removed {path} left by an interrupted run")


def _prune_after(storage: Storage, settings: Settings, reporter: Reporter) -> None:
    """``keep_trees`` > 0: remove the trees no future build reads (the lock is held)."""
    if settings.keep_trees > 0:
        from .prune import plan, prune_locked

        prune_locked(storage, plan(storage, keep=settings.keep_trees,
                                   deltapack_versions=settings.deltapack_versions), reporter)


def build_and_mark(storage: Storage, version: int, settings: Settings,
                   reporter: Reporter) -> None:
    """Backend, optional check, then the markers; an existing www/<V> only with force."""
    www = storage.www(version)
    if www.exists() and not settings.force:
        raise VersionError(f"{www} already exists",
                           hint="pass --force (SWUPD_REPO_FORCE = \"1\") to rebuild it")
    if settings.jobs > settings.workers:
        reporter.info(f"using {settings.workers} worker processes, not {settings.jobs}: "
                      "at most one per usable core and per 256 MiB of available memory")
    # A failure up to and including the markers removes www/<V>; a kill leaves the flag.
    with storage.publishing(version), storage.replacing(www):
        if not settings.rebase:  # every backend: the container cannot see it coming
            from .swupd.builder import previous_version
            from .swupd.rebase import refuse_a_retired_base

            refuse_a_retired_base(storage.www_dir, version, previous_version(storage, version))
        get_backend(settings.backend).build(storage, version, settings, reporter)
        if not (www / "Manifest.MoM").is_file():
            raise SwupdRepoError(f"backend {settings.backend} finished without {www}/Manifest.MoM")
        if settings.check:
            run_gate(storage, version, settings, reporter)
        reporter.step(f"moving latest to {version}")
        storage.write_markers(version, release=settings.release)
    # no "published version" line here: each front end (CLI command, bbclass) prints its own
    if not settings.release:
        reporter.info(f"devices stay on {storage.released()} until "
                      f"`swupd-repo release {version}`")


def run_gate(storage: Storage, version: int, settings: Settings, reporter: Reporter) -> None:
    """The release gate (``SWUPD_REPO_CHECK``): consistency and simulated updates to
    ``version``; also proves the signatures, against the certificate that made them."""
    from .check import check_repository

    trusted = [settings.signing_cert] if settings.signing_cert is not None else None
    check_repository(storage, version, reporter=reporter, trusted_certs=trusted)
