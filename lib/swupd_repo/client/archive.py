"""Lay down one tar member as a real object with the metadata swupd hashes (format3 §4, §5.1).

The client must reproduce mode, numeric owner and xattrs exactly, or the hash it checks will
not match. Python's :mod:`tarfile` parses pax headers but applies no xattrs, so this module
does it: ``SCHILY.xattr.<name>`` (raw value; GNU tar and bsdtar) or, failing that,
``LIBARCHIVE.xattr.<urlencoded name>`` (base64; bsdtar only). Owners are always numeric,
because the hash is over numbers and the device's passwd may differ from the build host's.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import hmac
import lzma
import os
import shutil
import stat
import tarfile
import urllib.parse
import zlib
from pathlib import Path
from typing import IO

from ..errors import ClientError
from ..swupd.hashing import CHUNK, hash_bytes, object_key

#: What reading a damaged archive can raise (tar structure, truncation, each decompressor).
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error)

#: Copy buffer for member data: small, because tarfile's stream reader keeps a read's worth
#: of decompressed blocks in a list and joins them (a 1 MiB read costs several MiB at peak).
COPY_CHUNK = 1 << 16

_SCHILY = "SCHILY.xattr."
_LIBARCHIVE = "LIBARCHIVE.xattr."


def open_tar(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A forward-only tar reader over ``fileobj`` in any compression swupd uses.

    Like ``tar -xf`` it sniffs xz, gzip, bzip2 or none, and reads *concatenated* compressed
    streams (packs may be written as several xz streams; ``tarfile``'s own ``r|*`` stops
    after the first one).
    """
    head = fileobj.read(6)
    fileobj.seek(-len(head), os.SEEK_CUR)
    stream: IO[bytes]
    if head.startswith(b"\xfd7zXZ\x00"):
        stream = lzma.LZMAFile(fileobj)  # noqa: SIM115  (lives as long as the TarFile)
    elif head.startswith(b"\x1f\x8b"):
        stream = gzip.GzipFile(fileobj=fileobj)
    elif head.startswith(b"BZh"):
        stream = bz2.BZ2File(fileobj)
    else:
        stream = fileobj
    return tarfile.open(fileobj=stream, mode="r|")


def needs_root(what: str, exc: OSError) -> ClientError:
    """The error for EPERM/EACCES while laying down objects: not a damaged archive, but a
    client run without the rights to set owners, device nodes or security xattrs (or on a
    target it may not write)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return ClientError(f"{what}: {exc.strerror}{where}: the client needs root "
                       "(owners/security xattrs)",
                       hint="run it as root, on a writable target (not read-only or immutable)")


def member_xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    """The xattrs recorded for ``member``, as raw bytes (names and values)."""
    found: dict[bytes, bytes] = {}
    fallback: dict[bytes, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith(_SCHILY):
            name = key[len(_SCHILY):].encode("utf-8", "surrogateescape")
            # tarfile decoded the value as UTF-8, falling back to surrogateescape: undo that.
            found[name] = value.encode("utf-8", "surrogateescape")
        elif key.startswith(_LIBARCHIVE):
            name = urllib.parse.unquote_to_bytes(key[len(_LIBARCHIVE):])
            raw = value.encode("ascii", "surrogateescape")
            fallback[name] = base64.b64decode(raw + b"=" * (-len(raw) % 4))
    return found or fallback


def strip_dot(name: str) -> str:
    """Member names as the client compares them: no leading ``./``, no trailing ``/``."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def member_hash(tar: tarfile.TarFile, member: tarfile.TarInfo, manifest_path: str) -> str:
    """The swupd hash of ``member`` as it would be once extracted, computed from the archive
    alone (data streamed), so a repository can be checked without writing anything."""
    xattrs = member_xattrs(member)
    perm = stat.S_IMODE(member.mode)
    if member.issym():
        target = member.linkname.encode("utf-8", "surrogateescape")
        return hash_bytes(stat.S_IFLNK, member.uid, member.gid, 0, len(target), xattrs, target)
    if member.isdir():
        return hash_bytes(stat.S_IFDIR | perm, member.uid, member.gid, 0, 0, xattrs,
                          manifest_path.encode("utf-8", "surrogateescape"))
    if member.isreg():
        kind, rdev, size = stat.S_IFREG, 0, member.size
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        rdev, size = os.makedev(member.devmajor, member.devminor), 0
    else:
        raise ValueError(f"unsupported member type {member.type!r} for {member.name!r}")
    mac = hmac.new(object_key(kind | perm, member.uid, member.gid, rdev, size, xattrs), b"",
                   hashlib.sha256)
    if member.isreg():
        src = tar.extractfile(member)
        assert src is not None
        while chunk := src.read(CHUNK):
            mac.update(chunk)
    return mac.hexdigest()


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                 done: dict[str, Path] | None = None) -> None:
    """Create ``dest`` (which must not exist) from ``member``: data, owner, mode, xattrs, mtime.

    ``done`` maps member names already written to their destinations, for hard-link members.
    Order matters: chown clears set-id bits and ``security.capability``, so it comes first,
    then chmod, then xattrs.
    """
    if member.isreg():
        src = tar.extractfile(member)
        assert src is not None
        write_file(src, dest)
    elif member.issym():
        os.symlink(member.linkname, dest)
    elif member.isdir():
        dest.mkdir()
    elif member.islnk():
        target = (done or {}).get(strip_dot(member.linkname))
        if target is None:
            raise ValueError(f"hard link to {member.linkname!r}, which is not in the archive")
        shutil.copyfile(target, dest, follow_symlinks=False)
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(dest, kind | 0o600, os.makedev(member.devmajor, member.devminor))
    else:
        raise ValueError(f"unsupported member type {member.type!r} for {member.name!r}")
    os.lchown(dest, member.uid, member.gid)
    if not member.issym():
        os.chmod(dest, stat.S_IMODE(member.mode))
    for name, value in sorted(member_xattrs(member).items()):
        os.setxattr(dest, name, value, follow_symlinks=False)
    os.utime(dest, (member.mtime, member.mtime), follow_symlinks=False)


def write_file(src: IO[bytes], dest: Path) -> None:
    """Stream ``src`` into a new file ``dest`` (mode 0600; it must not exist)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, COPY_CHUNK)


def remove_any(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link, tree); nothing if absent. Never follows links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def copy_object(src: Path, dest: Path) -> None:
    """Copy one object (file, symlink, empty dir, device) with owner, mode and xattrs.

    Used to place a verified staged object beside its target before the rename; directories
    are copied alone, without contents.
    """
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        with open(src, "rb") as f:
            write_file(f, dest)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    elif stat.S_ISDIR(st.st_mode):
        dest.mkdir()
    else:
        os.mknod(dest, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
    copy_metadata(src, dest, st)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_metadata(src: Path, dest: Path, st: os.stat_result | None = None) -> None:
    """Give ``dest`` the owner, mode and exactly the xattrs of ``src`` (chown, chmod, xattrs)."""
    st = st or os.lstat(src)
    os.lchown(dest, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    wanted = {n: os.getxattr(src, n, follow_symlinks=False)
              for n in os.listxattr(src, follow_symlinks=False)}
    for name in os.listxattr(dest, follow_symlinks=False):
        if name not in wanted:
            os.removexattr(dest, name, follow_symlinks=False)
    for name, value in sorted(wanted.items()):
        os.setxattr(dest, name, value, follow_symlinks=False)
