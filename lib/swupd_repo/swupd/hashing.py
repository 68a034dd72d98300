"""The swupd file hash (format3 §3): HMAC-SHA256 keyed by the stat and xattr blob.

``hash = HMAC(key=hex(HMAC(key=le64[mode,uid,gid,rdev,size], msg=xattr_blob)), msg=data)``
where data is the file content, the symlink target, or the *manifest path* for a directory.
Pure functions take the values; :func:`hash_path` is the thin I/O edge that reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from collections.abc import Iterable, Mapping

ZERO_HASH = "0" * 64
#: Read size for streaming file data through a hash (bounded memory for any file size).
CHUNK = 1 << 20


def xattr_blob(xattrs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> bytes:
    """Names sorted bytewise, each + NUL; then values in that order, NUL-terminated unless
    empty or already ending in NUL (§3, the server's ``get_xattr_blob``)."""
    if isinstance(xattrs, Mapping) and not xattrs:
        return b""  # most files: no sort, no joins
    items = sorted(xattrs.items() if isinstance(xattrs, Mapping) else xattrs)
    names = b"".join(name + b"\0" for name, _ in items)
    values = b"".join(v if not v or v.endswith(b"\0") else v + b"\0" for _, v in items)
    return names + values


def hash_key(mode: int, uid: int, gid: int, rdev: int, size: int, blob: bytes = b"") -> bytes:
    """The 64 hex ASCII bytes used as the outer HMAC key.

    Symlinks must already have mode 0 and directories size 0 (see :func:`stat_fields`).
    """
    keyblob = struct.pack("<QQQQQ", mode, uid, gid, rdev, size)
    return hmac.new(keyblob, blob, hashlib.sha256).hexdigest().encode("ascii")


def stat_fields(mode: int, uid: int, gid: int, rdev: int, size: int) -> tuple[int, ...]:
    """Apply the format's stat rules: symlink mode 0, directory size 0."""
    if stat.S_ISLNK(mode):
        mode = 0
    elif stat.S_ISDIR(mode):
        size = 0
    return (mode, uid, gid, rdev, size)


def object_key(mode: int, uid: int, gid: int, rdev: int, size: int,
               xattrs: Mapping[bytes, bytes]) -> bytes:
    """The outer HMAC key of an object, from its raw stat fields and xattrs; the data is then
    fed to ``hmac.new(key, ..., sha256)`` (streamed by callers that read files)."""
    return hash_key(*stat_fields(mode, uid, gid, rdev, size), xattr_blob(xattrs))


def hash_bytes(mode: int, uid: int, gid: int, rdev: int, size: int,
               xattrs: Mapping[bytes, bytes], data: bytes) -> str:
    """The hash of an object whose data is in memory (symlink target, directory path)."""
    return hmac.new(object_key(mode, uid, gid, rdev, size, xattrs), data,
                    hashlib.sha256).hexdigest()


def read_xattrs(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    """All xattrs of ``path`` itself (not a symlink's target), as the server lists them.

    Any failure gives an empty mapping, which is what the server's blob does.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {n.encode("utf-8", "surrogateescape"):
                os.getxattr(path, n, follow_symlinks=False) for n in names}
    except OSError:
        return {}


def hash_path(path: str | os.PathLike[str], manifest_path: str,
              st: os.stat_result | None = None,
              xattrs: Mapping[bytes, bytes] | None = None) -> str:
    """Hash the object at ``path`` on disk as swupd does; ``manifest_path`` is e.g. ``/usr/bin``.

    File data is streamed, so memory stays bounded for any file size.
    """
    st = st or os.lstat(path)
    if xattrs is None:
        xattrs = read_xattrs(path)
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = os.readlink(os.fsencode(path))
        return hash_bytes(mode, st.st_uid, st.st_gid, st.st_rdev, len(target), xattrs, target)
    if stat.S_ISDIR(mode):
        return hash_bytes(mode, st.st_uid, st.st_gid, st.st_rdev, 0, xattrs,
                          manifest_path.encode("utf-8", "surrogateescape"))
    key = object_key(mode, st.st_uid, st.st_gid, st.st_rdev, st.st_size, xattrs)
    mac = hmac.new(key, b"", hashlib.sha256)
    if stat.S_ISREG(mode):
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                mac.update(chunk)
    # devices, fifos, sockets: hashed as files with no data (§9.3)
    return mac.hexdigest()
