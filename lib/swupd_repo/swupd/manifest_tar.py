"""Plain manifests and ``Manifest.<X>.tar`` files as the client downloads them (format3 §1.3).

The plain file and its tar member are both mode 0644, owner root: the MoM ``M`` hash is
computed from the plain file with exactly that stat (§2.8, §9.8), and a client that checks it
(later clients) hashes its extracted copy.
"""

from __future__ import annotations

import lzma
import os
import time
from pathlib import Path

from .fullfiles import END_OF_ARCHIVE, member_headers, padding

MODE = 0o644
#: xz preset of a tar a client downloads (``Manifest.MoM.tar``, ``Manifest.<bundle>.tar``).
PRESET = 6
#: ``Manifest.full.tar`` is never fetched by a client (format3 §1.3): a fast preset (0.1 s
#: instead of 1.3 s for a 16k-entry manifest, 18 % more bytes that no device downloads).
PRESET_UNFETCHED = 0


def write_plain(path: Path, data: bytes, mode: int = MODE) -> None:
    """Write ``data`` to ``path`` with exactly ``mode`` (independent of the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def manifest_tar_bytes(members: list[tuple[str, bytes]], mtime: int | None = None) -> bytes:
    """An xz-compressed tar of ``(name, data)`` members, each 0644 uid/gid 0; the preset is
    :data:`PRESET`, or :data:`PRESET_UNFETCHED` for ``Manifest.full``'s."""
    mtime = int(time.time()) if mtime is None else mtime
    out = bytearray()
    for name, data in members:
        out += member_headers(name.encode(), mode=MODE, uid=0, gid=0, size=len(data),
                              mtime=mtime, typeflag=b"0")
        out += data + padding(len(data))
    out += END_OF_ARCHIVE
    preset = PRESET_UNFETCHED if members and members[0][0] == "Manifest.full" else PRESET
    return lzma.compress(bytes(out), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=preset)


def write_plain_manifest(www_v: Path, name: str, data: bytes,
                         signed: bytes | None = None) -> list[tuple[str, bytes]]:
    """``Manifest.<name>`` (and its ``.signed``); returns the members its tar must hold, so
    the caller can compress the tar elsewhere (xz of a large Manifest.full takes a second)."""
    plain = f"Manifest.{name}"
    write_plain(www_v / plain, data)
    members = [(plain, data)]
    if signed is not None:
        write_plain(www_v / f"{plain}.signed", signed)
        members.append((f"{plain}.signed", signed))
    return members
