"""Write one complete ``www/<V>`` atomically (format3 §1.3, issue 2 item 5).

Everything is built under ``www/.swupd-repo-tmp-build-<V>.<pid>`` and renamed to ``www/<V>``
as the very last step, so a failed or killed run leaves earlier versions untouched and at most
a temporary directory that :meth:`Storage.clean_leftovers` removes on the next run. The
``latest`` markers are not touched here: the pipeline moves them after the optional check.

Packs and deltas are written by :mod:`.packs`, which finds fullfiles as
``<www>/<L>/files/<H>.tar``. While V is still being built its files live in the staging
directory, so packs get a *view* of ``www``: a temporary directory of symlinks, one per
published version plus ``<V>`` pointing at the staging directory.

Manifest deltas (``Manifest-<X>-delta-from-<P>``) are not written: the format allows omitting
them and the c42f8a3a client never attempts them anyway (its MoM walk is unsorted, §7.6); it
downloads ``Manifest.<X>.tar`` instead.

``image/<V>/full``: the container reads ``image/<old>/full/<path>`` to make deltas against old
versions. Instead of copying the tree we make ``image/<V>/full`` a relative symlink to
``os-core`` (no copy, no hard links that would change every file's ctime and defeat the hash
cache); the content is identical because the container's full tree is the union of the bundle
trees, which is the whole image we store as ``os-core`` (its split into bundles is kept beside
it, :mod:`...bundles.assignment`). An existing ``full`` (e.g. from a container build) is left
alone.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundles.assignment import read_assignment
from ..errors import BuildError, VersionError
from ..progress import Reporter
from ..storage import Storage, fsync_dir
from . import builder
from .fullfiles import write_fullfiles
from .manifest_tar import manifest_tar_bytes, write_plain, write_plain_manifest
from .names import pack_name
from .rebase import is_rebase
from .scan import CACHE_NAME, scan_tree

if TYPE_CHECKING:
    from ..settings import Settings
    from .manifest import Manifest

FORMAT = 3
#: What ``www/<V>/swupd-server-src-version`` says: the server release whose output we mirror.
SERVER_SRC_VERSION = "3.0.0"


def make_executor(workers: int) -> Executor | None:
    """The process pool for hashing and compression (None: run inline, e.g. one core)."""
    return ProcessPoolExecutor(max_workers=workers) if workers > 1 else None


def manifest_timestamp() -> int | None:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else None (the current time).

    The manifests' ``timestamp:`` is informational (no client checks it), but it is part of
    the bytes the MoM's ``M`` hash covers, so a fixed value makes whole repositories
    reproducible.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
                         hint="unset it or set it to a Unix time")
    return int(value)


def build_version(storage: Storage, version: int, settings: Settings, reporter: Reporter,
                  *, timestamp: int | None = None) -> builder.Built:
    """Build and publish ``www/<version>`` from ``image/<version>/os-core`` and its bundle
    split (``os-core.bundles``; none: os-core alone).

    ``timestamp`` (default: :func:`manifest_timestamp`) goes into every manifest header.
    """
    if timestamp is None:
        timestamp = manifest_timestamp()
    www = storage.www(version)
    if www.exists():  # the pipeline sets a published tree aside before a forced rebuild
        raise VersionError(f"{www} already exists",
                           hint="pass --force (SWUPD_REPO_FORCE = \"1\") to rebuild it")
    signer = _load_signer(settings)  # a bad key fails before any output
    previous = builder.load_previous(storage, version)
    storage.www_dir.mkdir(parents=True, exist_ok=True)
    staging = storage.temp_path(storage.www_dir, f"build-{version}")
    view = storage.temp_path(storage.www_dir, f"view-{version}")
    executor = make_executor(settings.workers)
    try:
        scan = scan_tree(storage.os_core(version), reporter, executor=executor,
                         cache_file=storage.image(version) / CACHE_NAME)
        reporter.info(f"{len(scan.records)} paths; {scan.hashed} files hashed, "
                      f"{scan.cached} from the hash cache")
        split = read_assignment(storage.os_core(version))
        for name in sorted(set(previous.bundles) - set(split.names())):
            reporter.warning(f"bundle {name} of version {previous.version} is not defined for "
                             f"{version}: it leaves the MoM (our client removes its files "
                             "on update; a c42f8a3a client keeps them)")
        built = builder.build_manifests(scan.records, version, previous, timestamp=timestamp,
                                        minversion=version if settings.rebase else 0,
                                        bundles=split.bundles)
        staging.mkdir()
        reporter.step("writing manifests")
        tars = _start_manifests(staging, built, signer, executor)
        write_fullfiles(builder.fullfile_records(built, scan.records), staging / "files",
                        settings.compression, reporter, executor)
        if executor is not None:  # idle workers leave; a manifest's xz still running stays
            executor.shutdown(wait=False)
        _make_view(storage, view, version, staging)
        _write_packs(storage, view, staging, built, previous, settings, reporter, signer)
        _finish_manifests(staging, tars, signer, built)  # their xz ran beside the packs
        if executor is not None:
            executor.shutdown()
            executor = None
        write_plain(staging / "format", f"{FORMAT}\n".encode())
        write_plain(staging / "swupd-server-src-version", f"{SERVER_SRC_VERSION}\n".encode())
        link_full_tree(storage, version)
        _fsync_tree_dirs(staging)
        try:
            staging.rename(www)
        except OSError as exc:
            raise BuildError(f"cannot move {staging} to {www}: {exc.strerror}") from exc
        fsync_dir(storage.www_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        shutil.rmtree(view, ignore_errors=True)
    return built


def _load_signer(settings: Settings) -> Any:
    if not settings.signing:
        return None
    from . import signing

    return signing.load_signing_material(settings.signing_key, settings.signing_cert,
                                         settings.signing_chain,
                                         settings.signing_passphrase_file)


def _sign_pem(signer: Any, data: bytes) -> bytes | None:
    if signer is None:
        return None
    from . import signing

    return signing.sign_pem(signer, data)


def _start_manifests(staging: Path, built: builder.Built, signer: Any,
                     executor: Executor | None) -> list[tuple[str, Any]]:
    """Write the plain manifests and start compressing their tars in the pool (xz -6 of a
    large bundle manifest takes most of a second: it runs beside the fullfiles and the packs,
    which do not need the tars, and :func:`_finish_manifests` collects it after them)."""
    items = [*built.bundle_bytes.items(), ("full", built.full_bytes), ("MoM", built.mom_bytes)]
    tars: list[tuple[str, Any]] = []
    for name, data in items:
        members = write_plain_manifest(staging, name, data, _sign_pem(signer, data))
        tars.append((name, executor.submit(manifest_tar_bytes, members) if executor is not None
                     else manifest_tar_bytes(members)))
    return tars


def _finish_manifests(staging: Path, tars: list[tuple[str, Any]], signer: Any,
                      built: builder.Built) -> None:
    """Write the ``Manifest.<X>.tar`` files (and signatures) started by _start_manifests."""
    for name, pending in tars:
        tar = staging / f"Manifest.{name}.tar"
        data = pending if isinstance(pending, bytes) else pending.result()
        write_plain(tar, data)
        if signer is not None:
            write_plain(tar.with_name(tar.name + ".signed"), _sign_pem(signer, data))
    if signer is not None:
        from . import signing

        write_plain(staging / "Manifest.MoM.sig", signing.sign_der(signer, built.mom_bytes))


def _make_view(storage: Storage, view: Path, version: int, staging: Path) -> None:
    view.mkdir()
    for entry in storage.www_dir.iterdir():
        if entry.name.isdigit() and entry.name != str(version):
            (view / entry.name).symlink_to(Path("..") / entry.name)
    (view / str(version)).symlink_to(Path("..") / staging.name)


def _write_packs(storage: Storage, view: Path, staging: Path, built: builder.Built,
                 previous: builder.Previous, settings: Settings, reporter: Reporter,
                 signer: Any) -> None:
    """Zero pack and delta packs of every bundle that changed in V (§5.1), their streams
    shared through the storage's stream store (pruned to its bound afterwards)."""
    from . import packs
    from .streamstore import STORE_DIR, StreamStore

    store = StreamStore(storage.root / STORE_DIR)
    rebase = is_rebase(view, built.version)

    for name, manifest in built.bundles.items():
        old = previous.bundles.get(name)
        prev_pack = None
        if old is not None:
            candidate = storage.www(old.version) / pack_name(name, 0)
            prev_pack = candidate if candidate.is_file() else None
        sources = packs.delta_pack_sources(view, name, built.version,
                                           settings.deltapack_versions)
        sources = packs.with_released_source(view, name, built.version, sources,
                                             storage.released())
        out = staging / pack_name(name, 0)
        deltas = [] if rebase else _delta_pack_inputs(storage, staging, name, old, sources)
        packs.write_bundle_packs(view, name, manifest, out, previous_pack=prev_pack,
                                 deltas=deltas, image_dir=storage.image_dir,
                                 workers=settings.workers, reporter=reporter, store=store)
        for path in (out, *(d[1] for d in deltas)):
            _sign_file(signer, path)
        if rebase:  # every file changed: a delta pack would be the zero pack again
            _link_zero_pack(staging, name, sources, reporter)
    store.prune()
    reporter.info(f"stream store: {store.hits} streams copied, {store.dropped} damaged "
                  f"entries dropped, {len(store.skipped)} skipped (another owner's)")


