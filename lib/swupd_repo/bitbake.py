"""The glue between BitBake and the library: the only module that imports ``bb``.

``swupd-repo.bbclass`` calls four functions here: :func:`next_os_version` (OS_VERSION's
default), :func:`setup_recipe` (anonymous python), :func:`write_os_release` (the rootfs
post-process command) and :func:`publish_image` (do_swupd_repo). They read the datastore,
build one :class:`~swupd_repo.settings.Settings`, call :mod:`swupd_repo.pipeline`, forward its
progress to BitBake's log and turn our error type into ``bb.fatal`` with its message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bb
import bb.build
import bb.event
import bb.parse
import bb.utils

from .bundles.definitions import BundleDef, from_bitbake
from .errors import LayoutError, SettingsError, StorageError, SwupdRepoError
from .osrelease import stamp_version_id
from .settings import Settings, load_settings
from .versions import next_version

#: Settings field -> BitBake variable: ``SWUPD_REPO_<KEY>``, except meta-swupd's OS_VERSION.
FIELD_VARIABLES: dict[str, str] = {
    f.name: "OS_VERSION" if f.name == "os_version" else f"SWUPD_REPO_{f.name.upper()}"
    for f in dataclasses.fields(Settings)}

Datastore = Any  # bb.data_smart.DataSmart; kept loose so the module documents, not enforces


class BitBakeReporter:
    """Progress into the task log (``bb.note``/``bb.warn``) and BitBake's progress bar.

    Steps and messages go to the log; a step with a known total also fires
    ``bb.build.TaskProgress`` events (0-100), which knotty shows as the task's progress bar.
    """

    def __init__(self, d: Datastore) -> None:
        self._d = d
        self._total: int | None = None
        self._done = 0
        self._percent = -1

    def step(self, name: str, total: int | None = None) -> None:
        self._total, self._done, self._percent = total, 0, -1
        bb.note(f"{name}{f' ({total})' if total else ''}")
        if total:
            self._progress(0)

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        if self._total:
            self._progress(min(100, self._done * 100 // self._total))

    def info(self, message: str) -> None:
        bb.note(message)

    def warning(self, message: str) -> None:
        bb.warn(message)

    def _progress(self, percent: int) -> None:
        if percent != self._percent:
            self._percent = percent
            bb.event.fire(bb.build.TaskProgress(percent), self._d)


def fatal_on_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors end the task with ``bb.fatal(message)``; anything else keeps its traceback."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SwupdRepoError as exc:
            bb.fatal(str(exc))

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def settings_from_datastore(d: Datastore) -> Settings:
    """One validated Settings from the SWUPD_REPO_* variables (empty = the YAML default).

    The disk layout is not taken from here: :func:`find_layout` resolves it.
    """
    fields = [field for field in FIELD_VARIABLES if field not in ("disk_layout", "bundles")]
    overrides = _variables(d, fields)
    overrides["bundles"] = bundles_from_datastore(d) or None
    if not overrides["docker_host"]:
        overrides["docker_host"] = docker_host_from_environment(d) or None
    return _load(overrides)


#: The varflag tables that give each bundle of SWUPD_REPO_BUNDLES its content.
BUNDLE_FLAG_VARIABLES = ("SWUPD_REPO_BUNDLE_PACKAGES", "SWUPD_REPO_BUNDLE_GLOBS")


def bundles_from_datastore(d: Datastore) -> tuple[BundleDef, ...]:
    """``SWUPD_REPO_BUNDLES`` with ``SWUPD_REPO_BUNDLE_PACKAGES[name]`` and
    ``SWUPD_REPO_BUNDLE_GLOBS[name]``, validated (errors name the variable and flag)."""
    names = set((d.getVar("SWUPD_REPO_BUNDLES") or "").split())
    # listed names are read as they are (a bundle may be called "doc"); other flags are
    # typos of a bundle's name unless BitBake's own
    packages, globs = ({name: d.getVarFlag(variable, name) or ""
                        for name in names | set(d.getVarFlags(variable) or {})
                        if name in names or not (name.startswith("_")
                                                 or name in _NOT_BUNDLE_FLAGS)}
                       for variable in BUNDLE_FLAG_VARIABLES)
    return from_bitbake(d.getVar("SWUPD_REPO_BUNDLES"), packages, globs)


#: Flags BitBake itself may set on any variable; never a bundle's name.
_NOT_BUNDLE_FLAGS = {"doc", "vardeps", "vardepsexclude", "vardepvalue", "vardepvalueexclude",
                     "export", "unexport", "defaultval", "file", "lineno", "filename"}


def bundle_vardeps(d: Datastore) -> str:
    """The varflags of every bundle, for do_swupd_repo[vardeps]: BitBake counts a variable's
    flags in a task's signature only when BB_SIGNATURE_EXCLUDE_FLAGS is set (OE-core sets
    it; other configurations may not), so each flag is named explicitly."""
    return " ".join(f"{variable}[{name}]" for name in (d.getVar("SWUPD_REPO_BUNDLES") or "")
                    .split() for variable in BUNDLE_FLAG_VARIABLES)


def _variables(d: Datastore, fields: list[str]) -> dict[str, Any]:
    """The variables of ``fields``; empty ones are None (the YAML default then holds)."""
    return {field: d.getVar(FIELD_VARIABLES[field]) or None for field in fields}


def _load(overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(overrides=overrides, overrides_source=_SOURCE)
    except SettingsError as exc:
        # Name the BitBake variable, not the YAML key the library knows it by.
        message = exc.message
        for field, variable in FIELD_VARIABLES.items():
            message = message.replace(f"{field} in {_SOURCE}", variable)
        raise SettingsError(message, hint=exc.hint) from None


_SOURCE = "the BitBake variables"


def docker_host_from_environment(d: Datastore) -> str | None:
    """DOCKER_HOST as the user set it when starting bitbake, for an empty SWUPD_REPO_DOCKER_HOST.

    bitbake-worker empties a task's environment (only exported variables are put back), so
    the docker SDK would not see DOCKER_HOST there. Like OE-core's fetcher does for proxies:
    the datastore's DOCKER_HOST (BB_ENV_PASSTHROUGH_ADDITIONS brings it there), else the one
    of the environment bitbake was started in (BB_ORIGENV).
    """
    host = d.getVar("DOCKER_HOST")
    if not host:
        origenv = d.getVar("BB_ORIGENV", False)
        host = origenv.getVar("DOCKER_HOST") if origenv is not None else None
    return host or None


def layout_candidates(d: Datastore) -> list[Path]:
    """Where the disk layout JSON is looked for, in order, when SWUPD_REPO_DISK_LAYOUT is empty."""
    deploy = Path(d.getVar("DEPLOY_DIR_IMAGE") or ".")
    machine = d.getVar("MACHINE") or ""
    found = []
    for name in (d.getVar("IMAGE_NAME"), d.getVar("IMAGE_LINK_NAME")):
        if name:
            found.append(deploy / f"{name}-disk-layout.json")
    found.append(deploy / f"disk-layout-{machine}.json")
    for directory in (d.getVar("FILESPATH") or "").split(":"):
        if directory:
            found.append(Path(directory) / f"disk-layout-{machine}.json")
    return found


def find_layout(d: Datastore) -> tuple[Path | None, str | None]:
    """(layout file, None) or (None, DSK_IMAGE_LAYOUT text): the issue's discovery order.

    SWUPD_REPO_DISK_LAYOUT when set (it must exist), else the first existing candidate of
    :func:`layout_candidates`, else the DSK_IMAGE_LAYOUT variable; otherwise an error that
    lists every place looked at.
    """
    explicit = d.getVar("SWUPD_REPO_DISK_LAYOUT")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise LayoutError(f"SWUPD_REPO_DISK_LAYOUT names {path}, which does not exist",
                              hint="set it to the disk-layout JSON of the image, or leave it "
                                   "empty to use the one the image deploys")
        return path, None
    candidates = layout_candidates(d)
    for path in candidates:
        if path.is_file():
            return path, None
    text = d.getVar("DSK_IMAGE_LAYOUT")
    if text and text.strip():
        return None, text
    looked = "\n  ".join(str(p) for p in candidates)
    raise LayoutError(
        f"no disk layout found; looked for\n  {looked}\nand in the variable DSK_IMAGE_LAYOUT",
        hint="set SWUPD_REPO_DISK_LAYOUT to the image's disk-layout JSON",
    )


def _parse_time_settings(d: Datastore) -> Settings:
    """Storage and step only: parse-time code must not read OS_VERSION, whose default is
    computed from these (reading it would call :func:`next_os_version` again)."""
    return _load(_variables(d, ["storage_dir", "version_step"]))


def skip_on_storage_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """At parse time a storage problem skips this recipe only (``bb.parse.SkipRecipe``, with
    our message as the reason), as BitBake does for a recipe that cannot be built here:
    ``bb.fatal`` would halt parsing, and so every other recipe of the build. Other errors
    (a bad OS_VERSION) still stop the parse: they are mistakes in the configuration."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise bb.parse.SkipRecipe(str(exc)) from None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@fatal_on_error
