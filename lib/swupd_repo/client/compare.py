"""Comparing two trees object by object: what ``check`` uses to prove an update reproduces the
image exactly (type, mode, owner, xattrs, content, link target, device numbers).

Hashes would hide which property differs; this names it. What the format leaves to the device
(config under ``/etc``, state paths) is skipped by a predicate built from the manifest. The
expected tree may be a stored one: its mode, owner, device numbers and xattrs then come from
its metadata record (:mod:`swupd_repo.treemeta`), its content and link targets from disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

from ..swupd.heuristics import is_state, refused_name
from ..swupd.manifest import Entry
from ..treemeta import Meta, TreeMeta, from_disk


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


def compare_objects(path: str, a: Path, sa: os.stat_result, b: Path, sb: os.stat_result,
                    mb: Meta | None = None) -> list[str]:
    """How the object at ``a`` differs from ``b`` (empty when identical); ``mb`` is ``b``'s
    metadata from its tree's record (None: from ``b`` itself)."""
    ma = from_disk(a, sa)
    mb = mb if mb is not None else from_disk(b, sb)
    if _kind(ma.mode) != _kind(mb.mode):
        return [f"{path}: is a {_kind(ma.mode)}, expected a {_kind(mb.mode)}"]
    diffs = []
    if not stat.S_ISLNK(ma.mode) and stat.S_IMODE(ma.mode) != stat.S_IMODE(mb.mode):
        diffs.append(f"{path}: mode {stat.S_IMODE(ma.mode):04o}, expected "
                     f"{stat.S_IMODE(mb.mode):04o}")
    if (ma.uid, ma.gid) != (mb.uid, mb.gid):
        diffs.append(f"{path}: owner {ma.uid}:{ma.gid}, expected {mb.uid}:{mb.gid}")
    xa, xb = ma.xattrs, mb.xattrs
    if xa != xb:
        diffs.append(f"{path}: xattrs {sorted(xa)}, expected {sorted(xb)}"
                     if set(xa) != set(xb) else f"{path}: xattr values differ")
    if stat.S_ISLNK(ma.mode):
        ta, tb = os.readlink(a), os.readlink(b)
        if ta != tb:
            diffs.append(f"{path}: links to {ta!r}, expected {tb!r}")
    elif stat.S_ISREG(ma.mode):
        if sa.st_size != sb.st_size or not same_content(a, b):
            diffs.append(f"{path}: content differs ({sa.st_size} bytes, expected {sb.st_size})")
    elif (stat.S_ISCHR(ma.mode) or stat.S_ISBLK(ma.mode)) and ma.rdev != mb.rdev:
        diffs.append(f"{path}: device {ma.rdev:#x}, expected {mb.rdev:#x}")
    return diffs


def compare_trees(actual: Path, expected: Path,
                  skip: Callable[[str], bool] = lambda _p: False,
                  expected_meta: TreeMeta | None = None,
                  not_expected: Collection[str] = ()) -> list[str]:
    """Every difference between the tree at ``actual`` and the one at ``expected``, sorted;
    ``expected_meta`` is the expected tree's record when it is a stored tree with one.
    ``not_expected`` are paths of the expected tree that ``actual`` must not have (the
    content of bundles a device did not install: the stored tree is the whole image)."""
    got, want = walk(actual), walk(expected)
    for path in not_expected:
        want.pop(path, None)
    diffs: list[str] = []
    for path in sorted(set(got) | set(want)):
        if skip(path):
            continue
        if path not in got:
            kind = (expected_meta.get(path).mode if expected_meta is not None
                    else want[path].st_mode)
            diffs.append(f"{path}: missing (expected a {_kind(kind)})")
        elif path not in want:
            diffs.append(f"{path}: unexpected {_kind(got[path].st_mode)}")
        else:
            diffs.extend(compare_objects(
                path, actual / path[1:], got[path], expected / path[1:], want[path],
                expected_meta.get(path) if expected_meta is not None else None))
    return diffs
