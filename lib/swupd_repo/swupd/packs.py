"""Zero packs and delta packs (format3 §5.1) and the file deltas they carry (§5.3).

A pack ``www/<V>/pack-<b>-from-<N>.tar`` is an xz tar of ``delta/`` and ``staged/`` (both
0750, 0/0), ``staged/<H>`` members re-emitted from the fullfiles ``www/<L>/files/<H>.tar``
(full metadata, numeric owner, empty uname/gname, xattrs as ``SCHILY.xattr.*``) and
``delta/<F>-<T>-<H>`` files. The byte layout (concatenated xz streams with reuse of the
previous zero pack's unchanged groups) is :mod:`.packstream`'s job; this module decides *what*
goes in, with the container's rules:

* zero pack: ``staged/<H>`` for every live entry of ``Manifest.<b>``;
* delta pack from N: new paths get ``staged/<H>``; paths changed after N get
  ``delta/<F>-<T>-<H>`` when that delta exists, is no directory, is larger than 8 bytes and
  1.05 x its size is below the fullfile's size, else ``staged/<H>``.

Deltas are made here, under ``www/<T>/delta/``, from ``image/<F>/full/<path>`` (or
``os-core`` when ``full`` is missing) to ``image/<T>/...``, for regular files whose xattrs are
unchanged, and only when both image files still hash to their manifest hashes (so a delta can
never be wrong). Attempts that give no delta are remembered in ``www/<T>/.delta-none`` (one
name per line; a dotfile the client never asks for) so the next delta pack does not run the
same expensive bsdiff again. Delta jobs run in a process pool bounded by both ``workers`` and
:data:`DELTA_MEMORY_BUDGET` (see :func:`.delta.delta_memory`).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..progress import Reporter
from ..storage import atomic_write_bytes
from ..treemeta import Meta, TreeMeta, from_disk
from ..treemeta import load as load_meta
from .delta import delta_memory, delta_wanted, make_delta
from .hashing import hash_bytes
from .manifest import Entry, Manifest, parse_manifest
from .names import delta_name, fullfile_relpath
from .packstream import PackMember, plan_spans, write_pack
from .rebase import is_rebase
from .streamstore import StreamStore
from .workpool import SharedPool

#: Sum of the estimated peaks of delta jobs running at once (one job always may run).
DELTA_MEMORY_BUDGET = 768 * 1024 * 1024
NO_DELTA_FILE = ".delta-none"
#: The container keeps a delta only if 1.05 x its size is below the fullfile's size.
DELTA_KEEP_FACTOR = 1.05
_MIN_DELTA = 8
#: Group eras (see :class:`.packstream.PackMember`): the pack directories, then the deltas,
#: then staged members by last_change.
_DIR_ERA, _DELTA_ERA = -2, -1


def fullfile_path(www: Path, entry: Entry) -> Path:
    return www / fullfile_relpath(entry.last_change, entry.hash)


def _live(manifest: Manifest) -> list[Entry]:
    return [e for e in manifest.entries if not e.deleted and e.type in "FDL"]


def _dir_members(mtime: int) -> list[PackMember]:
    return [PackMember("delta", "dir", mtime=mtime, era=_DIR_ERA),
            PackMember("staged", "dir", mtime=mtime, era=_DIR_ERA)]


def _staged(www: Path, entries: Iterable[Entry],
            cache: dict[tuple[int, str], PackMember] | None = None) -> list[PackMember]:
    """One ``staged/<H>`` per distinct hash, ordered by (oldest last_change, path): old groups
    then only lose members over time, new content lands in new groups at the end, and files
    of one directory (one package) sit side by side, which xz finds more to share in.

    ``cache`` keeps the members (each from one stat of its fullfile) across the packs of one
    build, by (last_change, hash): the zero pack and a delta pack from long ago stage nearly
    the same thousands of files, and no fullfile changes while the build runs."""
    best: dict[str, Entry] = {}
    for e in entries:
        cur = best.get(e.hash)
        if cur is None or (e.last_change, e.path) < (cur.last_change, cur.path):
            best[e.hash] = e
    cache = {} if cache is None else cache
    out = []
    root = os.fspath(www)
    for e in sorted(best.values(), key=lambda e: (e.last_change, e.path, e.hash)):
        member = cache.get((e.last_change, e.hash))
        if member is None:
            member = cache[e.last_change, e.hash] = _staged_member(root, e)
        out.append(member)
    return out


def _staged_member(root: str, e: Entry) -> PackMember:
    src = os.path.join(root, fullfile_relpath(e.last_change, e.hash))  # str: thousands
    try:
        st = os.stat(src)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise BuildError(f"{src} is missing, but {e.path} needs it in a pack",
                         hint="every live manifest entry (H, L) needs www/L/files/H.tar; "
                         f"rebuild version {e.last_change} with --force")
    # weight for grouping: the fullfile's size (cheap, stable)
    return PackMember(f"staged/{e.hash}", "fullfile", src, st.st_size, e.hash,
                      ident=_ident(st), era=e.last_change)


def _ident(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _timestamp(manifest: Manifest) -> int:
    return manifest.timestamp or int(time.time())


# --------------------------------------------------------------------------- zero pack

def write_zero_pack(www: Path, bundle: str, manifest: Manifest, out: Path, *,
                    previous_pack: Path | None, workers: int, reporter: Reporter,
                    store: StreamStore | None = None, pool: SharedPool | None = None,
                    staged_cache: dict[tuple[int, str], PackMember] | None = None) -> None:
    """``pack-<bundle>-from-0.tar``: every live entry staged, whatever its last_change.

    Groups found in ``store`` or, failing that, in ``previous_pack`` (the bundle's previous
    zero pack, with its index) are copied instead of being compressed again; a span of
    older content that changed since ``previous_pack`` is split into its pieces (see
    :func:`.packstream._choose`).
    """
    members = _staged(www, _live(manifest), staged_cache)
    spans = [[_dir_members(_timestamp(manifest))], *plan_spans(members)]
    reused, made = write_pack(out, spans, previous=previous_pack, workers=workers,
                              reporter=reporter, label=f"zero pack {bundle}", keep_index=True,
                              store=store, pool=pool, fresh_era=manifest.version)
    reporter.info(f"{out.name}: {len(members)} members in {reused + made} xz streams, "
                  f"{reused} reused (from the stream store or "
                  f"{previous_pack.name if previous_pack else 'no previous pack'})")


# --------------------------------------------------------------------------- delta pack

@dataclass(frozen=True)
class _DeltaJob:
    name: str  # F-T-H
    out: str
    old: str
    new: str
    old_hash: str
    new_hash: str
    memory: int
    old_meta: Meta  # from the tree's metadata record (or the tree, when it has none)
    new_meta: Meta


def write_delta_pack(www: Path, bundle: str, old: Manifest, new: Manifest, out: Path, *,
                     image_dir: Path, workers: int, reporter: Reporter,
                     store: StreamStore | None = None, pool: SharedPool | None = None,
                     staged_cache: dict[tuple[int, str], PackMember] | None = None) -> None:
    """``pack-<bundle>-from-<old.version>.tar`` for ``new``; makes the deltas it needs.

    Staged members are grouped by last_change like the zero pack's, so their streams come
    from ``store`` (usually put there by this version's zero pack)."""
    source = old.version
    pairs, staged = _changes(old, new)
    _make_deltas(www, image_dir, pairs, workers, reporter, pool)
    deltas: dict[str, PackMember] = {}  # by name: paths sharing a hash share one delta
    for prev, e in pairs:
        member = _delta_member(www, prev, e)
        if member is None:
            staged.append(e)
        else:
            deltas[member.name] = member
    members = [*_dir_members(_timestamp(new)), *sorted(deltas.values(), key=lambda m: m.name),
               *_staged(www, staged, staged_cache)]
    write_pack(out, plan_spans(members), previous=None, workers=workers, reporter=reporter,
               label=f"delta pack {bundle} from {source}", keep_index=False, store=store,
               pool=pool)
    reporter.info(f"{out.name}: {len(deltas)} deltas, {len(members) - len(deltas) - 2} staged")


def _changes(old: Manifest, new: Manifest) -> tuple[list[tuple[Entry, Entry]], list[Entry]]:
    """(old, new) entry pairs a delta from ``old`` may cover, and the entries new in ``new``."""
    old_by_path = {e.path: e for e in old.entries if not e.deleted}
    pairs: list[tuple[Entry, Entry]] = []
    staged: list[Entry] = []
    for e in _live(new):
        prev = old_by_path.get(e.path)
        if prev is None:
            staged.append(e)
        elif e.last_change > old.version:
            pairs.append((prev, e))
    return pairs, staged


# --------------------------------------------------------------------------- one bundle

def write_bundle_packs(www: Path, bundle: str, manifest: Manifest, zero_out: Path, *,
                       previous_pack: Path | None, deltas: list[tuple[Manifest, Path]],
                       image_dir: Path, workers: int, reporter: Reporter,
                       store: StreamStore | None = None,
                       staged_cache: dict[tuple[int, str], PackMember] | None = None) -> None:
    """The zero pack and the delta packs (from each ``(old manifest, out)`` of ``deltas``)
    of one bundle, on one process pool.

    Why together: the file deltas every delta pack needs (bsdiff, seconds per MiB) do not
    depend on the zero pack, so a thread makes them all while the main thread compresses
    the zero pack's groups; both feed one :class:`.workpool.SharedPool`, which keeps every
    core busy through each phase's single-job tail and bounds the memory of what runs at
    once (:data:`DELTA_MEMORY_BUDGET` for the deltas). The delta packs then find their
    deltas made, and their staged groups in the store (put there by the zero pack).
    ``staged_cache``: the staged members of the build (see :func:`_staged`; None: this call's own).
    """
    staged_cache = {} if staged_cache is None else staged_cache
    pairs = [pair for old, _out in deltas for pair in _changes(old, manifest)[0]]
    pool = SharedPool(workers, DELTA_MEMORY_BUDGET) if workers > 1 else None
    maker: threading.Thread | None = None
    failure: list[BaseException] = []
    made: list[int] = []

    def make() -> None:
        try:
            made.append(_make_deltas(www, image_dir, pairs, workers, None, pool))
        except BaseException as exc:  # re-raised in the main thread
            failure.append(exc)

    try:
        if pairs:
            maker = threading.Thread(target=make, name="deltas", daemon=True)
            maker.start()
        write_zero_pack(www, bundle, manifest, zero_out, previous_pack=previous_pack,
                        workers=workers, reporter=reporter, store=store, pool=pool,
                        staged_cache=staged_cache)
        if maker is not None:
            maker.join()
            maker = None
            if failure:
                raise failure[0]
            reporter.info(f"{made[0]} deltas tried beside the zero pack")
        for old, out in deltas:
            write_delta_pack(www, bundle, old, manifest, out, image_dir=image_dir,
                             workers=workers, reporter=reporter, store=store, pool=pool,
                             staged_cache=staged_cache)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if maker is not None:
            maker.join()


def _delta_member(www: Path, prev: Entry, e: Entry) -> PackMember | None:
    """The container's keep rule (§5.1) for an existing delta file."""
    if e.type == "D":
        return None
    name = delta_name(prev.last_change, e.last_change, e.hash)
    path = www / str(e.last_change) / "delta" / name
    try:
        st = path.stat()
        full = fullfile_path(www, e).stat().st_size
    except FileNotFoundError:
        return None
    if st.st_size <= _MIN_DELTA or not DELTA_KEEP_FACTOR * st.st_size < full:
        return None
    return PackMember(f"delta/{name}", "file", str(path), st.st_size, e.hash,
                      ident=_ident(st), era=_DELTA_ERA)


def _image_file(image_dir: Path, version: int, path: str,
                records: dict[int, TreeMeta | None],
                stored: list[int] | None = None) -> tuple[Path, Meta] | None:
    """A stored version's file at manifest ``path`` with its metadata: from ``os-core`` and
    its record when it has one, else from ``full`` (a container's) or ``os-core`` as this
    process sees it. ``records`` caches the loaded records per version.

    A version whose tree was pruned is read from the oldest stored tree after it (``stored``:
    the versions under ``image_dir``, ascending): ``prune`` keeps, for every file a later delta
    can start from, a tree inside the range of versions where that file did not change, and
    :func:`make_delta_file` proves the bytes against the manifest hash anyway."""
    if stored is not None and not (image_dir / str(version)).is_dir():
        later = [v for v in stored if v > version]
        if not later:
            return None
        version = later[0]
    rel = path.lstrip("/")
    if version not in records:
        records[version] = load_meta(image_dir / str(version) / "os-core")
    record = records[version]
    if record is not None:
        meta = record.entries.get(path)
        return (record.tree / rel, meta) if meta is not None else None
    for tree in ("full", "os-core"):
        candidate = image_dir / str(version) / tree / rel
        if os.path.lexists(candidate):
            try:
                return candidate, from_disk(candidate)
            except OSError:
                return None
    return None


def _failed(www: Path, version: int) -> set[str]:
    try:
        return set((www / str(version) / NO_DELTA_FILE).read_text().split())
    except FileNotFoundError:
        return set()


def _delta_jobs(www: Path, image_dir: Path, pairs: list[tuple[Entry, Entry]]) -> list[_DeltaJob]:
    jobs: dict[str, _DeltaJob] = {}
    failed: dict[int, set[str]] = {}
    records: dict[int, TreeMeta | None] = {}
    stored = sorted(int(p.name) for p in image_dir.iterdir()
                    if p.name.isdigit() and p.is_dir()) if image_dir.is_dir() else []
    for prev, e in pairs:
        if prev.type != "F" or e.type != "F":
            continue
        name = delta_name(prev.last_change, e.last_change, e.hash)
        target = www / str(e.last_change) / "delta" / name
        if name in jobs or target.exists():
            continue
        if e.last_change not in failed:
            failed[e.last_change] = _failed(www, e.last_change)
        if name in failed[e.last_change]:
            continue
        old = _image_file(image_dir, prev.last_change, prev.path, records, stored)
        new = _image_file(image_dir, e.last_change, e.path, records)
        if old is None or new is None:
            continue
        (old_file, old_meta), (new_file, new_meta) = old, new
        try:
            old_st, new_st = os.lstat(old_file), os.lstat(new_file)
        except OSError:
            continue
        if not (stat.S_ISREG(old_meta.mode) and stat.S_ISREG(new_meta.mode) and
                stat.S_ISREG(old_st.st_mode) and stat.S_ISREG(new_st.st_mode)):
            continue
        if not delta_wanted(old_st.st_size, new_st.st_size):
            continue
        jobs[name] = _DeltaJob(name, str(target), str(old_file), str(new_file),
                               prev.hash, e.hash, delta_memory(old_st.st_size, new_st.st_size),
                               old_meta, new_meta)
    return list(jobs.values())


def make_delta_file(job: _DeltaJob) -> bool:
    """Pool job: write the delta for ``job`` if it pays off; False when there is none."""
    old_meta, new_meta = job.old_meta, job.new_meta
    if old_meta.xattrs != new_meta.xattrs:
        return False
    old_data = Path(job.old).read_bytes()
    new_data = Path(job.new).read_bytes()
    # Both sides must still be what the manifests say, or the delta would be wrong; hashing
    # the bytes read is what makes the check cover exactly what is diffed.
    if _data_hash(old_meta, old_data) != job.old_hash or \
            _data_hash(new_meta, new_data) != job.new_hash:
        return False
    data = make_delta(old_data, new_data, new_meta.mode, new_meta.uid, new_meta.gid)
    if data is None:
        return False
    atomic_write_bytes(Path(job.out), data, durable=False)
    return True


def _data_hash(meta: Meta, data: bytes) -> str:
    return hash_bytes(meta.mode, meta.uid, meta.gid, meta.rdev, len(data), meta.xattrs, data)


def _make_deltas(www: Path, image_dir: Path, pairs: list[tuple[Entry, Entry]], workers: int,
                 reporter: Reporter | None, pool: SharedPool | None = None) -> int:
    """Make the missing deltas of ``pairs`` (largest first); returns how many were tried.
    ``reporter`` None: no progress (a thread beside another step's progress)."""
    jobs = sorted(_delta_jobs(www, image_dir, pairs), key=lambda j: -j.memory)
    if reporter is not None:
        reporter.step("making deltas", total=len(jobs))
    if not jobs:
        return 0
    results: list[tuple[_DeltaJob, bool]] = []
    if pool is not None:
        futures = [(job, pool.submit(make_delta_file, job, memory=job.memory)) for job in jobs]
        for job, fut in futures:
            results.append((job, fut.result()))
            if reporter is not None:
                reporter.advance()
    elif workers <= 1 or len(jobs) == 1:
        for job in jobs:
            results.append((job, make_delta_file(job)))
            if reporter is not None:
                reporter.advance()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: dict[Future[bool], _DeltaJob] = {}
            in_use = 0
            queue = list(jobs)
            while queue or pending:
                while queue and len(pending) < workers and (
                        not pending or in_use + queue[0].memory <= DELTA_MEMORY_BUDGET):
                    job = queue.pop(0)
                    pending[pool.submit(make_delta_file, job)] = job
                    in_use += job.memory
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    in_use -= job.memory
                    results.append((job, fut.result()))
                    if reporter is not None:
                        reporter.advance()
    _remember_failures(www, [j for j, ok in results if not ok])
    return len(jobs)


def _remember_failures(www: Path, failed: list[_DeltaJob]) -> None:
    by_version: dict[int, list[str]] = {}
    for job in failed:
        version = int(job.name.split("-")[1])
        by_version.setdefault(version, []).append(job.name)
    for version, names in by_version.items():
        path = www / str(version) / NO_DELTA_FILE
        known = _failed(www, version)
        text = "".join(f"{n}\n" for n in sorted(known.union(names)))
        atomic_write_bytes(path, text.encode(), durable=False)


# --------------------------------------------------------------------------- sources

def delta_pack_sources(www: Path, bundle: str, version: int, count: int) -> list[int]:
    """``pack_maker.sh``: the bundle's last ``count`` change points before ``version``, oldest
    first, found by walking MoM ``previous:`` links (stepping back 10 where a MoM is missing).

    Empty when the bundle did not change in ``version`` (its MoM line names another version).
    """
    mom = _read_mom(www, version)
    if mom is None or _bundle_version(mom, bundle) != version:
        return []
    return walk_change_points(www, bundle, mom.previous, count)[::-1]


def walk_change_points(www: Path, bundle: str, cursor: int, count: int) -> list[int]:
    """Up to ``count`` versions ``bundle`` last changed in, newest first, starting from the
    MoM of ``cursor`` and following ``previous:`` links (stepping back 10 where a MoM is
    missing); stops where the bundle did not exist yet, and after a rebase version
    (:mod:`.rebase`): every entry changed there, so a pack from before it would stage every
    file again, and the versions before it may be retired."""
    found: list[int] = []
    while len(found) < count and cursor > 0:
        older = _read_mom(www, cursor)
        if older is None:
            cursor -= 10
            continue
        bundle_version = _bundle_version(older, bundle)
        if bundle_version is None:
            break  # back before the bundle existed
        found.append(bundle_version)
        if is_rebase(www, bundle_version):
            break
        at = _read_mom(www, bundle_version)
        cursor = at.previous if at is not None else 0
    return found


def with_released_source(www: Path, bundle: str, version: int, sources: list[int],
                         released: int) -> list[int]:
    """``sources`` plus the bundle's change point as of the *released* version (what devices
    run) when staged versions after it pushed it out of the window (see :mod:`...release`).

    Without staged versions the released version is the previous one, whose change point
    :func:`delta_pack_sources` always finds, so the container's choice is unchanged; no
    sources (no delta packs wanted, or the bundle unchanged) stay none.
    """
    if not sources or not 0 < released < version:
        return sources
    mom = _read_mom(www, released)
    point = _bundle_version(mom, bundle) if mom is not None else None
    if point is None or point in sources or point >= version:
        return sources
    return sorted([*sources, point])


def _read_mom(www: Path, version: int) -> Manifest | None:
    path = www / str(version) / "Manifest.MoM"
    try:
        return parse_manifest(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


def _bundle_version(mom: Manifest, bundle: str) -> int | None:
    for e in mom.entries:
        if e.path == bundle:
            return e.last_change
    return None
