"""Fullfiles (format3 §4): ``www/<V>/files/<H>.tar``, one member named ``<H>`` (``<H>/``).

The tar headers are written by hand so every byte of metadata is the one the hash covers:
numeric uid/gid with *empty* uname/gname (tar running as root maps names before ids), the
exact permission bits, an integer mtime, and each xattr as a pax ``SCHILY.xattr.<name>``
record holding the raw value bytes (GNU tar's and the client's format). File data is streamed
through the compressors and hashed again on the way, so a fullfile can never disagree with
the manifest even if the tree changed after the scan.

Compression: ``smallest`` compresses with gzip, xz and bzip2 and keeps the smallest (ties:
gzip, then xz, then bzip2, the server's order), ``xz`` and ``gzip`` use one compressor.
Directories are always gzip, as the server does.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import hmac
import lzma
import os
import stat
import zlib
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO

from ..errors import BuildError
from ..progress import Reporter
from .hashing import CHUNK
from .scan import Record, batch_records
from .workpool import bounded_map

BLOCK = 512
_BATCH_FILES = 64
_BATCH_BYTES = 16 << 20
POLICIES = ("smallest", "xz", "gzip")


# --- tar format (pure) -------------------------------------------------------------------

def pax_record(key: bytes, value: bytes) -> bytes:
    """``"<len> <key>=<value>\\n"`` where len counts the whole record, itself included."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def ustar_header(name: bytes, *, mode: int, uid: int, gid: int, size: int, mtime: int,
                 typeflag: bytes, linkname: bytes = b"", devmajor: int = 0,
                 devminor: int = 0) -> bytes:
    """One 512-byte ustar header; numbers must fit (callers move big ones to pax)."""
    if len(name) > 100 or len(linkname) > 100:
        raise ValueError("name or linkname longer than 100 bytes needs pax")
    fields = [
        name.ljust(100, b"\0"), _octal(mode, 8), _octal(uid, 8), _octal(gid, 8),
        _octal(size, 12), _octal(mtime, 12), b" " * 8, typeflag, linkname.ljust(100, b"\0"),
        b"ustar\x0000", b"\0" * 32, b"\0" * 32,  # empty uname / gname on purpose
        _octal(devmajor, 8), _octal(devminor, 8), b"\0" * 155,
    ]
    header = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def member_headers(name: bytes, *, mode: int, uid: int, gid: int, size: int, mtime: int,
                   typeflag: bytes, linkname: bytes = b"", rdev: int = 0,
                   xattrs: dict[bytes, bytes] | None = None) -> bytes:
    """Pax header (when needed) plus ustar header for one member; data follows the result."""
    records = [pax_record(b"SCHILY.xattr." + k, v) for k, v in sorted((xattrs or {}).items())]
    mtime_field = mtime
    if not 0 <= mtime < 8 ** 11:
        records.append(pax_record(b"mtime", str(mtime).encode()))
        mtime_field = 0
    ids = []
    for key, value in ((b"uid", uid), (b"gid", gid)):
        if value >= 8 ** 7:
            records.append(pax_record(key, str(value).encode()))
            ids.append(0)
        else:
            ids.append(value)
    size_field = size
    if size >= 8 ** 11:
        records.append(pax_record(b"size", str(size).encode()))
        size_field = 0
    link_field = linkname
    if len(linkname) > 100:
        records.append(pax_record(b"linkpath", linkname))
        link_field = b""
    name_field = name
    if len(name) > 100:  # never for fullfiles and packs (hash names); a whole tree has them
        records.append(pax_record(b"path", name))
        name_field = name[:100]
    out = b""
    if records:
        pax = b"".join(records)
        pax_name = (b"PaxHeaders/" + name_field.rstrip(b"/"))[:100]
        out += ustar_header(pax_name, mode=0o644, uid=0, gid=0, size=len(pax),
                            mtime=max(0, min(mtime, 8 ** 11 - 1)), typeflag=b"x")
        out += pax + padding(len(pax))
    out += ustar_header(name_field, mode=mode, uid=ids[0], gid=ids[1], size=size_field,
                        mtime=mtime_field, typeflag=typeflag, linkname=link_field,
                        devmajor=os.major(rdev) if rdev else 0,
                        devminor=os.minor(rdev) if rdev else 0)
    return out


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def record_member(rec: Record, name: str) -> bytes:
    """The tar headers of a record archived as ``name``; a regular file's data is streamed
    after them by the caller."""
    mode = rec.mode
    kw = dict(mode=stat.S_IMODE(mode), uid=rec.uid, gid=rec.gid, mtime=rec.mtime,
              xattrs=rec.xattrs)
    bname = name.encode("utf-8", "surrogateescape")
    if stat.S_ISDIR(mode):
        return member_headers(bname + b"/", size=0, typeflag=b"5", **kw)
    if stat.S_ISLNK(mode):
        return member_headers(bname, size=0, typeflag=b"2", linkname=rec.target, **kw)
    if stat.S_ISREG(mode):
        return member_headers(bname, size=rec.size, typeflag=b"0", **kw)
    flag = b"6" if stat.S_ISFIFO(mode) else b"3" if stat.S_ISCHR(mode) else b"4"
    return member_headers(bname, size=0, typeflag=flag, rdev=rec.rdev, **kw)


