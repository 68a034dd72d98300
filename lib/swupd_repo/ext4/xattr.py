"""Extended attributes: in the inode body and in an external block, and POSIX ACLs.

swupd hashes every xattr of a file, so they are returned exactly as ``getxattr`` would show
them on a mounted filesystem. ext4 stores POSIX ACLs in its own compact form (version 1, short
entries without an id); the kernel converts them to the ``posix_acl_xattr`` form (version 2,
every entry 8 bytes) that ``setxattr``/``getxattr`` use, and so does :func:`acl_to_xattr`.
``system.data`` (the tail of inline data) is filesystem-internal and never returned.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import Ext4Error

MAGIC = 0xEA020000
INLINE_DATA_NAME = "system.data"

_PREFIXES = {
    1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default", 4: "trusted.",
    6: "security.", 7: "system.", 8: "system.richacl",
}
_ACL_INDEXES = (2, 3)
#: namespaces whose prefix is the whole name (every other one needs a suffix)
_WHOLE_NAMES = (2, 3, 8)
_ENTRY = struct.Struct("<BBHIII")

# ACL tags
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class RawXattr:
    """One attribute; the value is in ``value`` or, with ``ea_inode``, in inode ``value_inum``."""

    name: str
    value: bytes
    value_inum: int
    value_size: int


def parse_entries(region: bytes, first: int, value_base: int, inode: int,
                  where: str) -> Iterator[RawXattr]:
    """Entries starting at ``first`` in ``region``; value offsets count from ``value_base``."""
    pos = first
    end = len(region)
    while pos + 4 <= end and region[pos:pos + 4] != b"\0\0\0\0":
        if pos + _ENTRY.size > end:
            raise _bad(inode, where, "an attribute entry is cut short")
        name_len, index, value_offs, value_inum, value_size, _hash = _ENTRY.unpack_from(region, pos)
        name_end = pos + _ENTRY.size + name_len
        if name_end > end:
            raise _bad(inode, where, "an attribute name runs past its area")
        suffix = region[pos + _ENTRY.size:name_end]
        prefix = _PREFIXES.get(index)
        if prefix is None:
            raise Ext4Error(f"inode {inode} in {where} has an extended attribute in unknown "
                            f"namespace {index} ({suffix!r})",
                            hint="build the rootfs without it")
        if index in _ACL_INDEXES and suffix:
            raise _bad(inode, where, f"an ACL attribute carries a name {suffix!r}")
        if b"\0" in suffix or (not suffix and index not in _WHOLE_NAMES):
            # the kernel never stores these, and setxattr cannot recreate them
            full = prefix.encode() + suffix
            raise _bad(inode, where, f"an attribute is named {full!r}, which is not a valid "
                                     "attribute name")
        name = prefix + suffix.decode("utf-8", "surrogateescape")
        if value_inum:
            value = b""
        else:
            start = value_base + value_offs
            if value_size and (start < value_base or start + value_size > end):
                raise _bad(inode, where, f"the value of {name} lies outside its area")
            value = bytes(region[start:start + value_size])
        yield RawXattr(name, value, value_inum, value_size)
        pos = (name_end + 3) & ~3


def ibody_entries(extra: bytes, inode: int, where: str) -> Iterator[RawXattr]:
    """Attributes stored after ``i_extra_isize`` in the inode itself."""
    if len(extra) < 4 or struct.unpack_from("<I", extra, 0)[0] != MAGIC:
        return
    # Values count from the first entry, i.e. right after the magic.
    yield from parse_entries(memoryview(extra)[4:].tobytes(), 0, 0, inode, where)


def block_entries(block: bytes, inode: int, where: str) -> Iterator[RawXattr]:
    """Attributes of the external xattr block (``i_file_acl``)."""
    magic, _refcount, blocks = struct.unpack_from("<III", block, 0)
    if magic != MAGIC or blocks != 1:
        raise _bad(inode, where, f"its extended attribute block has magic {magic:#x} and "
                                 f"{blocks} blocks")
    yield from parse_entries(block, 32, 0, inode, where)


def acl_to_xattr(value: bytes, inode: int, where: str) -> bytes:
    """ext4's on-disk ACL (version 1) to the ``setxattr`` form (version 2)."""
    if len(value) < 4 or struct.unpack_from("<I", value, 0)[0] != 1:
        raise _bad(inode, where, "a POSIX ACL has an unknown version")
    out = bytearray(struct.pack("<I", 2))
    pos = 4
    while pos < len(value):
        if pos + 4 > len(value):
            raise _bad(inode, where, "a POSIX ACL entry is cut short")
        tag, perm = struct.unpack_from("<HH", value, pos)
        if tag in (ACL_USER, ACL_GROUP):
            if pos + 8 > len(value):
                raise _bad(inode, where, "a POSIX ACL entry is cut short")
            (ident,) = struct.unpack_from("<I", value, pos + 4)
            pos += 8
        elif tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER):
            ident = _UNDEFINED_ID
            pos += 4
        else:
            raise _bad(inode, where, f"a POSIX ACL entry has unknown tag {tag:#x}")
        out += struct.pack("<HHI", tag, perm, ident)
    return bytes(out)


def is_acl(name: str) -> bool:
    return name in ("system.posix_acl_access", "system.posix_acl_default")


def _bad(inode: int, where: str, what: str) -> Ext4Error:
    return Ext4Error(f"inode {inode} in {where} has damaged extended attributes: {what}",
                     hint="rebuild the image, or check it with e2fsck -fn")
