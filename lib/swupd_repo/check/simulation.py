"""Update simulation: install each supported earlier version into a scratch root, update it to
the new version over real HTTP (our own server on 127.0.0.1) and compare the result with
``image/<V>/os-core`` (with its metadata record) object by object (except what the format
leaves to the device: ``/etc``, state paths). A fresh install of the new version is simulated too.
Each of these runs once per bundle set (:mod:`.bundlesets`: os-core alone, every bundle), and
the image is then restricted to that set's paths.
A device on a version retired from ``www`` (``prune --www-before``) is laid down from a seed
of what that version held (:mod:`.retired`) and then updated from the real ``www``.

Scratch roots live under the system temporary directory (``TMPDIR``), never in the storage: a
concurrent publish removes the storage's temporary names, and the storage may be on a disk
meant only for the repository.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..client.manifests import read_manifest_tar
from ..client.report import ClientStats
from ..errors import CheckError, ClientError, ManifestError, SwupdRepoError
from ..progress import Reporter
from ..storage import Storage
from ..swupd.manifest import Manifest, parse_manifest
from ..treemeta import load as load_meta
from ..versions import is_update_source
from .bundlesets import BundleSet, Expected, bundle_sets, expected
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
    """Install and update scratch roots over real HTTP, one device per bundle set
    (:mod:`.bundlesets`); compare each with the image tree."""
    from ..serve import serve_in_thread

    image = storage.os_core(version)
    if not image.is_dir():
        report.problems.append(f"{image} is missing: cannot compare the update result with it")
        return
    try:
        moms = {v: read_manifest(storage, v, "MoM") for v in [version, *earlier]}
        if "os-core" not in moms[version].by_path():
            report.problems.append(f"{storage.www(version)}/Manifest.MoM.tar has no os-core "
                                   "line")
            return
        sets = bundle_sets(moms)
        read = functools.cache(lambda v, n: read_manifest(storage, v, n))  # once per set
        goals = {bset: expected(moms[version], read, bset) for bset in sets}
    except (ClientError, ManifestError) as exc:
        report.problems.append(f"cannot simulate updates: {exc}")
        return
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
                for n, bset in enumerate(sets):
                    device = Device(url, version, start, moms, bset, goals[bset], options,
                                    storage)
                    label = device.label()
                    rep.step(f"simulating {label}")
                    work = scratch / f"{start}-{n}"
                    try:
                        problems, stats = device.run(work / "root", work / "state", image,
                                                     image_meta)
                    except Unseedable as exc:
                        rep.warning(f"not simulating an update from the retired version "
                                    f"{start}: {exc}")
                        continue
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    report.problems.extend(problems)
                    if stats is not None:
                        # the label names the versions: the counters alone follow it
                        report.simulations.append(Simulation(start, version, stats.counts(),
                                                             bset.label))
                        rep.info(f"{label}: {stats.counts()}; {len(problems)} problems")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Device:
    """One simulated device: installs ``start`` (0: ``version`` itself) with its bundle set,
    updates to ``version``, adds the bundles that appeared since (for every-bundle devices),
    then must verify clean and equal the image restricted to its set."""

    url: str
    version: int
    start: int
    moms: dict[int, Manifest]
    bundle_set: BundleSet
    goal: Expected
    options: dict[str, Any]
    storage: Storage

    def label(self) -> str:
        what = (f"install of {self.version}" if not self.start
                else f"update {self.start} -> {self.version}")
        return f"{what} [{self.bundle_set.label}]" if self.bundle_set.label else what

    def run(self, root: Path, state: Path, image: Path,
            image_meta: Any) -> tuple[list[str], ClientStats | None]:
        from ..client import bundle_add, compare_trees, install, update, verify
        from ..client.compare import skip_for
        from ..client.tracking import installed_bundles

        label, version, options = self.label(), self.version, self.options
        try:
            first = self.start or version
            bundles = self.bundle_set.start(self.moms[first])
            if self.start and needs_seed(self.storage, self.start):
                stats = install_retired(self.storage, self.start, root, state,
                                        root.parent, options, bundles)
            else:
                stats = install(self.url, root, first, state_dir=state, bundles=bundles,
                                **options)
            if self.start:
                stats = update(self.url, root, to=version, state_dir=state, **options)
            new = [n for n in self.goal.bundles if n not in installed_bundles(root)]
            if new and self.bundle_set.everything:
                added = bundle_add(self.url, root, new, state_dir=state, **options)
                stats.deltas_failed += added.deltas_failed
            found = verify(self.url, root, version=version, **options)
            problems = [f"{label}: verify: {m}" for m in found.mismatches]
            have = installed_bundles(root)
            if sorted(have) != sorted(self.goal.bundles):
                problems.append(f"{label}: the device has bundles {', '.join(have)}, "
                                f"expected {', '.join(self.goal.bundles)}")
            problems += [f"{label}: {d}" for d in compare_trees(
                root, image, skip_for(self.goal.entries), image_meta,
                self.goal.not_expected)]
            if stats.deltas_failed:
                # a pristine root: every delta in the pack should have applied
                problems.append(f"{label}: {stats.deltas_failed} delta(s) in "
                                f"{', '.join(stats.packs)} failed (see warnings)")
            return problems, stats
        except SwupdRepoError as exc:
            return [f"{label}: {exc}"], None
        except OSError as exc:
            raise CheckError(f"{label} failed on the local disk (scratch root {root}): {exc}",
                             hint="set TMPDIR to a writable directory with room for two root "
                                  "trees, with xattr support") from exc


def install_retired(storage: Storage, version: int, root: Path, state: Path, work: Path,
                    options: dict[str, Any], bundles: Sequence[str] = ()) -> Any:
    """Lay down a device on the retired ``version`` with the client, from a seed repository
    of what ``www/<version>`` held (:mod:`.retired`), served on its own over real HTTP."""
    from ..client import install
    from ..serve import serve_in_thread

    seed = work / "seed"
    make_seed(storage, version, seed)
    marker = f"/{storage.latest_www_marker.relative_to(storage.www_dir)}"
    with serve_in_thread(seed, overrides={marker: f"{version}\n".encode()}) as seed_url:
        return install(seed_url, root, version, state_dir=state, packs=False,
                       bundles=bundles, **options)
