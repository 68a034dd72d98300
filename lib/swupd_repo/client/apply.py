"""Putting verified staged objects into the target root, and removing deleted paths.

Parents before children (the list is sorted by path). A file or link is copied to
``.update.<name>`` beside its target and renamed over it, so a reader never sees half a file;
a directory that exists keeps its contents and only takes the new owner, mode and xattrs.
Deletions are recursive (format3 §7.4 step 7) and never follow a symlink out of the root.

The client's own state directory, when it lies in the root, is not the repository's to
change: entries at or below it are skipped (a hostile ``/var/lib/swupd/version -> /etc/x``
would otherwise be written through), deletions that would remove it are skipped, and an entry
that turns one of its parents into a link or file (an image with ``/var/lib -> /data/lib``)
is placed last, once every staged object it would take along has been used.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ClientError
from ..swupd.manifest import Entry
from .archive import copy_metadata, copy_object, needs_root, remove_any
from .targetpath import target_path, validate


def place(root: Path, entry: Entry, staged: Path) -> None:
    """Make ``root/entry.path`` the staged object (type, data, owner, mode, xattrs)."""
    try:
        _place(root, entry, staged)
    except PermissionError as exc:
        raise needs_root(f"cannot install {entry.path} into {root}", exc) from None


def _place(root: Path, entry: Entry, staged: Path) -> None:
    dest = target_path(root, entry.path)
    if not dest.parent.is_dir():
        raise ClientError(f"cannot install {entry.path}: its parent directory is missing in "
                          f"{root} (the manifest lacks it, or the target was changed)")
    staged_st = os.lstat(staged)
    try:
        dest_st: os.stat_result | None = os.lstat(dest)
    except FileNotFoundError:
        dest_st = None
    if stat.S_ISDIR(staged_st.st_mode):
        if dest_st is not None and stat.S_ISDIR(dest_st.st_mode):
            copy_metadata(staged, dest, staged_st)
            return
        remove_any(dest)
        copy_object(staged, dest)
        return
    tmp = dest.with_name(f".update.{dest.name}")
    remove_any(tmp)
    copy_object(staged, tmp)
    if dest_st is not None and stat.S_ISDIR(dest_st.st_mode):
        remove_any(dest)  # a directory became a file or link: rename cannot replace it
    os.rename(tmp, dest)


def delete(root: Path, entry: Entry) -> bool:
    """Remove ``root/entry.path`` and everything under it; False if there was nothing."""
    try:
        dest = target_path(root, entry.path)
    except ClientError:
        return False  # its parent is now a link or file: the old path is already gone
    if not os.path.lexists(dest):
        return False
    remove_any(dest)
    return True


def state_relation(path: str, state: tuple[str, ...] | None) -> str:
    """Where manifest ``path`` lies relative to the state directory (components below the
    root): ``"inside"`` (it or below it), ``"above"`` (one of its parents) or ``""``."""
    if state is None:
        return ""
    parts = validate(path)
    if parts[:len(state)] == state:
        return "inside"
    if state[:len(parts)] == parts:
        return "above"
    return ""


def apply_entries(root: Path, entries: Iterable[Entry], staged_for: Callable[[Entry], Path],
                  on_done: Callable[[], None] | None = None, *,
                  state: tuple[str, ...] | None = None,
                  warn: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Install live entries parents first, then delete deleted ones children first.

    ``state`` is the client's state directory as components below ``root`` (None when it is
    elsewhere); ``warn`` hears about the entries skipped because of it.
    Returns (installed, deleted).
    """
    ordered = sorted(entries, key=lambda e: e.path)
    installed = deleted = 0
    last: list[Entry] = []
    skipped: list[str] = []
    for entry in ordered:
        if entry.deleted:
            continue
        where = state_relation(entry.path, state)
        if where == "inside":
            skipped.append(entry.path)
            continue
        if where == "above" and entry.type != "D":
            last.append(entry)
            continue
        place(root, entry, staged_for(entry))
        installed += 1
        if on_done:
            on_done()
    for entry in last:
        place(root, entry, staged_for(entry))
        installed += 1
        if on_done:
            on_done()
    for entry in reversed(ordered):
        if not entry.deleted:
            continue
        if state_relation(entry.path, state):
            skipped.append(entry.path)
        elif delete(root, entry):
            deleted += 1
    if skipped and warn:
        warn(f"left {_shown(skipped)} alone: the client's state directory "
             f"{root.joinpath(*state or ())} is not the repository's to change")
    return installed, deleted


def remove_entries(root: Path, entries: Iterable[Entry], *,
                   state: tuple[str, ...] | None = None,
                   warn: Callable[[str], None] | None = None) -> int:
    """Remove exactly these paths from ``root`` (``bundle-remove``), children first: files and
    links are unlinked, a directory only if it is empty by then. A directory that still holds
    something (another bundle's file, the user's) stays, and ``warn`` hears of it; the
    client's state directory (``state``, as in :func:`apply_entries`) is never touched.
    Returns the number of objects removed.
    """
    removed = 0
    kept: list[str] = []
    for entry in sorted(entries, key=lambda e: e.path, reverse=True):
        if state_relation(entry.path, state):
            kept.append(entry.path)
            continue
        try:
            dest = target_path(root, entry.path)
            st = os.lstat(dest)
        except (ClientError, FileNotFoundError):
            continue  # gone already (or its parent is now a link: not this bundle's)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(dest)
            else:
                os.unlink(dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                if isinstance(exc, PermissionError):
                    raise needs_root(f"cannot remove {entry.path} from {root}", exc) from None
                raise ClientError(f"cannot remove {entry.path} from {root}: "
                                  f"{exc.strerror}") from None
            kept.append(entry.path)
            continue
        removed += 1
    if kept and warn:
        warn(f"left {_shown(kept)} in place: not empty, or the client's state directory")
    return removed


def _shown(paths: list[str]) -> str:
    """The first three of ``paths``, and how many more, for a one-line warning."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
