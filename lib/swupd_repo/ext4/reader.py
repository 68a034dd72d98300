"""A read-only ext2/3/4 reader over a byte range of an image file (no mount, no loop device).

The facade the extractor uses: inodes, their data runs, directory entries, symlink targets,
extended attributes, and the inode bitmaps for the completeness check. Every read goes
through :meth:`Ext4Reader.read`, which refuses anything outside the partition and turns a
short read (a truncated image) into :class:`Ext4Error`. With ``metadata_csum`` each inode,
directory/index block, extent block, xattr block and inode bitmap is checked against its
checksum when it is read (the superblock and descriptors when the reader opens), so nothing
unverified reaches the extractor.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import Ext4Error
from . import checksum
from . import xattr as xattrs_mod
from .blockmap import MapContext, Run, blockmap_runs, extent_runs, max_blocks
from .directory import Entry, decode_rec_len, inline_entries, parse_entries
from .inode import FL_EA_INODE, FL_EXTENTS, FL_INDEX, FL_INLINE_DATA, Inode, parse_inode
from .superblock import (
    BG_INODE_UNINIT,
    DAMAGED_HINT,
    INCOMPAT_INLINE_DATA,
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    GroupDescriptor,
    Superblock,
    parse_descriptor,
    parse_superblock,
)

_TABLE_CHUNK_BLOCKS = 16
_DIR_CHUNK_BLOCKS = 16
_XATTR_BLOCK_CACHE = 64
#: Directories and symlinks are read whole; a larger one is damage, not a rootfs.
MAX_METADATA_BYTES = 256 << 20
_PATH_MAX = 4096  # a symlink target is shorter (Linux PATH_MAX, NUL included)
_XATTR_SIZE_MAX = 65536  # the largest value setxattr(2) accepts


class Ext4Reader:
    """The filesystem in ``[offset, offset + size)`` of the open file ``fd``."""

    def __init__(self, fd: int, offset: int, size: int, where: str) -> None:
        self.fd = fd
        self.offset = offset
        self.size = size
        self.where = where
        if size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE:
            raise Ext4Error(f"{where} is {size} bytes, too small for an ext4 filesystem",
                            hint="check the partition number and the layout")
        self.sb: Superblock = parse_superblock(
            self.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE), size, where)
        self.block_size = self.sb.block_size
        self.groups: list[GroupDescriptor] = self._descriptors()
        self._map = MapContext(self.read_block, self.block_size, self.sb.blocks_count,
                               self.sb.first_data_block, where)
        self._table_chunk: tuple[int, bytes] = (-1, b"")
        self._xattr_blocks: dict[int, list[xattrs_mod.RawXattr]] = {}
        #: Called with the number of every inode reached only through an xattr (ea_inode).
        self.on_ea_inode: Callable[[int], None] = lambda number: None

    @classmethod
    def open(cls, path: Path, offset: int, size: int) -> Ext4Reader:
        """Open ``path`` read-only; close with :meth:`close`."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(fd, offset, size, f"{path} (bytes {offset}..{offset + size})")
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Ext4Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw access --------------------------------------------------------------------------

    def read(self, pos: int, length: int) -> bytes:
        """``length`` bytes at partition offset ``pos``."""
        if pos < 0 or pos + length > self.size:
            raise Ext4Error(f"{self.where}: a read of {length} bytes at {pos} lies outside "
                            "the partition", hint="the filesystem is damaged: rebuild the image")
        data = os.pread(self.fd, length, self.offset + pos)
        if len(data) != length:
            raise Ext4Error(f"{self.where}: the image file ends inside the filesystem",
                            hint="the image is truncated: copy it again")
        return data

    def read_block(self, block: int) -> bytes:
        return self.read(block * self.block_size, self.block_size)

    def file_offset(self, block: int) -> int:
        """Offset in the image file of filesystem block ``block`` (for copying data)."""
        return self.offset + block * self.block_size

    def _descriptors(self) -> list[GroupDescriptor]:
        sb = self.sb
        per_block = self.block_size // sb.desc_size
        groups = []
        raw = b""
        for group in range(sb.group_count):
            index, slot = divmod(group, per_block)
            if slot == 0:
                block = sb.descriptor_block(index)
                if block >= sb.blocks_count:
                    raise Ext4Error(f"{self.where}: group descriptor block {block} lies outside "
                                    "the filesystem", hint="the image is damaged: rebuild it")
                raw = self.read_block(block)
            groups.append(parse_descriptor(raw, slot * sb.desc_size, sb, group, self.where))
        return groups

    # --- inodes ------------------------------------------------------------------------------

    def inode(self, number: int) -> Inode:
        sb = self.sb
        if not 1 <= number <= sb.inodes_count:
            raise Ext4Error(f"{self.where}: inode number {number} does not exist (the "
                            f"filesystem has {sb.inodes_count})",
                            hint="the filesystem is damaged: rebuild the image")
        group, index = divmod(number - 1, sb.inodes_per_group)
        desc = self.groups[group]
        if desc.flags & BG_INODE_UNINIT or index >= sb.inodes_per_group - desc.itable_unused:
            raise Ext4Error(f"{self.where}: inode {number} is referenced but never initialised",
                            hint="the filesystem is damaged: rebuild the image")
        byte = index * sb.inode_size
        chunk_bytes = _TABLE_CHUNK_BLOCKS * self.block_size
        chunk_index = byte // chunk_bytes
        key = group * (1 << 32) + chunk_index
        if self._table_chunk[0] != key:
            table_bytes = -(-sb.inodes_per_group * sb.inode_size // self.block_size) \
                * self.block_size
            start = chunk_index * chunk_bytes
            length = min(chunk_bytes, table_bytes - start)
            self._table_chunk = (key, self.read(desc.inode_table * self.block_size + start,
                                                length))
        off = byte - chunk_index * chunk_bytes
        raw = self._table_chunk[1][off:off + sb.inode_size]
        if sb.inode_csums and sb.csum_seed is not None:
            (generation,) = struct.unpack_from("<I", raw, 0x64)
            problem = checksum.inode_mismatch(
                checksum.inode_seed(sb.csum_seed, number, generation), raw)
            if problem:
                raise Ext4Error(f"inode {number} in {self.where} fails its metadata_csum check "
                                f"({problem})", hint=DAMAGED_HINT)
        return parse_inode(raw, number, sb.huge_file, self.block_size, self.where)

    def _csum_seed(self, node: Inode) -> int | None:
        """Seed of the checksums of ``node``'s tree, directory and index blocks (or None)."""
        if self.sb.csum_seed is None:
            return None
        return checksum.inode_seed(self.sb.csum_seed, node.number, node.generation)

    def runs(self, node: Inode) -> Iterator[Run]:
        """Data runs of a file, directory or slow symlink (not of inline-data inodes)."""
        limit = -(-node.size // self.block_size)
        extents = bool(node.flags & FL_EXTENTS)
        if limit > max_blocks(self.block_size, extents):
            raise Ext4Error(f"inode {node.number} in {self.where} claims {node.size} bytes, "
                            "more than it can address", hint="the filesystem is damaged")
        if extents:
            return extent_runs(self._map, node.number, node.block, limit, self._csum_seed(node))
        return blockmap_runs(self._map, node.number, node.block, limit)

    def is_inline(self, node: Inode) -> bool:
        if node.flags & FL_INLINE_DATA:
            if not self.sb.feature_incompat & INCOMPAT_INLINE_DATA:
                raise Ext4Error(f"inode {node.number} in {self.where} has inline data but the "
                                "filesystem lacks the inline_data feature",
                                hint="the filesystem is damaged: rebuild the image")
            return True
        return False

    def inline_data(self, node: Inode) -> bytes:
        """Contents of an inline-data inode: ``i_block`` then the ``system.data`` value."""
        tail = self._inline_tail(node)
        data = (node.block + tail)[:node.size]
        if len(data) != node.size:
            raise Ext4Error(f"inode {node.number} in {self.where}: inline data holds "
                            f"{len(node.block) + len(tail)} bytes, its size is {node.size}",
                            hint="the filesystem is damaged: rebuild the image")
        return data

    def _inline_tail(self, node: Inode) -> bytes:
        """What does not fit in ``i_block`` of an inline-data inode: its ``system.data``."""
        return next((x.value for x in self._raw_xattrs(node)
                     if x.name == xattrs_mod.INLINE_DATA_NAME), b"")

    def read_data(self, node: Inode) -> bytes:
        """All data of a small inode (directory, symlink, ea_inode value), holes as zeros."""
        if node.size > MAX_METADATA_BYTES:
            raise Ext4Error(f"inode {node.number} in {self.where} is {node.size} bytes, too "
                            "large for a directory or link", hint="the filesystem is damaged")
        if self.is_inline(node):
            return self.inline_data(node)
        out = bytearray(node.size)
        bs = self.block_size
        for logical, physical, count in self.runs(node):
            start = logical * bs
            length = min(count * bs, node.size - start)
            out[start:start + length] = self.read(physical * bs, length)
        return bytes(out)

    # --- directories and links -------------------------------------------------------------

    def entries(self, node: Inode) -> Iterator[Entry]:
        """(name, inode) of every entry of directory ``node``, ``.`` and ``..`` included."""
        filetype = self.sb.filetype
        if self.is_inline(node):
            yield from inline_entries(node.block, self._inline_tail(node), filetype,
                                      node.number, self.where)
            return
        if node.size % self.block_size:
            raise Ext4Error(f"directory inode {node.number} in {self.where} has size "
                            f"{node.size}, not a multiple of the block size",
                            hint="the filesystem is damaged: rebuild the image")
        bs = self.block_size
        seed = self._csum_seed(node)
        indexed = self.sb.dir_index and bool(node.flags & FL_INDEX)
        expected = 0
        for logical, physical, count in self.runs(node):
            if logical != expected:
                raise Ext4Error(f"directory inode {node.number} in {self.where} has a hole at "
                                f"block {expected}", hint="the filesystem is damaged")
            expected = logical + count
            for i in range(0, count, _DIR_CHUNK_BLOCKS):
                n = min(_DIR_CHUNK_BLOCKS, count - i)
                data = self.read((physical + i) * bs, n * bs)
                if seed is not None:
                    view = memoryview(data)
                    for j in range(n):
                        self._check_dir_block(node, seed, indexed, logical + i + j,
                                              physical + i + j, view[j * bs:(j + 1) * bs])
                yield from parse_entries(data, filetype, bs, node.number, self.where)
        if expected * bs != node.size:
            raise Ext4Error(f"directory inode {node.number} in {self.where} has a hole at "
                            f"block {expected}", hint="the filesystem is damaged")

    def _check_dir_block(self, node: Inode, seed: int, indexed: bool, logical: int,
                         physical: int, block: memoryview) -> None:
        """metadata_csum of one directory block: an htree index block (the root is block 0,
        an interior node starts with an empty entry spanning the block) or a leaf block."""
        count_offset = None
        if indexed:
            if logical == 0:
                count_offset = 0x18 + block[0x1D]  # after dx_root_info (its info_length)
            else:
                number, raw_len = struct.unpack_from("<IH", block, 0)
                if number == 0 and decode_rec_len(raw_len, len(block)) == len(block):
                    count_offset = 8
        if count_offset is not None:
            kind, problem = "htree index block", checksum.dx_mismatch(seed, block, count_offset)
        elif checksum.has_dirent_tail(block):
            kind, problem = "block", checksum.dirent_tail_mismatch(seed, block)
        else:
            kind, problem = "block", "it has no checksum tail"
        if problem:
            raise Ext4Error(f"directory inode {node.number} in {self.where}: {kind} {physical} "
                            f"(directory block {logical}) fails its metadata_csum check "
                            f"({problem})", hint=DAMAGED_HINT)

    def symlink_target(self, node: Inode) -> bytes:
        if not 0 < node.size < _PATH_MAX:  # checked before reading: never a huge buffer
            raise Ext4Error(f"symlink inode {node.number} in {self.where} claims a target of "
                            f"{node.size} bytes", hint="the filesystem is damaged")
        if self.is_inline(node):
            target = self.inline_data(node)
        elif self._is_fast_symlink(node):
            target = node.block[:node.size]
        else:
            target = self.read_data(node)
        if not target or b"\0" in target or len(target) >= _PATH_MAX:
            raise Ext4Error(f"symlink inode {node.number} in {self.where} has an invalid "
                            f"target {target[:64]!r}", hint="the filesystem is damaged")
        return target

    def _is_fast_symlink(self, node: Inode) -> bool:
        if node.flags & FL_EXTENTS or node.size >= 60:
            return False
        ea_blocks = self.block_size // 512 if node.file_acl else 0
        return node.blocks_512 - ea_blocks <= 0

    # --- extended attributes ------------------------------------------------------------------

    def _raw_xattrs(self, node: Inode) -> list[xattrs_mod.RawXattr]:
        found = list(xattrs_mod.ibody_entries(node.extra, node.number, self.where))
        if node.file_acl:
            block = node.file_acl
            cached = self._xattr_blocks.get(block)
            if cached is None:
                if not self.sb.first_data_block <= block < self.sb.blocks_count:
                    raise Ext4Error(f"inode {node.number} in {self.where}: its xattr block "
                                    f"{block} lies outside the filesystem",
                                    hint="the filesystem is damaged: rebuild the image")
                data = self.read_block(block)
                if self.sb.csum_seed is not None:
                    problem = checksum.xattr_block_mismatch(self.sb.csum_seed, block, data)
                    if problem:
                        raise Ext4Error(f"inode {node.number} in {self.where}: its xattr block "
                                        f"{block} fails its metadata_csum check ({problem})",
                                        hint=DAMAGED_HINT)
                cached = list(xattrs_mod.block_entries(data, node.number, self.where))
                if len(self._xattr_blocks) >= _XATTR_BLOCK_CACHE:
                    self._xattr_blocks.clear()
                self._xattr_blocks[block] = cached
            names = {x.name for x in found}
            found.extend(x for x in cached if x.name not in names)
        return found

    def xattrs(self, node: Inode) -> list[tuple[str, bytes]]:
        """Attributes as ``getxattr`` shows them (ACLs converted; ``system.data`` left out)."""
        if not node.extra and not node.file_acl:
            return []
        out = []
        for x in self._raw_xattrs(node):
            if x.name == xattrs_mod.INLINE_DATA_NAME:
                continue
            value = x.value
            if x.value_inum:
                value = self._ea_inode_value(node, x)
            if xattrs_mod.is_acl(x.name):
                value = xattrs_mod.acl_to_xattr(value, node.number, self.where)
            out.append((x.name, value))
        return out

    def _ea_inode_value(self, owner: Inode, x: xattrs_mod.RawXattr) -> bytes:
        node = self.inode(x.value_inum)
        if not node.flags & FL_EA_INODE or node.size != x.value_size \
                or stat.S_ISREG(node.mode) is False:
            raise Ext4Error(f"inode {owner.number} in {self.where}: the value of {x.name} "
                            f"should be in inode {x.value_inum}, which does not hold it",
                            hint="the filesystem is damaged: rebuild the image")
        if x.value_size > _XATTR_SIZE_MAX:
            raise Ext4Error(f"inode {owner.number} in {self.where}: the value of {x.name} is "
                            f"{x.value_size} bytes, more than setxattr can write "
                            f"({_XATTR_SIZE_MAX})", hint="build the rootfs without it")
        self.on_ea_inode(x.value_inum)
        return self.read_data(node)

    # --- allocation --------------------------------------------------------------------------

    def inode_bitmap(self, group: int) -> int:
        """Used inodes of ``group`` as an integer: bit i is inode ``group * ipg + i + 1``."""
        desc = self.groups[group]
        if desc.flags & BG_INODE_UNINIT:
            return 0
        ipg = self.sb.inodes_per_group
        raw = self.read_block(desc.inode_bitmap)[:(ipg + 7) // 8]
        if self.sb.csum_seed is not None:
            problem = checksum.bitmap_mismatch(self.sb.csum_seed, raw[:ipg // 8],
                                               desc.inode_bitmap_csum,
                                               32 if self.sb.desc_size >= 64 else 16)
            if problem:
                raise Ext4Error(f"{self.where}: the inode bitmap of group {group} (block "
                                f"{desc.inode_bitmap}) fails its metadata_csum check "
                                f"({problem})", hint=DAMAGED_HINT)
        return int.from_bytes(raw, "little") & ((1 << ipg) - 1)
