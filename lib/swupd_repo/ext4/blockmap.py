"""Where a file's data lives: extent trees (ext4) and classic block maps (ext2/ext3).

Both turn into one stream of *runs* ``(logical_block, physical_block, count)``, ascending and
non-overlapping; logical blocks not covered are holes (read as zeros). Unwritten (preallocated)
extents are holes too. Runs are produced lazily, so a huge file never becomes a huge list.

Every physical block is checked against the filesystem size before anyone reads it, and every
step down a tree must lower its depth, so a crafted image cannot loop or point outside the
partition.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from ..errors import Ext4Error
from .checksum import extent_tail_mismatch

Run = tuple[int, int, int]
ReadBlock = Callable[[int], bytes]

EXTENT_MAGIC = 0xF30A
_MAX_DEPTH = 5
_HEADER = struct.Struct("<HHHH4x")
_ENTRY = struct.Struct("<IHHI")  # leaf: ee_block, ee_len, ee_start_hi, ee_start_lo
_INDEX = struct.Struct("<IIH2x")  # index: ei_block, ei_leaf_lo, ei_leaf_hi
_UNWRITTEN = 32768


class MapContext:
    """What mapping needs from the filesystem: block reads, its size, and names for errors."""

    def __init__(self, read_block: ReadBlock, block_size: int, blocks_count: int,
                 first_data_block: int, where: str) -> None:
        self.read_block = read_block
        self.block_size = block_size
        self.blocks_count = blocks_count
        self.first_data_block = first_data_block
        self.where = where

    def error(self, inode: int, what: str) -> Ext4Error:
        return Ext4Error(f"inode {inode} in {self.where}: {what}",
                         hint="the filesystem is damaged: rebuild the image")

    def check_range(self, inode: int, start: int, count: int) -> None:
        if start < self.first_data_block or start + count > self.blocks_count:
            raise self.error(inode, f"data blocks {start}..{start + count - 1} lie outside "
                                    f"the filesystem (blocks {self.first_data_block}.."
                                    f"{self.blocks_count - 1})")


def extent_runs(ctx: MapContext, inode: int, root: bytes, limit: int,
                csum_seed: int | None = None) -> Iterator[Run]:
    """Runs of an extent-mapped inode whose ``i_block`` is ``root``; logical blocks < ``limit``.

    Adjacent runs are merged, which keeps the copy loop short. With ``csum_seed`` (the inode's
    metadata_csum seed) every tree block below the root must carry a matching checksum tail.
    """
    pending: Run | None = None
    for run in _extent_node(ctx, inode, root, None, 0, limit, set(), csum_seed):
        if pending and pending[0] + pending[2] == run[0] and pending[1] + pending[2] == run[1]:
            pending = (pending[0], pending[1], pending[2] + run[2])
            continue
        if pending:
            yield pending
        pending = run
    if pending:
        yield pending


def _extent_node(ctx: MapContext, inode: int, node: bytes, depth_expected: int | None,
                 next_logical: int, limit: int, seen: set[int],
                 csum_seed: int | None, block: int | None = None) -> Iterator[Run]:
    """Runs under one node: the root in ``i_block`` (``block`` None) or tree block ``block``."""
    magic, entries, maximum, depth = _HEADER.unpack_from(node, 0)
    if magic != EXTENT_MAGIC:
        raise ctx.error(inode, f"extent header magic {magic:#06x} is not 0xf30a")
    if depth_expected is not None and depth != depth_expected:
        raise ctx.error(inode, f"extent tree node has depth {depth}, expected {depth_expected}")
    if depth > _MAX_DEPTH:
        raise ctx.error(inode, f"extent tree depth {depth} exceeds {_MAX_DEPTH}")
    if entries > maximum or 12 + 12 * maximum > len(node):
        raise ctx.error(inode, f"extent node claims {entries} of {maximum} entries in "
                               f"{len(node)} bytes")
    if csum_seed is not None and block is not None:
        problem = extent_tail_mismatch(csum_seed, node, maximum)
        if problem:
            raise ctx.error(inode, f"extent tree block {block} fails its metadata_csum check "
                                   f"({problem})")
    if depth == 0:
        last_end = next_logical
        for i in range(entries):
            logical, length, start_hi, start_lo = _ENTRY.unpack_from(node, 12 + 12 * i)
            if logical < last_end:
                raise ctx.error(inode, f"extents overlap or are out of order at block {logical}")
            if length > _UNWRITTEN:
                last_end = logical + length - _UNWRITTEN
                continue  # unwritten: reads as zeros, like a hole
            if length == 0:
                raise ctx.error(inode, f"empty extent at logical block {logical}")
            last_end = logical + length
            if logical >= limit:
                continue  # blocks past i_size (preallocated); still validated above
            start = start_lo | (start_hi << 32)
            ctx.check_range(inode, start, length)
            yield logical, start, min(length, limit - logical)
        return
    for i in range(entries):
        logical, leaf_lo, leaf_hi = _INDEX.unpack_from(node, 12 + 12 * i)
        if logical >= limit:
            break
        leaf = leaf_lo | (leaf_hi << 32)
        ctx.check_range(inode, leaf, 1)
        if leaf in seen:
            raise ctx.error(inode, f"extent tree block {leaf} is used twice")
        seen.add(leaf)
        yield from _extent_node(ctx, inode, ctx.read_block(leaf), depth - 1,
                                max(next_logical, logical), limit, seen, csum_seed, leaf)


def blockmap_runs(ctx: MapContext, inode: int, root: bytes, limit: int) -> Iterator[Run]:
    """Runs of a classic (ext2/ext3) block-mapped inode: 12 direct, then 1-, 2-, 3-indirect."""
    per_block = ctx.block_size // 4
    direct = struct.unpack_from("<15I", root, 0)
    pending: list[int] = [0, 0, 0]  # logical, physical, count

    seen: set[int] = set()

    def emit(logical: int, physical: int) -> Iterator[Run]:
        ctx.check_range(inode, physical, 1)
        end = pending[2]
        if end and pending[0] + end == logical and pending[1] + end == physical:
            pending[2] += 1
            return
        if pending[2]:
            yield pending[0], pending[1], pending[2]
        pending[:] = [logical, physical, 1]

    def walk(block: int, level: int, first_logical: int) -> Iterator[Run]:
        """Blocks under an indirect block of ``level`` (1 = pointers to data)."""
        ctx.check_range(inode, block, 1)
        if block in seen:
            raise ctx.error(inode, f"indirect block {block} is used twice")
        seen.add(block)
        pointers = struct.unpack(f"<{per_block}I", ctx.read_block(block))
        span = per_block ** (level - 1)
        for i, pointer in enumerate(pointers):
            logical = first_logical + i * span
            if logical >= limit:
                return
            if not pointer:
                continue
            if level == 1:
                yield from emit(logical, pointer)
            else:
                yield from walk(pointer, level - 1, logical)

    for i in range(min(12, limit)):
        if direct[i]:
            yield from emit(i, direct[i])
    first = 12
    for level in (1, 2, 3):
        if first >= limit:
            break
        if direct[11 + level]:
            yield from walk(direct[11 + level], level, first)
        first += per_block ** level
    if pending[2]:
        yield pending[0], pending[1], pending[2]


def max_blocks(block_size: int, extents: bool) -> int:
    """How many logical blocks an inode can address (bounds i_size of a sane file)."""
    if extents:
        return 1 << 32
    per = block_size // 4
    return 12 + per + per * per + per * per * per
