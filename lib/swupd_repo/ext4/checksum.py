"""``metadata_csum``: the crc32c checksums ext4 keeps over its own metadata.

With the ``metadata_csum`` feature every structure the reader trusts carries a checksum: the
superblock, each group descriptor, each inode (which covers the in-inode xattrs, the extent
root and inline data), extent tree blocks, directory leaf blocks (a 12-byte tail entry),
htree index blocks (a tail after the index entries), external xattr blocks and the inode
bitmaps. A mismatch means the bytes are not what the kernel wrote, so they are refused rather
than published (a flipped mode bit would otherwise become a setuid file on every device).

Pure functions over bytes. The kernel's ``ext4_chksum`` is the raw Castagnoli CRC: seeded with
the previous value and without the final inversion. ``google_crc32c`` computes the standard
form (inverted on the way in and out), so ``raw(seed, data) = ~extend(~seed, data)``.
Per-object seeds (inode number and generation, block number, group number) make a structure
copied to the wrong place fail too.
"""

from __future__ import annotations

import struct

import google_crc32c

_MASK = 0xFFFFFFFF
_ZERO4 = bytes(4)

SB_CHECKSUM_OFFSET = 0x3FC
_SB_CHECKSUM_TYPE_OFFSET = 0x175
_SB_UUID = slice(0x68, 0x78)
_SB_CHECKSUM_SEED_OFFSET = 0x270
_SB_CREATOR_OS_OFFSET = 0x48
CHECKSUM_TYPE_CRC32C = 1

_GD_CHECKSUM_OFFSET = 0x1E
_INODE_CSUM_LO = 0x7C
_INODE_CSUM_HI = 0x82
_XATTR_CHECKSUM_OFFSET = 0x10
DIRENT_TAIL_SIZE = 12
_DIRENT_TAIL_HEAD = struct.pack("<IHBB", 0, DIRENT_TAIL_SIZE, 0, 0xDE)


def raw_crc32c(seed: int, data: bytes | memoryview) -> int:
    """The kernel's ``crc32c(seed, data)`` (no pre- or post-inversion)."""
    return ~google_crc32c.extend(~seed & _MASK, bytes(data)) & _MASK


def _verdict(stored: int, computed: int) -> str | None:
    """None when equal, else the one-line detail errors quote."""
    if stored == computed:
        return None
    return f"stored checksum {stored:#x}, the content gives {computed:#x}"


def _u32(raw: bytes | memoryview, offset: int) -> int:
    return int(struct.unpack_from("<I", raw, offset)[0])


def _u16(raw: bytes | memoryview, offset: int) -> int:
    return int(struct.unpack_from("<H", raw, offset)[0])


def superblock_mismatch(raw: bytes) -> str | None:
    """What is wrong when the superblock's own checksum is wrong, else None."""
    stored = _u32(raw, SB_CHECKSUM_OFFSET)
    computed = raw_crc32c(_MASK, raw[:SB_CHECKSUM_OFFSET])
    return _verdict(stored, computed)


def checksum_type(raw: bytes) -> int:
    return raw[_SB_CHECKSUM_TYPE_OFFSET]


def filesystem_seed(raw: bytes, explicit_seed: bool) -> int:
    """The seed of every other checksum: ``s_checksum_seed`` with ``metadata_csum_seed``
    (the UUID may then change without rewriting metadata), else the crc of the UUID."""
    if explicit_seed:
        return _u32(raw, _SB_CHECKSUM_SEED_OFFSET)
    return raw_crc32c(_MASK, raw[_SB_UUID])


def inode_checksums_apply(raw_superblock: bytes) -> bool:
    """Only Linux-created filesystems keep ``l_i_checksum_lo`` (the kernel checks the same)."""
    return _u32(raw_superblock, _SB_CREATOR_OS_OFFSET) == 0


def descriptor_mismatch(seed: int, group: int, desc: bytes | memoryview) -> str | None:
    """What is wrong with a wrong group descriptor checksum (16 bits of the crc)."""
    stored = _u16(desc, _GD_CHECKSUM_OFFSET)
    crc = raw_crc32c(seed, struct.pack("<I", group))
    crc = raw_crc32c(crc, desc[:_GD_CHECKSUM_OFFSET])
    crc = raw_crc32c(crc, b"\0\0")
    crc = raw_crc32c(crc, desc[_GD_CHECKSUM_OFFSET + 2:])
    computed = crc & 0xFFFF
    return _verdict(stored, computed)


