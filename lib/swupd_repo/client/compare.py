"""Comparing two trees object by object: what ``check`` uses to prove an update reproduces the
image exactly (type, mode, owner, xattrs, content, link target, device numbers).

Hashes would hide which property differs; this names it. What the format leaves to the device
(config under ``/etc``, state paths) is skipped by a predicate built from the manifest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..swupd.hashing import read_xattrs
from ..swupd.heuristics import is_state, refused_name
from ..swupd.manifest import Entry


def walk(root: Path) -> dict[str, os.stat_result]:
    """Every object under ``root`` by manifest path (``/usr/bin``), never following links."""
    found: dict[str, os.stat_result] = {}
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for item in it:
                path = f"{prefix}/{item.name}"
                st = item.stat(follow_symlinks=False)
                found[path] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((Path(item.path), path))
    return found


def skip_for(entries: Mapping[str, Entry], ignore: Iterable[str] = ()) -> Callable[[str], bool]:
    """Paths the format does not promise to reproduce: anything under ``/etc/``, config and
    state entries and whatever lies below them, state paths the manifest does not list, names
    the server refuses (§9.5), plus the ``ignore`` subtrees (e.g. the client's state dir)."""
    prefixes = tuple(p.rstrip("/") for p in ignore)
    unmanaged = {p for p, e in entries.items() if e.modifier in ("s", "C")}

    def skip(path: str) -> bool:
        if path.startswith("/etc/") or any(path == p or path.startswith(p + "/")
                                           for p in prefixes):
            return True
        if path not in entries and is_state(path):
            return True
        if any(refused_name(n) for n in path.split("/")[1:]):
            return True
        probe = path
        while probe:
            if probe in unmanaged:
                return True
            probe = probe.rpartition("/")[0]
        return False

    return skip


def same_content(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    """Whether two files hold the same bytes, read every time.

    Not :func:`filecmp.cmp`: it caches results by (size, mtime), so a file rewritten within
    the same mtime would compare equal to what it held before.
    """
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            da, db = fa.read(chunk), fb.read(chunk)
            if da != db:
                return False
            if not da:
                return True


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "char device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "other"


def compare_objects(path: str, a: Path, sa: os.stat_result, b: Path,
                    sb: os.stat_result) -> list[str]:
    """How the object at ``a`` differs from ``b`` (empty when identical)."""
    if _kind(sa.st_mode) != _kind(sb.st_mode):
        return [f"{path}: is a {_kind(sa.st_mode)}, expected a {_kind(sb.st_mode)}"]
    diffs = []
    if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        diffs.append(f"{path}: mode {stat.S_IMODE(sa.st_mode):04o}, expected "
                     f"{stat.S_IMODE(sb.st_mode):04o}")
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        diffs.append(f"{path}: owner {sa.st_uid}:{sa.st_gid}, expected {sb.st_uid}:{sb.st_gid}")
    xa, xb = read_xattrs(a), read_xattrs(b)
    if xa != xb:
        diffs.append(f"{path}: xattrs {sorted(xa)}, expected {sorted(xb)}"
                     if set(xa) != set(xb) else f"{path}: xattr values differ")
    if stat.S_ISLNK(sa.st_mode):
        ta, tb = os.readlink(a), os.readlink(b)
        if ta != tb:
            diffs.append(f"{path}: links to {ta!r}, expected {tb!r}")
    elif stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size or not same_content(a, b):
            diffs.append(f"{path}: content differs ({sa.st_size} bytes, expected {sb.st_size})")
    elif (stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode)) and sa.st_rdev != sb.st_rdev:
        diffs.append(f"{path}: device {sa.st_rdev:#x}, expected {sb.st_rdev:#x}")
    return diffs


def compare_trees(actual: Path, expected: Path,
                  skip: Callable[[str], bool] = lambda _p: False) -> list[str]:
    """Every difference between the tree at ``actual`` and the one at ``expected``, sorted."""
    got, want = walk(actual), walk(expected)
    diffs: list[str] = []
    for path in sorted(set(got) | set(want)):
        if skip(path):
            continue
        if path not in got:
            diffs.append(f"{path}: missing (expected a {_kind(want[path].st_mode)})")
        elif path not in want:
            diffs.append(f"{path}: unexpected {_kind(got[path].st_mode)}")
        else:
            diffs.extend(compare_objects(path, actual / path[1:], got[path],
                                         expected / path[1:], want[path]))
    return diffs
