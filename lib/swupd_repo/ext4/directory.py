"""Directory entries: linear blocks, htree directories, and inline-data directories.

An htree (``dir_index``) directory is a linear directory whose first block also hides the
index root inside the ``..`` entry's record, and whose interior index blocks look like one
empty entry spanning the block. So reading every block linearly yields each entry exactly
once, which is all extraction needs (no hash lookups), and needs no htree hash code.

An inline-data directory keeps its parent's inode number in the first 4 bytes of ``i_block``,
entries in the remaining 56 bytes and, when those are full, more entries in the
``system.data`` extended attribute; ``.`` and ``..`` are implicit there.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import Ext4Error

Entry = tuple[bytes, int]  # (name, inode number)

_DIRENT = struct.Struct("<IHBB")


def decode_rec_len(raw: int, block_size: int) -> int:
    """Only 64 KiB blocks need the wider encoding of ``rec_len`` (as in the kernel)."""
    if block_size < 65536:
        return raw
    if raw in (0, 65535):
        return block_size
    return (raw & 65532) | ((raw & 3) << 16)


def parse_entries(data: bytes | memoryview, filetype: bool, region: int, inode: int,
                  where: str) -> Iterator[Entry]:
    """Entries of directory data ``data``, which is split into records of ``region`` bytes.

    ``region`` is the block size for block-based directories and the whole length for
    inline ones; no record may cross a region boundary. ``.`` and ``..`` are yielded too
    (the caller skips them); deleted entries (inode 0) are not.
    """
    length = len(data)
    for base in range(0, length, region):
        end = min(base + region, length)
        pos = base
        while pos < end:
            if end - pos < 8:
                raise _bad(inode, where, f"directory record at byte {pos} is cut short")
            number, raw_len, name_len, _ftype = _DIRENT.unpack_from(data, pos)
            rec_len = decode_rec_len(raw_len, region)
            if not filetype:
                name_len |= _ftype << 8
            if rec_len < 8 or rec_len % 4 or pos + rec_len > end or 8 + name_len > rec_len:
                raise _bad(inode, where, f"directory record at byte {pos} has length "
                                         f"{rec_len} and name length {name_len}")
            if number:
                if name_len == 0:
                    raise _bad(inode, where, f"directory entry at byte {pos} has an empty name")
                yield bytes(data[pos + 8:pos + 8 + name_len]), number
            pos += rec_len


def inline_entries(i_block: bytes, system_data: bytes, filetype: bool, inode: int,
                   where: str) -> Iterator[Entry]:
    """Entries of an inline-data directory (``i_block`` + the ``system.data`` xattr value)."""
    (parent,) = struct.unpack_from("<I", i_block, 0)
    yield b"..", parent
    yield from parse_entries(i_block[4:60], filetype, 56, inode, where)
    if system_data:
        yield from parse_entries(system_data, filetype, len(system_data), inode, where)


def _bad(inode: int, where: str, what: str) -> Ext4Error:
    return Ext4Error(f"directory inode {inode} in {where} is damaged: {what}",
                     hint="rebuild the image, or check it with e2fsck -fn")