# --- compression --------------------------------------------------------------------------

class _Sink:
    """A compressor writing to one open file."""

    def __init__(self, kind: str, f: BinaryIO) -> None:
        self.kind, self.f = kind, f
        if kind == "gzip":
            self.c = zlib.compressobj(6, zlib.DEFLATED, 31)  # GNU gzip's default level
        elif kind == "xz":
            self.c = lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
        else:
            self.c = bz2.BZ2Compressor(9)

    def write(self, data: bytes) -> None:
        self.f.write(self.c.compress(data))

    def close(self) -> int:
        self.f.write(self.c.flush())
        size = self.f.tell()
        self.f.close()
        return size


def _kinds(rec: Record, policy: str) -> tuple[str, ...]:
    if stat.S_ISDIR(rec.mode) or policy == "gzip":
        return ("gzip",)
    if policy == "xz":
        return ("xz",)
    return ("gzip", "xz", "bzip2")  # tie order: gzip, xz, bzip2


def write_fullfile(rec: Record, out_dir: str, policy: str) -> int:
    """Write ``out_dir/<hash>.tar`` for ``rec``; returns its size. Safe to run in a worker."""
    final = os.path.join(out_dir, f"{rec.hash}.tar")
    kinds = _kinds(rec, policy)
    temps = [os.path.join(out_dir, f".{rec.hash}.{k}.tmp") for k in kinds]
    sinks = [_Sink(k, open(t, "wb")) for k, t in zip(kinds, temps, strict=True)]  # noqa: SIM115
    try:
        def emit(data: bytes) -> None:
            for s in sinks:
                s.write(data)

        emit(record_member(rec, rec.hash))
        if stat.S_ISREG(rec.mode):
            _stream_checked(rec, emit)
            emit(padding(rec.size))
        emit(END_OF_ARCHIVE)
        sizes = [s.close() for s in sinks]
    except BaseException:
        for s in sinks:
            s.f.close()
        for t in temps:
            _unlink(t)
        raise
    best = min(range(len(kinds)), key=lambda i: (sizes[i], i))
    os.replace(temps[best], final)
    for i, t in enumerate(temps):
        if i != best:
            _unlink(t)
    return sizes[best]


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _stream_checked(rec: Record, emit) -> None:  # type: ignore[no-untyped-def]
    """Stream the file's bytes to ``emit`` while re-computing its swupd hash."""
    mac = hmac.new(rec.hmac_key(), b"", hashlib.sha256)
    seen = 0
    with open(rec.disk, "rb") as f:
        while chunk := f.read(CHUNK):
            seen += len(chunk)
            if seen > rec.size:
                break
            mac.update(chunk)
            emit(chunk)
    if seen != rec.size or mac.hexdigest() != rec.hash:
        raise BuildError(f"{rec.disk} changed after it was hashed (the fullfile would not match "
                         "the manifest)", hint="do not modify the image tree while a build runs")


def write_fullfile_batch(recs: list[Record], out_dir: str, policy: str) -> int:
    return sum(write_fullfile(r, out_dir, policy) for r in recs)


# --- the set for one version ---------------------------------------------------------------

def write_fullfiles(recs: Iterable[Record], out_dir: Path, policy: str, reporter: Reporter,
                    executor: Executor | None = None) -> int:
    """One fullfile per distinct hash among ``recs``; existing ``<H>.tar`` are kept.

    Returns how many were written.
    """
    if policy not in POLICIES:
        raise BuildError(f"unknown compression {policy!r}", hint=f"use one of {POLICIES}")
    out_dir.mkdir(parents=True, exist_ok=True)
    unique: dict[str, Record] = {}
    for rec in recs:
        if rec.hash not in unique and not (out_dir / f"{rec.hash}.tar").exists():
            unique[rec.hash] = rec
    todo = sorted(unique.values(), key=lambda r: -r.size)  # big first: better balance
    reporter.step("writing fullfiles", total=len(todo))
    jobs = ((len(batch), (batch, str(out_dir), policy))
            for batch in batch_records(todo, _BATCH_FILES, _BATCH_BYTES))
    for count, _ in bounded_map(executor, write_fullfile_batch, jobs, 64):
        reporter.advance(count)
    return len(todo)


