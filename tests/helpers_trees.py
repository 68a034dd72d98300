"""One picture of a directory tree, for "a refused or failed run changed nothing" tests."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path


def snapshot(root: Path, *, times: bool = False) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, owner, size, content digest or link target;
    with ``times`` also the mtime of everything but directories (a run may add and remove
    entries beside them). Without: the markers a run restores are rewritten, same content.

    The storage lock file (``root/.lock``) is left out: taking the lock creates it.
    """
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        if path.name == ".lock" and path.parent == root:
            continue
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        content = ""
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        mtime = st.st_mtime_ns if times and not stat.S_ISDIR(st.st_mode) else None
        found[path.relative_to(root).as_posix()] = (
            kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size, mtime, content)
    return found


def packs_repo(root: Path, vectors: Path, trees: dict[int, Path]) -> Path:
    """``root``: a writable copy of the vectors' www without packs and 20's deltas, plus the
    extracted trees as ``image/<V>/os-core``: what the pack makers start from."""
    import shutil
    import subprocess

    from conftest import copy_tree

    shutil.copytree(vectors / "www", root / "www", symlinks=True)
    subprocess.run(["chmod", "-R", "u+w", str(root / "www")], check=True)
    for version in (10, 20):
        for pack in (root / "www" / str(version)).glob("pack-*"):
            pack.unlink()
        copy_tree(trees[version], root / "image" / str(version) / "os-core")
    shutil.rmtree(root / "www/20/delta")
    return root


def disown(tree: Path, uid: int = 65534) -> Path:
    """Make the disk say nothing true about ``tree``'s metadata: every entry owned by
    ``uid`` and stripped of xattrs (what an unprivileged extraction leaves; the truth is in
    the tree's record)."""
    import subprocess

    subprocess.run(["chown", "-hR", f"{uid}:{uid}", str(tree)], check=True)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            for key in os.listxattr(path, follow_symlinks=False):
                os.removexattr(path, key, follow_symlinks=False)
    return tree


def write_tree(root: Path, files: Mapping[str, str | None]) -> Path:
    """``files`` under ``root``: text files, symlinks (``"-> target"``) and directories
    (None), owned by root, 0755 directories and 0644 files."""
    root.mkdir(parents=True)
    for rel, content in sorted(files.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif content.startswith("-> "):
            p.symlink_to(content[3:])
        else:
            p.write_text(content)
    for p in [root, *root.rglob("*")]:
        os.lchown(p, 0, 0)
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return root
