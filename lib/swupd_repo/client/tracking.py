"""Which bundles a target has: the tracking files in ``usr/share/clear/bundles`` (format3 §7.3).

Every bundle ships the empty file ``/usr/share/clear/bundles/<name>`` as part of its content,
so the file arrives when the bundle's content is installed and goes when it is removed; the
client never keeps a separate list. A target without tracking files (every image made before
bundles, and the vectors) runs os-core alone.

One deliberate difference from c42f8a3a: os-core is always in the set. That client reads only
the files, so a root whose os-core does not ship its own tracking file stops tracking os-core
as soon as another bundle is added, and its updates then skip os-core; here it never does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ClientError
from ..swupd.manifest import valid_bundle_name
from ..swupd.names import CORE, tracking_path
from ..swupd.names import TRACKING_DIR as BUNDLES_DIR

__all__ = ["BUNDLES_DIR", "CORE", "installed_bundles", "tracked_bundles", "tracking_path",
           "write_tracking_file"]


def tracked_bundles(root: Path) -> list[str]:
    """The names of the regular files in ``root/usr/share/clear/bundles`` (a link there, or
    to there, is not the target's own), sorted."""
    directory = root / BUNDLES_DIR
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return []
        items = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ClientError(f"cannot read the installed bundles in {directory}: "
                          f"{exc.strerror}") from None
    return sorted(i.name for i in items
                  if i.is_file(follow_symlinks=False) and valid_bundle_name(i.name))


def installed_bundles(root: Path) -> list[str]:
    """os-core, then every other tracked bundle in name order."""
    return [CORE, *(n for n in tracked_bundles(root) if n != CORE)]


def write_tracking_file(root: Path, name: str) -> Path:
    """Create the empty tracking file of ``name`` (mode 0644, root's), and its directory if
    missing; for a repository whose bundle does not ship one, so the set is still kept."""
    from .targetpath import target_path

    path = target_path(root, tracking_path(name))
    parent = root
    for part in BUNDLES_DIR.split("/"):
        parent = parent / part
        if not parent.is_dir():
            parent.mkdir(mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    return path
