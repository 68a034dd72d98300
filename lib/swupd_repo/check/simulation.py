"""Update simulation: install each supported earlier version into a scratch root, update it to
the new version over real HTTP (our own server on 127.0.0.1) and compare the result with
``image/<V>/os-core`` (with its metadata record) object by object (except what the format
leaves to the device: ``/etc``, state paths). A fresh install of the new version is simulated too.
A device on a version retired from ``www`` (``prune --www-before``) is laid down from a seed
of what that version held (:mod:`.retired`) and then updated from the real ``www``.

Scratch roots live under the system temporary directory (``TMPDIR``), never in the storage: a
concurrent publish removes the storage's temporary names, and the storage may be on a disk
meant only for the repository.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..client.manifests import read_manifest_tar
from ..errors import CheckError, ClientError, ManifestError, SwupdRepoError
from ..progress import Reporter
from ..storage import Storage
from ..swupd.manifest import Manifest, parse_manifest
from ..treemeta import load as load_meta
from ..versions import is_update_source
from .loopback import bring_up_loopback
from .report import CheckReport, Simulation
from .retired import Unseedable, make_seed, needs_seed
from .unprivileged import can_set_owners, simulate_under_pseudo


def update_sources(candidates: Sequence[int], version: int, reporter: Reporter, *,
                   explicit: bool) -> list[int]:
    """The versions among ``candidates`` a device can update to ``version`` from.

    The client never updates from a version ending in 8 or 9 (devel and reserved builds), so
    simulating one would only fail; they are left out and the reporter says so (a warning when
    the user named them).
    """
    sources = []
    for v in candidates:
        if v >= version:
            reporter.warning(f"not simulating an update from {v}: it is not before {version}")
        elif not is_update_source(v):
            say = reporter.warning if explicit else reporter.info
            say(f"not simulating an update from {v}: devices never update from a version "
                "ending in 8 or 9")
        else:
            sources.append(v)
    return sources


def read_manifest(storage: Storage, version: int, name: str) -> Manifest:
    """``www/<version>/Manifest.<name>`` from its tar, as the client reads it."""
    tar = storage.www(version) / f"Manifest.{name}.tar"
    try:
        plain, _ = read_manifest_tar(tar.read_bytes(), name, str(tar))
    except FileNotFoundError:
        raise ClientError(f"{tar} is missing") from None
    return parse_manifest(plain, str(tar))


def scratch_dir(version: int) -> Path:
    """A new private directory under TMPDIR for the simulated roots."""
    try:
        return Path(tempfile.mkdtemp(prefix=f"swupd-repo-check-{version}-"))
    except OSError as exc:
        raise CheckError(f"cannot create a scratch directory in {tempfile.gettempdir()}: "
                         f"{exc.strerror}",
                         hint="set TMPDIR to a writable directory with room for two root "
                              "trees") from exc


def simulate(storage: Storage, version: int, earlier: list[int], report: CheckReport,
             rep: Reporter, trusted_certs: Sequence[Any] | None, check_time: bool) -> None:
    """Install and update scratch roots over real HTTP; compare with the image tree."""
    from ..client import compare_trees, install, update, verify
    from ..client.compare import skip_for
    from ..serve import serve_in_thread

    image = storage.os_core(version)
    if not image.is_dir():
        report.problems.append(f"{image} is missing: cannot compare the update result with it")
        return
    try:
        core = read_manifest(storage, version, "MoM").by_path().get("os-core")
        if core is None:
            report.problems.append(f"{storage.www(version)}/Manifest.MoM.tar has no os-core "
                                   "line")
            return
        entries = read_manifest(storage, core.last_change, "os-core").by_path()
    except (ClientError, ManifestError) as exc:
        report.problems.append(f"cannot simulate updates: {exc}")
        return
    skip = skip_for(entries)
    image_meta = load_meta(image)  # checked against the tree; None: a tree without a record
    options: dict[str, Any] = {"trusted_certs": trusted_certs, "check_time": check_time}
    # devices will see this version as latest once it is published: show them that now
    latest = {f"/{storage.latest_www_marker.relative_to(storage.www_dir)}": f"{version}\n".encode()}
    try:
        if bring_up_loopback():
            rep.info("brought up the loopback interface of this task's own network namespace "
                     "for the update simulation (no other network)")
    except OSError as exc:
        rep.warning(f"cannot bring up the loopback interface ({exc.strerror}); the update "
                    "simulation needs 127.0.0.1")
    scratch = scratch_dir(version)
    if not can_set_owners(scratch):
        try:
            simulate_under_pseudo(storage, version, earlier, report, rep, trusted_certs,
                                  check_time, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    try:
        with serve_in_thread(storage.www_dir, overrides=latest) as url:
            for start in [0, *earlier]:
                label = f"install of {version}" if not start else f"update {start} -> {version}"
                rep.step(f"simulating {label}")
                work = scratch / str(start)
                root, state = work / "root", work / "state"
                try:
                    if start and needs_seed(storage, start):
                        stats = install_retired(storage, start, root, state, work, options)
                    else:
                        stats = install(url, root, start or version, state_dir=state,
                                        **options)
                    if start:
                        stats = update(url, root, to=version, state_dir=state, **options)
                    found = verify(url, root, version=version, **options)
                    problems = [f"{label}: verify: {m}" for m in found.mismatches]
                    problems += [f"{label}: {d}" for d in compare_trees(root, image, skip,
                                                                       image_meta)]
                    if stats.deltas_failed:
                        # a pristine root: every delta in the pack should have applied
                        problems.append(f"{label}: {stats.deltas_failed} delta(s) in "
                                        f"{', '.join(stats.packs)} failed (see warnings)")
                except Unseedable as exc:
                    rep.warning(f"not simulating an update from the retired version {start}: "
                                f"{exc}")
                    continue
                except SwupdRepoError as exc:
                    problems = [f"{label}: {exc}"]
                    stats = None
                except OSError as exc:
                    raise CheckError(f"{label} failed on the local disk (scratch root "
                                     f"{root}): {exc}",
                                     hint="set TMPDIR to a writable directory with room for "
                                          "two root trees, with xattr support") from exc
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                report.problems.extend(problems)
                if stats is not None:
                    # the label names the versions: the counters alone follow it
                    report.simulations.append(Simulation(start, version, stats.counts()))
                    rep.info(f"{label}: {stats.counts()}; {len(problems)} problems")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def install_retired(storage: Storage, version: int, root: Path, state: Path, work: Path,
                    options: dict[str, Any]) -> Any:
    """Lay down a device on the retired ``version`` with the client, from a seed repository
    of what ``www/<version>`` held (:mod:`.retired`), served on its own over real HTTP."""
    from ..client import install
    from ..serve import serve_in_thread

    seed = work / "seed"
    make_seed(storage, version, seed)
    marker = f"/{storage.latest_www_marker.relative_to(storage.www_dir)}"
    with serve_in_thread(seed, overrides={marker: f"{version}\n".encode()}) as seed_url:
        return install(seed_url, root, version, state_dir=state, packs=False, **options)
