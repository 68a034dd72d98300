"""Which stored trees (``image/<V>``) a future build reads, and removing the others safely.

A build of version F reads, besides its own tree, the trees deltas start from: for each
bundle changed in F, its last ``deltapack_versions`` change points before F (the MoM
``previous:`` walk of :func:`~.swupd.packs.delta_pack_sources`, which starts at latest); each
changed file's old side is the file at its last change L (an entry of the source's bundle
manifest). That file is unchanged over every version from L to the source S, so any stored
tree in ``[L, S]`` holds the same bytes and metadata; the generator reads a pruned L from the
oldest stored tree after it (:func:`~.swupd.packs._image_file`). Keeping every source S (and
latest) therefore keeps every delta a future build makes: the same packs as without pruning.

Kept: latest, every such change point, trees above latest (extracted, not yet published), and
the ``keep`` newest trees. Removal is crash-safe like publish: under the storage lock, each
``image/<V>`` is first renamed to a temporary name (:data:`~.storage.TEMP_PREFIX`) and only
then removed, so a killed prune leaves whole trees or leftovers the next run cleans. Bytes
are counted per inode (``st_blocks``), so files shared with kept trees by hard links
(:mod:`.dedup`) are not counted as freed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .dedup import stored_trees
from .progress import Reporter
from .storage import Storage, fsync_dir, remove_tree, temp_path
from .swupd.packs import _bundle_version, _read_mom, walk_change_points


@dataclass
class PrunePlan:
    """What a prune keeps (version -> why) and removes, and the bytes removal frees."""

    keep: dict[int, str] = field(default_factory=dict)
    remove: list[int] = field(default_factory=list)
    freed_bytes: int = 0


def needed_trees(storage: Storage, deltapack_versions: int) -> dict[int, str]:
    """Stored versions a future build reads, each with the reason."""
    latest = storage.latest()
    stored = stored_trees(storage)
    needed: dict[int, str] = {v: "not published yet" for v in stored if v > latest}
    if latest in stored:
        needed[latest] = "latest"
    # Staged versions (after the released one): release checks them against their trees,
    # revert may bring them back, and the next build adds a delta pack from the released
    # version's change point (packs.with_released_source), where devices are.
    released = storage.released()
    for version in stored:
        if released and released <= version < latest:
            needed.setdefault(version, "released" if version == released else "staged")
    mom = _read_mom(storage.www_dir, latest) if latest else None
    released_mom = _read_mom(storage.www_dir, released) if 0 < released < latest else None
    for entry in mom.entries if mom is not None else ():
        # the delta sources of the next build (what packs.delta_pack_sources walks from there)
        sources = walk_change_points(storage.www_dir, entry.path, latest, deltapack_versions)
        if released_mom is not None:
            point = _bundle_version(released_mom, entry.path)
            sources = [*sources, *([point] if point is not None else [])]
        for source in sources:
            if source in stored:
                needed.setdefault(source, f"delta packs of {entry.path} start from it")
    return needed


def plan(storage: Storage, *, keep: int, deltapack_versions: int) -> PrunePlan:
    """What :func:`prune` would do now; ``keep`` newest trees are kept whatever they are."""
    stored = stored_trees(storage)
    result = PrunePlan(keep=needed_trees(storage, deltapack_versions))
    for version in stored[len(stored) - keep:] if keep > 0 else ():
        result.keep.setdefault(version, f"one of the {keep} newest")
    result.remove = [v for v in stored if v not in result.keep]
    result.freed_bytes = freed_bytes([storage.image(v) for v in result.remove])
    return result


def prune_locked(storage: Storage, removal: PrunePlan, reporter: Reporter) -> None:
    """Remove the trees of ``removal`` (the caller holds the storage lock)."""
    if not removal.remove:
        return
    aside = []
    for version in removal.remove:
        target = temp_path(storage.image_dir, f"pruned-{version}")
        storage.image(version).rename(target)
        aside.append(target)
    fsync_dir(storage.image_dir)
    for target in aside:
        remove_tree(target)
    reporter.info(f"pruned the trees of {', '.join(map(str, removal.remove))} "
                  f"({removal.freed_bytes / 1e6:.1f} MB freed)")


def prune(storage: Storage, *, keep: int, deltapack_versions: int, dry_run: bool,
          reporter: Reporter, wait: bool = True) -> PrunePlan:
    """Plan and (unless ``dry_run``) remove, under the lock, after cleaning leftovers."""
    from .pipeline import locked_run, remove_leftovers

    with locked_run(storage, reporter, wait=wait) as run:
        remove_leftovers(storage, run)
        result = plan(storage, keep=keep, deltapack_versions=deltapack_versions)
        if not dry_run:
            run.step(f"pruning the trees of {', '.join(map(str, result.remove)) or 'no version'}")
            prune_locked(storage, result, run)
    return result


# --------------------------------------------------------------------------- sizes


@dataclass
class _Inode:
    nlink: int
    size: int  # bytes on disk (st_blocks * 512)
    links: dict[Path, int] = field(default_factory=dict)  # links seen per walked root


def inodes(roots: Iterable[Path]) -> dict[tuple[int, int], _Inode]:
    """Every inode below ``roots`` with its links counted per root (directories: one)."""
    found: dict[tuple[int, int], _Inode] = {}
    for root in roots:
        for st in _lstat_all(root):
            key = (st.st_dev, st.st_ino)
            node = found.get(key)
            if node is None:
                nlink = 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink
                node = found[key] = _Inode(nlink, st.st_blocks * 512)
            node.links[root] = node.links.get(root, 0) + 1
    return found


def freed_bytes(roots: list[Path]) -> int:
    """Bytes removing all of ``roots`` frees: inodes with no link outside them."""
    return sum(n.size for n in inodes(roots).values() if sum(n.links.values()) >= n.nlink)


def _lstat_all(root: Path) -> Iterator[os.stat_result]:
    if not os.path.lexists(root):
        return
    top = os.lstat(root)
    yield top
    if not stat.S_ISDIR(top.st_mode):
        return  # a file (retire removes packs and notes as well as directories)
    stack = [os.fspath(root)]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                yield st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
