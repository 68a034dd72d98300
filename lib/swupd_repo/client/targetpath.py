"""Manifest paths inside a target root, refusing anything that could land outside it.

A manifest is data from the network. A path with ``..`` or a parent that is a symlink on the
target (``/lib -> usr/lib``, or a link planted by an earlier malicious entry) must never make
the client write or delete outside ``root``, so every component below the root is checked
with ``lstat`` before use.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ClientError


def validate(path: str, source: str = "manifest") -> tuple[str, ...]:
    """The components of an absolute manifest path; ClientError if it is not a clean one."""
    parts = path.split("/")
    if (not path.startswith("/") or len(parts) < 2 or "\0" in path
            or any(p in ("", ".", "..") for p in parts[1:])):
        raise ClientError(f"{source}: refusing unsafe path {path!r}")
    return tuple(parts[1:])


def target_path(root: Path, path: str, source: str = "manifest") -> Path:
    """``root/path`` after checking that no parent below ``root`` is a symlink or non-directory.

    Missing parents are fine (the caller creates them from earlier entries or reports them).
    """
    parts = validate(path, source)
    current = root
    for name in parts[:-1]:
        current = current / name
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return root.joinpath(*parts)
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise ClientError(f"{source}: cannot use {path!r}: {current} is {kind}")
    return root.joinpath(*parts)
