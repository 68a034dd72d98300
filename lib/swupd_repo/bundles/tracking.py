"""Bundle tracking files, and storing the split of a freshly extracted tree.

The format-3 client (c42f8a3a) knows which bundles a device has from the regular files in
``/usr/share/clear/bundles/`` (format3 §7.3): every bundle ships the empty file
``/usr/share/clear/bundles/<name>``, and os-core ships ``/usr/share/clear/bundles/os-core``
(without it, a device with extra bundles stops tracking os-core). Images do not contain them,
so when bundles are defined they are added to the stored tree and to its metadata record
(root:root, directories 0755, files 0644; directories that are missing are made), before the
tree is resolved into an :class:`Assignment` and that is written beside the tree.

Without bundle definitions nothing is added and no assignment file is written: the tree stays
the image's rootfs exactly, as every version before bundles existed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import BundleError
from ..progress import Reporter
from ..swupd.names import CORE, TRACKING_DIR, tracking_path
from ..treemeta import Meta, RecordWriter, read_record, record_path
from .assignment import Assignment, write_assignment
from .definitions import BundleDef
from .resolve import resolve

_DIR = Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {})
_FILE = Meta(stat.S_IFREG | 0o644, 0, 0, 0, {})


def add_tracking_files(tree: Path, names: Iterable[str]) -> list[str]:
    """Add the empty tracking files of ``names`` (and missing parents) to ``tree`` and its
    record; returns the paths added. Files the image already has are left as they are."""
    wanted: list[tuple[str, Meta]] = []
    parts = TRACKING_DIR.split("/")
    for depth in range(1, len(parts) + 1):
        wanted.append(("/" + "/".join(parts[:depth]), _DIR))
    wanted.extend((tracking_path(n), _FILE) for n in names)
    added: list[tuple[str, Meta]] = []
    for path, meta in wanted:
        disk = tree / path[1:]
        if os.path.lexists(disk):
            want_dir = stat.S_ISDIR(meta.mode)
            if disk.is_symlink() or not (disk.is_dir() if want_dir else disk.is_file()):
                kind = "a directory" if want_dir else "a regular file"
                raise BundleError(f"{disk} must be {kind}: the swupd client tracks installed "
                                  f"bundles in /{TRACKING_DIR}",
                                  hint="remove it from the image, or define no bundles")
            continue
        added.append((path, meta))
    if not added:
        return []
    record = record_path(tree)
    entries = read_record(record) if record.exists() else None
    for path, meta in added:
        disk = tree / path[1:]
        if stat.S_ISDIR(meta.mode):
            disk.mkdir(mode=0o755)
            os.chmod(disk, 0o755)
        else:
            disk.touch(mode=0o644, exist_ok=False)
            os.chmod(disk, 0o644)
    if entries is not None:
        with RecordWriter(tree) as writer:
            for path, meta in [*entries.items(), *added]:
                writer.add(path, meta)
            writer.install()
    return [path for path, _ in added]


def store_split(tree: Path, bundles: Iterable[BundleDef], reporter: Reporter) -> Assignment:
    """Tracking files, resolution and ``image/<V>/os-core.bundles`` for a stored tree.

    No bundles: no file (an old one is removed) and the tree is not touched.
    """
    bundles = list(bundles)
    if not bundles:
        write_assignment(tree, Assignment())
        return Assignment()
    reporter.step(f"resolving the bundles {', '.join(b.name for b in bundles)}")
    names = [CORE, *(b.name for b in bundles)]
    add_tracking_files(tree, names)
    assignment = resolve(tree, bundles, tracking={tracking_path(n): n for n in names},
                         reporter=reporter)
    write_assignment(tree, assignment)
    for name in sorted(assignment.bundles):
        reporter.info(f"bundle {name}: {len(assignment.bundles[name])} paths")
    return assignment