@skip_on_storage_error
def next_os_version(d: Datastore) -> int:
    """OS_VERSION's default: the storage's latest version + SWUPD_REPO_VERSION_STEP."""
    from .pipeline import storage_of

    settings = _parse_time_settings(d)
    return next_version(storage_of(settings).latest(), settings.version_step)


def usable_location(storage: Path) -> None:
    """Raise :class:`StorageError` (naming SWUPD_REPO_STORAGE_DIR) unless ``storage`` and the
    task's lock file beside it (``<storage>.bitbake.lock``) can be created and written: the
    nearest existing ancestor of ``storage`` is a directory this user may write."""
    hint = ("set SWUPD_REPO_STORAGE_DIR in local.conf to a directory the build user may "
            "create and write, e.g. \"${TOPDIR}/swupd-repo/${PN}-${MACHINE}\"")
    where = storage.parent if storage.exists() else storage
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        problem = f"{where} is not a directory"
    elif not os.access(where, os.W_OK | os.X_OK):
        problem = f"{where} is not writable by this user"
    else:
        return
    raise StorageError(f"SWUPD_REPO_STORAGE_DIR {storage} cannot be used: {problem}",
                       hint=hint)


@fatal_on_error
def check_storage_location(d: Datastore) -> None:
    """do_swupd_repo's prefunc: the storage can be created and written (see
    :func:`usable_location`), checked before BitBake takes the lock file beside it."""
    usable_location(Path(d.getVar("SWUPD_REPO_STORAGE_DIR") or "."))