def _link_zero_pack(staging: Path, name: str, sources: list[int], reporter: Reporter) -> None:
    """A rebase's packs from ``sources``: hard links of its zero pack (and its signature).

    Every entry of a rebase changed in it, so the delta pack from an earlier version stages
    every file (deltas of unchanged files aside, which would cost a bsdiff per file for
    nothing a device needs). The zero pack holds exactly those files; as a link it costs no
    space and gives a device on an earlier version one download instead of a request per
    file."""
    zero = staging / pack_name(name, 0)
    for src in sources:
        for suffix in ("", ".signed"):
            source = zero.with_name(zero.name + suffix)
            if source.is_file():
                os.link(source, staging / (pack_name(name, src) + suffix))
    if sources:
        reporter.info(f"rebase: the packs of {name} from {', '.join(map(str, sources))} are "
                      "its zero pack")


def _delta_pack_inputs(storage: Storage, staging: Path, name: str,
                       previous: Manifest | None, sources: list[int]
                       ) -> list[tuple[Manifest, Path]]:
    """(old manifest, output) of each delta pack; ``previous`` (the bundle's manifest the
    build started from, usually the newest source) is used as is instead of being read
    again."""
    return [(previous if previous is not None and previous.version == src
             else builder.read_manifest(storage.www(src) / f"Manifest.{name}"),
             staging / pack_name(name, src)) for src in sources]


