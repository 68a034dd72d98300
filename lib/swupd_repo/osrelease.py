"""The version a rootfs claims: ``VERSION_ID`` in os-release, read the way the swupd client does.

The client takes ``<root>/usr/lib/os-release``, falling back to ``<root>/etc/os-release``, uses the
first line starting with ``VERSION_ID=``, strips quotes and parses an integer (format3 §7.3).
Version V must ship ``VERSION_ID=V`` or devices never see the update as applied.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

OS_RELEASE_FILES = ("usr/lib/os-release", "etc/os-release")


def parse_version_id(text: str) -> int | None:
    """``VERSION_ID`` of os-release text, or None when absent or not a number."""
    for line in text.splitlines():
        if line.startswith("VERSION_ID="):
            value = line[len("VERSION_ID="):].replace('"', "").replace("'", "").strip()
            match = re.match(r"\d+", value)
            return int(match.group(0)) if match else None
    return None


def read_version_id(root: Path) -> tuple[int | None, Path | None]:
    """(VERSION_ID, file it came from) for a rootfs, following the client's lookup order."""
    for rel in OS_RELEASE_FILES:
        path = root / rel
        if path.is_symlink():
            # /etc/os-release is usually a relative link to ../usr/lib/os-release
            target = Path(path.readlink())
            base = root if target.is_absolute() else path.parent
            path = base / target.relative_to(target.anchor)
        if path.is_file():
            return parse_version_id(path.read_text(errors="replace")), root / rel
    return None, None


def set_version_id(text: str, version: int) -> str:
    """os-release text with ``VERSION_ID`` set to ``version`` (added when missing)."""
    line = f"VERSION_ID={version}"
    if re.search(r"^VERSION_ID=.*$", text, flags=re.M):
        return re.sub(r"^VERSION_ID=.*$", line, text, flags=re.M)
    return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"


def stamp_version_id(root: Path, version: int) -> None:
    """Make a tree say ``VERSION_ID=<version>``: the one implementation, for the image's rootfs
    (the bbclass's post-process command, under pseudo) and for a stored tree (``revert``).

    ``usr/lib/os-release``, which the client reads first, is created when missing (from a
    regular ``etc/os-release``, with the directories it needs: owned by root, mode 0644 and
    0755, as the rootfs hook under pseudo makes them); a regular ``usr/lib/os-release`` and
    ``etc/os-release`` are rewritten in place, which keeps each file's mode (read-only ones
    too), owner, xattrs and hard links; a symlink between them is left as it is.

    A stored tree's metadata is in its record (:mod:`.treemeta`), which must name exactly the
    tree's paths: when ``root`` has one, what this creates is added to it. In place means
    through the inode: give a stored tree only when it is a fresh copy (``revert`` makes one
    with ``cp -a``), never a tree whose inodes other versions share.
    """
    usr_lib, etc = root / OS_RELEASE_FILES[0], root / OS_RELEASE_FILES[1]
    created: list[Path] = []
    if not usr_lib.exists() and not usr_lib.is_symlink():
        base = etc.read_text() if etc.is_file() and not etc.is_symlink() else ""
        created = [d for d in reversed(usr_lib.parents) if d.is_relative_to(root)
                   and d != root and not d.exists()]
        for directory in created:
            directory.mkdir()
            os.chmod(directory, 0o755)
        usr_lib.write_text(set_version_id(base, version))
        os.chmod(usr_lib, 0o644)
        created.append(usr_lib)
    for path in (usr_lib, etc):
        if path.is_file() and not path.is_symlink() and path not in created:
            _rewrite(path, set_version_id(path.read_text(), version))
    if not created:
        return
    from . import treemeta  # here: the client reads os-release and needs none of the storage

    if treemeta.record_path(root).exists():
        treemeta.add_entries(root, {
            "/" + path.relative_to(root).as_posix():
                treemeta.Meta(stat.S_IFDIR | 0o755 if path.is_dir() else stat.S_IFREG | 0o644,
                              0, 0, 0, {})
            for path in created})


def _rewrite(path: Path, text: str) -> None:
    """Write ``text`` through ``path``'s inode, also when its owner's write bit is clear (a
    file a stored tree shared with the previous version is read-only on disk, and ``cp -a``
    copies that mode; under pseudo the kernel still checks the real mode); the mode is put
    back."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_IWUSR:
        path.write_text(text)
        return
    os.chmod(path, mode | stat.S_IWUSR)
    try:
        path.write_text(text)
    finally:
        os.chmod(path, mode)