@fatal_on_error
@skip_on_storage_error
def setup_recipe(d: Datastore) -> None:
    """The class's anonymous python: fix and check OS_VERSION, re-parse after a publish.

    OS_VERSION is expanded once and stored as a plain number, so every task of the build
    (and the task signatures) see the same version. Both latest markers become file
    dependencies of the recipe, so BitBake's parse cache is dropped when a build publishes,
    and the next build parses again and gets the next version.
    """
    from .pipeline import storage_of

    storage = storage_of(_parse_time_settings(d))
    for marker in (storage.latest_image_marker, storage.latest_www_marker):
        bb.parse.mark_dependency(d, str(marker))
    if bb.utils.to_boolean(d.getVar("SWUPD_REPO_GENERATE"), True):
        usable_location(storage.root)
    text = (d.getVar("OS_VERSION") or "").strip()
    if not text.isdigit() or int(text) <= 0:
        raise SettingsError(f"OS_VERSION must be a positive integer, got {text!r}",
                            hint="set OS_VERSION to a number above the latest published "
                                 "version, or leave it unset for latest + "
                                 "SWUPD_REPO_VERSION_STEP")
    d.setVar("OS_VERSION", str(int(text)))
    if not bb.utils.to_boolean(d.getVar("SWUPD_REPO_GENERATE"), True):
        bb.build.deltask("do_swupd_repo", d)


@fatal_on_error
def write_os_release(d: Datastore) -> None:
    """Rootfs post-process: ``VERSION_ID=${OS_VERSION}`` in usr/lib/os-release (created when
    missing) and a regular etc/os-release (:func:`~swupd_repo.osrelease.stamp_version_id`)."""
    rootfs = Path(d.getVar("IMAGE_ROOTFS"))
    version = int(d.getVar("OS_VERSION"))
    stamp_version_id(rootfs, version)
    bb.note(f"os-release of {rootfs} says VERSION_ID={version}")


@fatal_on_error
def publish_image(d: Datastore) -> int:
    """do_swupd_repo: the image's rootfs becomes www/${OS_VERSION} of the storage."""
    from .pipeline import publish

    settings = settings_from_datastore(d)
    layout_path, layout_text = find_layout(d)
    if layout_path is not None:
        settings = settings.replace(disk_layout=layout_path)
        bb.note(f"disk layout: {layout_path}")
    else:
        bb.note("disk layout: the DSK_IMAGE_LAYOUT variable")
    if settings.check:
        # the release gate's update simulation may need pseudo (check/unprivileged.py)
        from .check.unprivileged import PSEUDO_ENV_VAR, PSEUDO_VAR

        os.environ[PSEUDO_VAR] = d.getVar("FAKEROOTCMD") or ""
        os.environ[PSEUDO_ENV_VAR] = d.getVar("FAKEROOTENV") or ""
    reporter = BitBakeReporter(d)
    version = publish(settings, reporter, layout_text=layout_text)
    storage = settings.storage_dir
    verb = "published" if settings.release else "staged (swupd-repo release to release it)"
    bb.plain(f"swupd-repo: {verb} version {version} in {storage}/www; serve it with "
             f"`swupd-repo serve --storage {storage}`")
    if settings.report:
        write_report(settings, reporter)
    return version


def write_report(settings: Settings, reporter: BitBakeReporter) -> None:
    """SWUPD_REPO_REPORT: ``STORAGE/report.html`` and ``report.json`` after the first publish
    (:func:`~swupd_repo.report.refresh_report_files`: a failure is a warning). Once they are
    there, every publish writes them again itself (:func:`~swupd_repo.pipeline.publishing_run`),
    as the CLI's do."""
    from .pipeline import storage_of
    from .report import has_report_files, refresh_report_files

    storage = storage_of(settings)
    # under the lock: another image's run on a shared storage would clean the report's
    # temporary file as a leftover, and a container run would take it for its scratch
    try:
        with storage.lock():
            if not has_report_files(storage):
                refresh_report_files(storage, reporter)
    except SwupdRepoError as exc:  # the lock; the version is published all the same
        reporter.warning(f"no report written ({exc})")
