"""The command line as users run it: a separate process, no stdin, output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def swupd_repo(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swupd_repo.cli", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False, timeout=600)


def publish(storage: Path, image: tuple[Path, Path], *extra: str) -> subprocess.CompletedProcess:
    """``swupd-repo publish`` of ``image`` (dsk, layout) into ``storage``."""
    dsk, layout = image
    return swupd_repo("publish", "--dsk", dsk, "--layout", layout, "--storage", storage, *extra)


def build(storage: Path, tree: Path, version: int, *extra: str) -> None:
    """``swupd-repo build`` of ``tree`` as ``version`` (the tree is copied into the storage,
    with owners and xattrs, as a stored tree without a metadata record)."""
    from conftest import copy_tree
    from swupd_repo.storage import Storage

    copy_tree(tree, Storage(storage).os_core(version))
    done = swupd_repo("build", "--storage", storage, "--version", str(version), *extra)
    assert done.returncode == 0, done.stderr