def _sign_file(signer: Any, path: Path) -> None:
    if signer is not None and path.is_file():
        write_plain(path.with_name(path.name + ".signed"), _sign_pem(signer, path.read_bytes()))


def link_full_tree(storage: Storage, version: int) -> None:
    """``image/<V>/full -> os-core`` for a later container build (see the module docstring)."""
    full = storage.full(version)
    if full.exists() or full.is_symlink():
        return
    full.symlink_to("os-core")


#: Up to this many staged files are fsynced one by one (an incremental build writes a few
#: manifests, fullfiles, deltas and packs); more (a first publish writes a fullfile per
#: distinct file) and one ``syncfs`` is cheaper than thousands of journal commits.
FSYNC_EACH_MAX = 512


def _fsync_tree_dirs(root: Path) -> None:
    """Make the staged files and directories durable before the rename publishes them.

    Few files: an fsync of each (packs were fsynced as they were written, so theirs costs
    nothing). Many: one ``syncfs`` of the storage filesystem, which also flushes everything
    else dirty there (e.g. a freshly extracted image tree: seconds for a large one), so it is
    kept for the case where an fsync per file would cost more; per-file fsync where syncfs is
    unavailable.
    """
    dirs: list[str] = []
    files: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        dirs.append(dirpath)
        files.extend(os.path.join(dirpath, name) for name in names)
    if len(files) > FSYNC_EACH_MAX and _syncfs(root):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for dirpath in reversed(dirs):  # children before the directories that name them
        fsync_dir(Path(dirpath))


def _syncfs(root: Path) -> bool:
    """``syncfs`` of the filesystem holding ``root``; False where libc has none or it fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)