def inode_seed(seed: int, number: int, generation: int) -> int:
    """Seed of an inode's own checksum and of its extent, directory and index blocks."""
    return raw_crc32c(raw_crc32c(seed, struct.pack("<I", number)),
                      struct.pack("<I", generation))


def inode_mismatch(iseed: int, raw: bytes) -> str | None:
    """What is wrong with a wrong inode checksum; ``raw`` is the whole inode slot.

    The high 16 bits exist only when ``i_extra_isize`` reaches ``i_checksum_hi``.
    """
    buf = bytearray(raw)
    stored = _u16(buf, _INODE_CSUM_LO)
    buf[_INODE_CSUM_LO:_INODE_CSUM_LO + 2] = b"\0\0"
    has_hi = len(buf) > 128 and _u16(buf, 128) >= _INODE_CSUM_HI + 2 - 128
    if has_hi:
        stored |= _u16(buf, _INODE_CSUM_HI) << 16
        buf[_INODE_CSUM_HI:_INODE_CSUM_HI + 2] = b"\0\0"
    computed = raw_crc32c(iseed, buf)
    if not has_hi:
        computed &= 0xFFFF
    return _verdict(stored, computed)


def extent_tail_mismatch(iseed: int, block: bytes, entries_max: int) -> str | None:
    """What is wrong with a wrong extent-block tail (right after ``eh_max`` entries)."""
    end = 12 + 12 * entries_max
    if end + 4 > len(block):
        return "its header leaves no room for the checksum"
    stored = _u32(block, end)
    computed = raw_crc32c(iseed, block[:end])
    return _verdict(stored, computed)


def has_dirent_tail(block: bytes | memoryview) -> bool:
    size = len(block)
    return bytes(block[size - DIRENT_TAIL_SIZE:size - 4]) == _DIRENT_TAIL_HEAD


def dirent_tail_mismatch(iseed: int, block: bytes | memoryview) -> str | None:
    """What is wrong with a wrong directory leaf block (the caller checked the tail)."""
    end = len(block) - DIRENT_TAIL_SIZE
    stored = _u32(block, end + 8)
    computed = raw_crc32c(iseed, block[:end])
    return _verdict(stored, computed)


def dx_mismatch(iseed: int, block: bytes | memoryview, count_offset: int) -> str | None:
    """What is wrong with a wrong htree index block whose count/limit is at
    ``count_offset``; the tail follows the ``limit`` slots, the crc covers the ``count`` used."""
    limit, count = struct.unpack_from("<HH", block, count_offset)
    tail = count_offset + 8 * limit
    if count > limit or tail + 8 > len(block):
        return "its count and limit leave no room for the checksum"
    stored = _u32(block, tail + 4)
    crc = raw_crc32c(iseed, block[:count_offset + 8 * count])
    crc = raw_crc32c(crc, block[tail:tail + 4])
    computed = raw_crc32c(crc, _ZERO4)
    return _verdict(stored, computed)


def xattr_block_mismatch(seed: int, number: int, block: bytes) -> str | None:
    """What is wrong with a wrong external xattr block (seeded with its block number)."""
    stored = _u32(block, _XATTR_CHECKSUM_OFFSET)
    crc = raw_crc32c(seed, struct.pack("<Q", number))
    crc = raw_crc32c(crc, block[:_XATTR_CHECKSUM_OFFSET])
    crc = raw_crc32c(crc, _ZERO4)
    computed = raw_crc32c(crc, block[_XATTR_CHECKSUM_OFFSET + 4:])
    return _verdict(stored, computed)


def bitmap_mismatch(seed: int, bitmap: bytes, stored: int, bits: int) -> str | None:
    """What is wrong with a wrong bitmap; ``bits`` is 16 or 32 (small descriptors)."""
    computed = raw_crc32c(seed, bitmap)
    if bits == 16:
        computed &= 0xFFFF
    return _verdict(stored, computed)
