"""Putting verified staged objects into the target root, and removing deleted paths.

Parents before children (the list is sorted by path). A file or link is copied to
``.update.<name>`` beside its target and renamed over it, so a reader never sees half a file;
a directory that exists keeps its contents and only takes the new owner, mode and xattrs.
Deletions are recursive (format3 §7.4 step 7) and never follow a symlink out of the root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ClientError
from ..swupd.manifest import Entry
from .archive import copy_metadata, copy_object, needs_root, remove_any
from .targetpath import target_path


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


def apply_entries(root: Path, entries: Iterable[Entry], staged_for: Callable[[Entry], Path],
                  on_done: Callable[[], None] | None = None) -> tuple[int, int]:
    """Install live entries parents first, then delete deleted ones children first.

    Returns (installed, deleted).
    """
    ordered = sorted(entries, key=lambda e: e.path)
    installed = deleted = 0
    for entry in ordered:
        if entry.deleted:
            continue
        place(root, entry, staged_for(entry))
        installed += 1
        if on_done:
            on_done()
    for entry in reversed(ordered):
        if entry.deleted and delete(root, entry):
            deleted += 1
    return installed, deleted
