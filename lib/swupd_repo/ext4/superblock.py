"""The ext2/3/4 superblock and group descriptors: geometry, features, and what we refuse.

Pure parsing (bytes in, values out). Every number that later code uses to compute a disk
position is range-checked here, so a damaged superblock is one clear :class:`Ext4Error`
instead of a confusing failure deeper down.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Ext4Error
from . import checksum

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
MAGIC = 0xEF53

DAMAGED_HINT = "the image is damaged: e2fsck -fn on the partition shows where; rebuild it"

# s_feature_compat
COMPAT_EXT_ATTR = 0x8
COMPAT_DIR_INDEX = 0x20
COMPAT_SPARSE_SUPER2 = 0x200
COMPAT_ORPHAN_FILE = 0x1000

# s_feature_incompat: name -> bit, and which we can read
INCOMPAT = {
    "compression": 0x1, "filetype": 0x2, "needs_recovery": 0x4, "journal_dev": 0x8,
    "meta_bg": 0x10, "extent": 0x40, "64bit": 0x80, "mmp": 0x100, "flex_bg": 0x200,
    "ea_inode": 0x400, "dirdata": 0x1000, "metadata_csum_seed": 0x2000, "large_dir": 0x4000,
    "inline_data": 0x8000, "encrypt": 0x10000, "casefold": 0x20000,
}
INCOMPAT_FILETYPE = 0x2
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_CSUM_SEED = 0x2000
_INCOMPAT_REFUSED = {
    "compression": "ext2 compression is not supported",
    "journal_dev": "this is an external journal device, not a filesystem",
    "dirdata": "Lustre dirdata entries are not supported",
    "encrypt": "encrypted files cannot be extracted faithfully",
    "needs_recovery": "the journal needs recovery (the filesystem was not unmounted "
                      "cleanly); run e2fsck -fy on the partition first",
}

# s_feature_ro_compat
RO_COMPAT = {
    "sparse_super": 0x1, "large_file": 0x2, "btree_dir": 0x4, "huge_file": 0x8,
    "uninit_bg": 0x10, "dir_nlink": 0x20, "extra_isize": 0x40, "snapshot": 0x80, "quota": 0x100,
    "bigalloc": 0x200, "metadata_csum": 0x400, "replica": 0x800, "read-only": 0x1000,
    "project": 0x2000, "shared_blocks": 0x4000, "verity": 0x8000, "orphan_present": 0x10000,
}
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_HUGE_FILE = 0x8
RO_COMPAT_METADATA_CSUM = 0x400
#: uninit_bg or metadata_csum: group flags and itable_unused are meaningful
RO_COMPAT_GROUP_CSUM = 0x10 | 0x400
_RO_COMPAT_REFUSED = {
    "snapshot": "ext4 snapshots are not supported",
    "verity": "fs-verity files cannot be recreated faithfully",
}

# bg_flags
BG_INODE_UNINIT = 0x1


@dataclass(frozen=True)
class Superblock:
    """The values of the superblock that reading needs, already validated."""

    inodes_count: int
    blocks_count: int
    first_data_block: int
    block_size: int
    blocks_per_group: int
    inodes_per_group: int
    first_ino: int
    inode_size: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    desc_size: int
    first_meta_bg: int
    special_inodes: frozenset[int]
    group_count: int
    #: seed of every metadata checksum; None without ``metadata_csum`` (nothing to verify)
    csum_seed: int | None = None
    #: whether inodes carry checksums (metadata_csum on a Linux-created filesystem)
    inode_csums: bool = False

    @property
    def filetype(self) -> bool:
        return bool(self.feature_incompat & INCOMPAT_FILETYPE)

    @property
    def dir_index(self) -> bool:
        return bool(self.feature_compat & COMPAT_DIR_INDEX)

    @property
    def huge_file(self) -> bool:
        return bool(self.feature_ro_compat & RO_COMPAT_HUGE_FILE)

    def has_super(self, group: int) -> bool:
        """Whether ``group`` holds a superblock (and group descriptor) backup."""
        if group == 0:
            return True
        if not self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if group == 1:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def descriptor_block(self, index: int) -> int:
        """Block holding descriptor block ``index`` (each holds ``block_size // desc_size``)."""
        if self.feature_incompat & INCOMPAT_META_BG and index >= self.first_meta_bg:
            group = index * (self.block_size // self.desc_size)
            return (self.first_data_block + group * self.blocks_per_group
                    + (1 if self.has_super(group) else 0))
        return self.first_data_block + 1 + index


def parse_superblock(raw: bytes, partition_size: int, where: str) -> Superblock:
    """Validate and parse the 1024-byte superblock of a filesystem of ``partition_size`` bytes."""
    (magic,) = struct.unpack_from("<H", raw, 0x38)
    if magic != MAGIC:
        raise Ext4Error(f"{where} holds no ext2/3/4 filesystem (superblock magic is "
                        f"{magic:#06x}, not 0xef53)",
                        hint="check the partition number, or the image is damaged")
    (inodes_count, blocks_lo, _r, _fb, _fi, first_data_block, log_block, _lc, blocks_per_group,
     _cpg, inodes_per_group) = struct.unpack_from("<11I", raw, 0)
    (rev_level,) = struct.unpack_from("<I", raw, 0x4C)
    first_ino, inode_size = struct.unpack_from("<IH", raw, 0x54)
    compat, incompat, ro_compat = struct.unpack_from("<III", raw, 0x5C)
    (journal_inum,) = struct.unpack_from("<I", raw, 0xE0)
    (desc_size,) = struct.unpack_from("<H", raw, 0xFE)
    (first_meta_bg,) = struct.unpack_from("<I", raw, 0x104)
    (blocks_hi,) = struct.unpack_from("<I", raw, 0x150)
    usr_quota, grp_quota = struct.unpack_from("<II", raw, 0x240)
    (prj_quota,) = struct.unpack_from("<I", raw, 0x26C)
    (orphan_file,) = struct.unpack_from("<I", raw, 0x280)

    if rev_level == 0:
        first_ino, inode_size, compat, incompat, ro_compat = 11, 128, 0, 0, 0

    def bad(what: str) -> Ext4Error:
        return Ext4Error(f"the superblock in {where} is damaged: {what}",
                         hint="rebuild the image, or check it with e2fsck -fn")

    # First, so that a damaged feature or geometry field is reported as the damage it is.
    csum_seed = _checksum_seed(raw, incompat, ro_compat, bad)
    refused = [f"{name} ({why})" for name, why in _INCOMPAT_REFUSED.items()
               if incompat & INCOMPAT[name]]
    refused += [f"{name} ({why})" for name, why in _RO_COMPAT_REFUSED.items()
                if ro_compat & RO_COMPAT[name]]
    unknown = incompat & ~sum(INCOMPAT.values())
    if unknown:
        refused.append(f"unknown incompatible features {unknown:#x}")
    if refused:
        raise Ext4Error(f"the filesystem in {where} uses features this reader refuses: "
                        + "; ".join(refused),
                        hint="build the rootfs without them (mkfs.ext4 -O ^feature)")

    if log_block > 6:
        raise bad(f"block size 2^(10+{log_block}) is impossible")
    block_size = 1024 << log_block
    is64 = bool(incompat & INCOMPAT_64BIT)
    blocks_count = blocks_lo | ((blocks_hi << 32) if is64 else 0)
    if is64:
        if desc_size < 64 or desc_size > 1024 or desc_size & (desc_size - 1):
            raise bad(f"group descriptor size {desc_size} is invalid")
    else:
        desc_size = 32
    if inode_size < 128 or inode_size > block_size or inode_size & (inode_size - 1):
        raise bad(f"inode size {inode_size} is invalid")
    if first_data_block != (1 if block_size == 1024 else 0):
        raise bad(f"first data block {first_data_block} does not fit block size {block_size}")
    if not 0 < blocks_per_group <= 8 * block_size:
        raise bad(f"{blocks_per_group} blocks per group")
    if not 0 < inodes_per_group <= 8 * block_size:
        raise bad(f"{inodes_per_group} inodes per group")
    if blocks_count <= first_data_block:
        raise bad(f"{blocks_count} blocks")
    if blocks_count * block_size > partition_size:
        raise Ext4Error(
            f"the filesystem in {where} has {blocks_count} blocks of {block_size} bytes "
            f"({blocks_count * block_size} bytes) but the partition has only {partition_size}",
            hint="the image is truncated or the partition table is wrong: rebuild the image",
        )
    group_count = -(-(blocks_count - first_data_block) // blocks_per_group)
    if inodes_count != group_count * inodes_per_group:
        raise bad(f"{inodes_count} inodes is not {group_count} groups x {inodes_per_group}")
    if not 2 < first_ino <= inodes_count:
        raise bad(f"first inode {first_ino}")
    specials = frozenset(n for n in (journal_inum, usr_quota, grp_quota, prj_quota, orphan_file)
                         if 0 < n <= inodes_count)
    return Superblock(
        inodes_count=inodes_count, blocks_count=blocks_count, first_data_block=first_data_block,
        block_size=block_size, blocks_per_group=blocks_per_group,
        inodes_per_group=inodes_per_group, first_ino=first_ino, inode_size=inode_size,
        feature_compat=compat, feature_incompat=incompat, feature_ro_compat=ro_compat,
        desc_size=desc_size, first_meta_bg=first_meta_bg, special_inodes=specials,
        group_count=group_count, csum_seed=csum_seed,
        inode_csums=csum_seed is not None and checksum.inode_checksums_apply(raw),
    )


def _checksum_seed(raw: bytes, incompat: int, ro_compat: int,
                   bad: Callable[[str], Ext4Error]) -> int | None:
    """Verify the superblock's own checksum; the seed of all others (None: no metadata_csum)."""
    if not ro_compat & RO_COMPAT_METADATA_CSUM:
        return None
    kind = checksum.checksum_type(raw)
    if kind != checksum.CHECKSUM_TYPE_CRC32C:
        raise bad(f"metadata_csum with checksum type {kind}, not crc32c (1)")
    mismatch = checksum.superblock_mismatch(raw)
    if mismatch:
        raise bad(f"metadata_csum mismatch: {mismatch}")
    return checksum.filesystem_seed(raw, bool(incompat & INCOMPAT_CSUM_SEED))


@dataclass(frozen=True)
class GroupDescriptor:
    inode_bitmap: int
    inode_table: int
    flags: int
    itable_unused: int
    #: the inode bitmap's checksum (low 16 bits only with 32-byte descriptors)
    inode_bitmap_csum: int = 0


def parse_descriptor(raw: bytes, offset: int, sb: Superblock, group: int,
                     where: str) -> GroupDescriptor:
    """Parse descriptor ``group`` at ``offset`` in ``raw``; checks its checksum (with
    metadata_csum) and that its blocks lie in the filesystem."""
    if sb.csum_seed is not None:
        mismatch = checksum.descriptor_mismatch(sb.csum_seed, group,
                                                raw[offset:offset + sb.desc_size])
        if mismatch:
            raise Ext4Error(f"group descriptor {group} of the filesystem in {where} fails its "
                            f"metadata_csum check ({mismatch})", hint=DAMAGED_HINT)
    (_bb, ib_lo, it_lo, _fb, _fi, _ud, flags, _ex, _bbc, ibc_lo,
     unused_lo) = struct.unpack_from("<IIIHHHHIHHH", raw, offset)
    ib, it, unused, bitmap_csum = ib_lo, it_lo, unused_lo, ibc_lo
    if sb.desc_size >= 64:
        _bbh, ib_hi, it_hi = struct.unpack_from("<III", raw, offset + 0x20)
        (unused_hi,) = struct.unpack_from("<H", raw, offset + 0x32)
        (ibc_hi,) = struct.unpack_from("<H", raw, offset + 0x3A)
        ib |= ib_hi << 32
        it |= it_hi << 32
        unused = unused_lo | (unused_hi << 16)
        bitmap_csum |= ibc_hi << 16
    if not sb.feature_ro_compat & RO_COMPAT_GROUP_CSUM:
        # Without uninit_bg / metadata_csum the kernel ignores these fields.
        flags, unused = 0, 0
    table_blocks = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
    if not (sb.first_data_block <= it and it + table_blocks <= sb.blocks_count):
        raise Ext4Error(f"group {group} of the filesystem in {where} puts its inode table at "
                        f"block {it}, outside the filesystem",
                        hint="the image is damaged: rebuild it")
    if not flags & BG_INODE_UNINIT and not sb.first_data_block <= ib < sb.blocks_count:
        raise Ext4Error(f"group {group} of the filesystem in {where} puts its inode bitmap at "
                        f"block {ib}, outside the filesystem",
                        hint="the image is damaged: rebuild it")
    return GroupDescriptor(inode_bitmap=ib, inode_table=it, flags=flags,
                           itable_unused=min(unused, sb.inodes_per_group),
                           inode_bitmap_csum=bitmap_csum)
