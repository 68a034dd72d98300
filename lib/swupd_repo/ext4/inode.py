"""One on-disk inode: type, mode, 32-bit owners, size, nanosecond times, device numbers.

Pure parsing of the ``inode_size`` bytes of an inode-table slot. Fields past the 128-byte
base (``*_extra`` times) exist only when ``i_extra_isize`` covers them.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

from ..errors import Ext4Error

# i_flags
FL_COMPR = 0x4
FL_INDEX = 0x1000
FL_ENCRYPT = 0x800
FL_HUGE_FILE = 0x40000
FL_EXTENTS = 0x80000
FL_VERITY = 0x100000
FL_EA_INODE = 0x200000
FL_INLINE_DATA = 0x10000000

_REFUSED_FLAGS = {FL_ENCRYPT: "encrypted", FL_COMPR: "compressed", FL_VERITY: "fs-verity"}
_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                    stat.S_IFIFO, stat.S_IFSOCK))
_BASE = struct.Struct("<HHIIIIIHHII4x60sIIIIHHHH")


@dataclass(frozen=True, slots=True)
class Inode:
    number: int
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    flags: int
    blocks_512: int  # allocated space in 512-byte units (what st_blocks says)
    block: bytes  # i_block: 60 bytes of extents root, block map, fast symlink or inline data
    file_acl: int  # block of the external xattr block, 0 if none
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    extra: bytes  # in-inode xattr area (after i_extra_isize), may be empty
    generation: int = 0  # i_generation: part of the seed of its metadata checksums

    @property
    def type(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def permissions(self) -> int:
        """Permission bits including setuid, setgid and sticky."""
        return self.mode & 0o7777

    def rdev(self) -> tuple[int, int]:
        """(major, minor) of a device node: old 16-bit or new 32-bit encoding."""
        old, new = struct.unpack_from("<II", self.block, 0)
        if old:
            return (old >> 8) & 0xFF, old & 0xFF
        return (new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00)


def _time_ns(seconds: int, extra: int | None) -> int:
    """Seconds (signed 32-bit) plus the epoch bits and nanoseconds of ``i_*_extra``."""
    if seconds >= 1 << 31:
        seconds -= 1 << 32
    if extra is None:
        return seconds * 1_000_000_000
    seconds += (extra & 3) << 32
    nsec = extra >> 2
    return seconds * 1_000_000_000 + (nsec if nsec < 1_000_000_000 else 0)


def parse_inode(raw: bytes, number: int, huge_file: bool, block_size: int, where: str) -> Inode:
    """Parse the inode slot ``raw`` of inode ``number``; refuses what cannot be extracted."""
    (mode, uid_lo, size_lo, atime, ctime, mtime, _dtime, gid_lo, links, blocks_lo, flags,
     block, generation, acl_lo, size_hi, _faddr, blocks_hi, acl_hi, uid_hi,
     gid_hi) = _BASE.unpack_from(raw, 0)
    if flags & sum(_REFUSED_FLAGS):
        what = ", ".join(v for k, v in _REFUSED_FLAGS.items() if flags & k)
        raise Ext4Error(f"inode {number} in {where} is {what}; such files cannot be "
                        "extracted faithfully", hint="build the rootfs without them")
    if stat.S_IFMT(mode) not in _TYPES:
        raise Ext4Error(f"inode {number} in {where} has an invalid file type "
                        f"(mode {mode:#o})", hint="the image is damaged: rebuild it")
    extra_times: tuple[int | None, int | None, int | None] = (None, None, None)
    extra = b""
    if len(raw) > 128:
        (extra_isize,) = struct.unpack_from("<H", raw, 128)
        if extra_isize % 4 or 128 + extra_isize > len(raw):
            raise Ext4Error(f"inode {number} in {where} has an invalid extra size "
                            f"{extra_isize}", hint="the image is damaged: rebuild it")
        end = 128 + extra_isize
        fields = struct.unpack_from("<III", raw, 132) if end >= 144 else (None, None, None)
        extra_times = fields[0], fields[1], fields[2]  # ctime, mtime, atime extras
        extra = raw[end:]
    blocks = blocks_lo
    if huge_file:
        blocks |= blocks_hi << 32
        if flags & FL_HUGE_FILE:
            blocks *= block_size // 512  # counted in filesystem blocks
    return Inode(
        number=number, mode=mode, uid=uid_lo | (uid_hi << 16), gid=gid_lo | (gid_hi << 16),
        size=size_lo | (size_hi << 32), links=links, flags=flags, blocks_512=blocks, block=block,
        file_acl=acl_lo | (acl_hi << 32),
        atime_ns=_time_ns(atime, extra_times[2]), mtime_ns=_time_ns(mtime, extra_times[1]),
        ctime_ns=_time_ns(ctime, extra_times[0]), extra=extra, generation=generation,
    )
