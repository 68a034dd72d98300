"""Share the unchanged files of a new stored tree with the previous version's tree.

Every build stores a full ``image/<V>/os-core``; most of its files are byte-identical to the
previous version's. Once the new tree and its metadata record are in place, each regular file
whose content, size, mtime and on-disk mode equal the previous tree's file at the same path
is replaced by a hard link to the previous version's inode, so ``image/`` grows by the changed
files only.

Why hard links are safe here: a stored tree's owners, full modes, device numbers and xattrs
live in its own record (:mod:`.treemeta`), not on the shared inode, so two versions whose
metadata differ for the same content still read their own. What the inode carries (content,
size, mtime, the plain disk mode) is compared before linking, and the shared inode is made
read-only on disk (write bits cleared; readers take the mode from the record), so no process
of the build user can open it for writing by mistake. Nothing of ours writes into a stored
tree: extraction creates a fresh tree under a temporary name, a forced rebuild sets the old
tree aside and extracts again, the hash cache and ``full`` live beside the tree; removing a
tree (``prune``, a failed run) only drops links.

Each replacement is atomic: link under a temporary name in ``image/<V>/`` (where
:meth:`~.storage.Storage.clean_leftovers` finds a killed run's leftover), then rename over the
file. A tree without a record is never shared (its disk metadata is its metadata).

Content is compared by the trees' proven swupd hashes (:mod:`.swupd.hashcache`: the
extraction hashed every file it wrote) when both files have one under the same key (size,
mode, owner, xattrs): equal hashes mean equal bytes, so most files are decided without
reading either. Otherwise the bytes are compared. A shared path keeps its proven hash (its
bytes and record did not change), re-keyed to the inode it now names, so the build that
follows still reads no file again.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .progress import Reporter
from .storage import Storage, temp_path
from .swupd import hashcache
from .treemeta import Meta
from .treemeta import load as load_meta

#: Errors that mean "this filesystem or kernel will not link these": stop sharing, keep going.
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOSPC)


@dataclass
class DedupStats:
    """What :func:`share_unchanged` did (for the report line, tests and the benchmark)."""

    linked: int = 0  # files now sharing the previous tree's inode
    linked_bytes: int = 0
    already: int = 0  # files that already shared it
    compared: int = 0  # files whose content was read to decide
    by_hash: int = 0  # files decided by their proven hashes, without reading


def stored_trees(storage: Storage) -> list[int]:
    """Versions with a stored ``image/<V>/os-core``, ascending."""
    if not storage.image_dir.is_dir():
        return []
    return sorted(int(p.name) for p in storage.image_dir.iterdir()
                  if p.name.isdigit() and (p / "os-core").is_dir())


def previous_tree(storage: Storage, version: int) -> int | None:
    """The newest stored version below ``version`` (the tree to share with), if any."""
    older = [v for v in stored_trees(storage) if v < version]
    return older[-1] if older else None


def previous_tree_path(storage: Storage, version: int) -> Path | None:
    """``image/<P>/os-core`` of :func:`previous_tree`, if any (what an extraction shares
    with as it writes, see :mod:`.extract`)."""
    previous = previous_tree(storage, version)
    return storage.os_core(previous) if previous is not None else None


def share_with_previous(storage: Storage, version: int, reporter: Reporter) -> DedupStats:
    """:func:`share_unchanged` of ``image/<version>/os-core`` with the previous stored tree."""
    previous = previous_tree(storage, version)
    if previous is None:
        return DedupStats()
    stats = share_unchanged(storage.os_core(version), storage.os_core(previous), reporter)
    reporter.info(f"{stats.linked + stats.already} files ({stats.linked_bytes / 1e6:.1f} MB "
                  f"newly) share storage with version {previous}")
    return stats


def share_unchanged(new: Path, old: Path, reporter: Reporter) -> DedupStats:
    """Hard-link every regular file of ``new`` identical to ``old``'s to ``old``'s inode."""
    stats = DedupStats()
    new_meta, old_meta = load_meta(new), load_meta(old)
    if new_meta is None or old_meta is None:
        reporter.info(f"not sharing files between {old} and {new}: a tree without a metadata "
                      "record keeps its own inodes")
        return stats
    tmp = temp_path(new.parent, "dedup-link")
    new_hashes = hashcache.load(hashcache.cache_path(new))
    old_hashes = hashcache.load(hashcache.cache_path(old))
    for path, meta in new_meta.entries.items():
        if not stat.S_ISREG(meta.mode):
            continue
        other = old_meta.entries.get(path)
        if other is None or not stat.S_ISREG(other.mode):
            continue
        new_file, old_file = new / path[1:], old / path[1:]
        try:
            nst, ost = os.lstat(new_file), os.lstat(old_file)
        except FileNotFoundError:
            continue
        if (nst.st_dev, nst.st_ino) == (ost.st_dev, ost.st_ino):
            stats.already += 1
            continue
        if not _same_inode_data(nst, ost):
            continue
        new_hash = hashcache.proven(new_hashes.get(path), nst, meta)
        old_hash = hashcache.proven(old_hashes.get(path), ost, other)
        same = _same_by_hash(new_hashes.get(path) if new_hash else None,
                             old_hashes.get(path) if old_hash else None)
        if same is None:
            stats.compared += 1
            if not filecmp.cmp(new_file, old_file, shallow=False):
                continue
        elif not same:
            stats.by_hash += 1
            continue
        else:
            stats.by_hash += 1
        try:
            _make_read_only(old_file, ost)
            os.link(old_file, tmp, follow_symlinks=False)
            os.rename(tmp, new_file)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if exc.errno == errno.EMLINK:  # this inode has all the links it may: keep a copy
                continue
            if exc.errno in _CANNOT_LINK:
                reporter.warning(f"cannot share {new_file} with {old_file} ({exc.strerror}); "
                                 "the remaining files keep their own storage")
                break
            raise
        stats.linked += 1
        stats.linked_bytes += nst.st_size
        _rekey(new_hashes, path, new_file, meta, new_hash or _same_key_hash(
            old_hashes.get(path) if old_hash else None, meta, nst))
    if stats.linked:
        hashcache.save_written(hashcache.cache_path(new), new_hashes)
    return stats


def _same_by_hash(new: hashcache.Entry | None, old: hashcache.Entry | None) -> bool | None:
    """Equal bytes by the proven hashes (None: they cannot tell, the bytes must be read)."""
    if new is None or old is None:
        return None
    return hashcache.same_content(new, old)


def _same_key_hash(old: hashcache.Entry | None, meta: Meta, st: os.stat_result) -> str | None:
    """The old file's proven hash, when the new path's record keys it alike (same bytes)."""
    if old is None or not hashcache.keyed_alike(old, meta):
        return None
    return str(old[-1])


def _rekey(entries: dict[str, hashcache.Entry], path: str, file: Path, meta: Meta,
           digest: str | None) -> None:
    """The hash of ``path`` (unchanged bytes and record), keyed to the inode it now names."""
    if digest is None:
        entries.pop(path, None)
        return
    entries[path] = [*hashcache.entry_key(os.lstat(file), meta), digest]


def _same_inode_data(new: os.stat_result, old: os.stat_result) -> bool:
    """What a shared inode carries besides content: it must already be equal.

    A file linked inside its own tree (``st_nlink`` > 1 in the new tree) keeps its inode, so
    the tree's own hard links stay as extracted.
    """
    return (stat.S_ISREG(new.st_mode) and stat.S_ISREG(old.st_mode) and new.st_nlink == 1
            and new.st_dev == old.st_dev and new.st_size == old.st_size
            and new.st_mtime_ns == old.st_mtime_ns
            and stat.S_IMODE(new.st_mode) | 0o222 == stat.S_IMODE(old.st_mode) | 0o222)


def _make_read_only(path: Path, st: os.stat_result) -> None:
    """Clear the write bits of a to-be-shared inode (its real mode is in each record)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o222:
        os.chmod(path, mode & ~0o222, follow_symlinks=False)
