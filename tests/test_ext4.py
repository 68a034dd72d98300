"""The ext4 reader: on-disk encodings on crafted bytes, and each flavour on real mkfs images."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from dsk import MIB, e2fsck_finds_damage, make_layout, mkfs, rootfs_offset, sparse_copy
from helpers_cli import publish
from swupd_repo.errors import Ext4Error
from swupd_repo.ext4 import Ext4Reader
from swupd_repo.ext4.blockmap import MapContext, extent_runs
from swupd_repo.ext4.directory import parse_entries
from swupd_repo.ext4.inode import FL_EXTENTS, FL_INDEX, FL_INLINE_DATA, parse_inode
from swupd_repo.ext4.xattr import acl_to_xattr
from swupd_repo.extract import extract_rootfs
from swupd_repo.progress import NullReporter

OFFSET = rootfs_offset(make_layout(32))


def raw_inode(mode: int = 0o100644, *, block: bytes = bytes(60), uid: int = 0, gid: int = 0,
              mtime: int = 0, mtime_extra: int | None = None, flags: int = 0) -> bytes:
    raw = bytearray(256)
    struct.pack_into("<HH", raw, 0, mode, uid & 0xFFFF)
    struct.pack_into("<I", raw, 0x10, mtime & 0xFFFFFFFF)
    struct.pack_into("<H", raw, 0x18, gid & 0xFFFF)
    struct.pack_into("<H", raw, 0x1A, 1)
    struct.pack_into("<I", raw, 0x20, flags)
    raw[0x28:0x28 + 60] = block
    struct.pack_into("<HH", raw, 0x78, uid >> 16, gid >> 16)
    struct.pack_into("<H", raw, 0x80, 32)
    if mtime_extra is not None:
        struct.pack_into("<I", raw, 0x88, mtime_extra)
    return bytes(raw)


@pytest.mark.parametrize(("seconds", "extra", "expected_ns"), [
    (1_500_000_000, 0, 1_500_000_000 * 10**9),
    (1_500_000_000, 123 << 2, 1_500_000_000 * 10**9 + 123),
    (-1, None, -(10**9)),                        # 128-byte-era: signed 32-bit
    (5, 2, (5 + (2 << 32)) * 10**9),            # epoch bits: year 2242
    (-1_000_000, 1, (-1_000_000 + (1 << 32)) * 10**9),  # 2106+, as the kernel decodes it
])
def test_times_with_nanoseconds_and_epoch_bits(seconds: int, extra: int | None,
                                               expected_ns: int) -> None:
    node = parse_inode(raw_inode(mtime=seconds, mtime_extra=extra), 12, False, 4096, "t")
    assert node.mtime_ns == expected_ns


def test_owners_use_the_high_16_bits() -> None:
    node = parse_inode(raw_inode(uid=4_000_000_000, gid=70000), 12, False, 4096, "t")
    assert (node.uid, node.gid) == (4_000_000_000, 70000)


def test_device_numbers_old_and_new_encoding() -> None:
    old = parse_inode(raw_inode(0o20644, block=struct.pack("<I", (1 << 8) | 3) + bytes(56)),
                      12, False, 4096, "t")
    assert old.rdev() == (1, 3)
    major, minor = 4000, 1_000_000
    new_value = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    new = parse_inode(raw_inode(0o60600, block=struct.pack("<II", 0, new_value) + bytes(52)),
                      12, False, 4096, "t")
    assert new.rdev() == (major, minor)


def test_refused_inode_kinds() -> None:
    with pytest.raises(Ext4Error, match="encrypted"):
        parse_inode(raw_inode(flags=0x800), 12, False, 4096, "t")
    with pytest.raises(Ext4Error, match="invalid file type"):
        parse_inode(raw_inode(mode=0o170644), 12, False, 4096, "t")


def test_acl_on_disk_form_to_setxattr_form() -> None:
    disk = struct.pack("<I", 1) + b"".join([
        struct.pack("<HH", 0x01, 7), struct.pack("<HHI", 0x02, 7, 1234),
        struct.pack("<HH", 0x04, 4), struct.pack("<HHI", 0x08, 5, 2345),
        struct.pack("<HH", 0x10, 7), struct.pack("<HH", 0x20, 0)])
    assert acl_to_xattr(disk, 12, "t") == struct.pack("<I", 2) + b"".join([
        struct.pack("<HHI", 0x01, 7, 0xFFFFFFFF), struct.pack("<HHI", 0x02, 7, 1234),
        struct.pack("<HHI", 0x04, 4, 0xFFFFFFFF), struct.pack("<HHI", 0x08, 5, 2345),
        struct.pack("<HHI", 0x10, 7, 0xFFFFFFFF), struct.pack("<HHI", 0x20, 0, 0xFFFFFFFF)])
    with pytest.raises(Ext4Error, match="unknown tag"):
        acl_to_xattr(struct.pack("<IHH", 1, 0x40, 0), 12, "t")


def test_directory_records_are_validated() -> None:
    good = struct.pack("<IHBB", 12, 12, 1, 2) + b".\0\0\0" + struct.pack("<IHBB", 13, 4084, 3, 1)
    block = good + b"abc" + bytes(4096 - len(good) - 3)
    assert list(parse_entries(block, True, 4096, 2, "t")) == [(b".", 12), (b"abc", 13)]
    bad = struct.pack("<IHBB", 12, 6, 1, 2) + bytes(4088)
    with pytest.raises(Ext4Error, match="has length 6"):
        list(parse_entries(bad, True, 4096, 2, "t"))


def test_extent_tree_checks() -> None:
    ctx = MapContext(lambda n: bytes(4096), 4096, 1000, 0, "t")
    header = struct.pack("<HHHH4x", 0xF30A, 2, 4, 0)
    two = header + struct.pack("<IHHI", 0, 2, 0, 100) + struct.pack("<IHHI", 2, 3, 0, 102)
    assert list(extent_runs(ctx, 12, two + bytes(60 - len(two)), 10)) == [(0, 100, 5)]
    unwritten = header + struct.pack("<IHHI", 0, 32768 + 2, 0, 100) + \
        struct.pack("<IHHI", 4, 1, 0, 500)
    assert list(extent_runs(ctx, 12, unwritten + bytes(24), 10)) == [(4, 500, 1)]
    outside = header + struct.pack("<IHHI", 0, 2, 0, 999) + bytes(12)
    with pytest.raises(Ext4Error, match="outside the filesystem"):
        list(extent_runs(ctx, 12, outside + bytes(24), 10))
    overlap = header + struct.pack("<IHHI", 4, 2, 0, 10) + struct.pack("<IHHI", 5, 1, 0, 20)
    with pytest.raises(Ext4Error, match="overlap"):
        list(extent_runs(ctx, 12, overlap + bytes(24), 10))
    loop = struct.pack("<HHHH4x", 0xF30A, 1, 4, 1) + struct.pack("<IIH2x", 0, 7, 0)
    ctx_loop = MapContext(lambda n: loop + bytes(4096 - len(loop)), 4096, 1000, 0, "t")
    with pytest.raises(Ext4Error, match="depth"):
        list(extent_runs(ctx_loop, 12, loop + bytes(60 - len(loop)), 10))


def _open(dsk: Path) -> Ext4Reader:
    return Ext4Reader.open(dsk, OFFSET, 32 * MIB)


def _lookup(fs: Ext4Reader, path: str):
    number = 2
    for name in path.split("/"):
        number = dict(fs.entries(fs.inode(number)))[name.encode()]
    return fs.inode(number)


def test_flavours_really_use_their_encodings(rich_images: dict, htree_image: tuple) -> None:
    """Guards the equality tests: each image exercises the structure it is named for."""
    with _open(rich_images["ext4"][0]) as fs:
        assert fs.sb.desc_size == 64 and fs.sb.block_size == 4096
        sparse = _lookup(fs, "var/sparse.img")
        assert sparse.flags & FL_EXTENTS
        assert struct.unpack_from("<H", sparse.block, 6)[0] >= 1, "extent tree with index"
        assert _lookup(fs, "etc/shadow").file_acl, "3000-byte xattr in an external block"
    with _open(rich_images["ext3"][0]) as fs:
        assert fs.sb.desc_size == 32
        assert not _lookup(fs, "usr/lib/random.bin").flags & FL_EXTENTS
    with _open(rich_images["blockmap-1k"][0]) as fs:
        assert fs.block_size == 1024 and fs.sb.first_data_block == 1
        node = _lookup(fs, "usr/lib/random.bin")
        assert struct.unpack_from("<15I", node.block)[13], "double-indirect block in use"
        assert any(name == "trusted.big" for name, _ in fs.xattrs(_lookup(fs, "etc/shadow")))
    with _open(rich_images["inline"][0]) as fs:
        assert _lookup(fs, "usr/lib/small/03.conf").flags & FL_INLINE_DATA
        assert _lookup(fs, "usr/sbin").flags & FL_INLINE_DATA
    _src, dsk, _layout = htree_image
    with Ext4Reader.open(dsk, 3 * MIB, 16 * MIB) as fs:
        assert _lookup(fs, "usr/share/many").flags & FL_INDEX


@pytest.mark.parametrize(("feature", "name"), [("encrypt", "encrypt"), ("verity", "verity")])
def test_unsupported_features_are_refused_by_name(tmp_path: Path, feature: str,
                                                  name: str) -> None:
    image = mkfs(tmp_path / "fs.img", None, 8, "ext4", ("-b", "4096", "-O", feature))
    with pytest.raises(Ext4Error, match=f"refuses: {name}"):
        Ext4Reader.open(image, 0, 8 * MIB)


def test_needs_recovery_is_refused_with_e2fsck_hint(tmp_path: Path) -> None:
    image = mkfs(tmp_path / "fs.img", None, 8)
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(image)], check=True,
                   capture_output=True)
    with pytest.raises(Ext4Error, match=r"needs_recovery.*e2fsck"):
        Ext4Reader.open(image, 0, 8 * MIB)


def test_filesystem_larger_than_partition(tmp_path: Path) -> None:
    image = mkfs(tmp_path / "fs.img", None, 8)
    with pytest.raises(Ext4Error, match="partition has only"):
        Ext4Reader.open(image, 0, 4 * MIB)


# --- metadata_csum: damage only a checksum can see is refused, as e2fsck -fn refuses it -------


def _node_at(fs: Ext4Reader, path: str) -> tuple[int, int]:
    """(inode number, byte offset of its slot in the partition) of ``path``."""
    number = 2
    for name in path.split("/"):
        number = dict(fs.entries(fs.inode(number)))[name.encode()]
    group, index = divmod(number - 1, fs.sb.inodes_per_group)
    return number, fs.groups[group].inode_table * fs.block_size + index * fs.sb.inode_size


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def _target(fs: Ext4Reader, what: str) -> tuple[int, str]:
    """Where to damage the rich ext4 image for ``what``: (partition offset, expected error)."""
    bs = fs.block_size
    if what == "superblock":
        return 1024 + 0x30, r"superblock in .* is damaged: metadata_csum mismatch"  # s_wtime
    if what == "group descriptor":
        return (fs.sb.descriptor_block(0) * bs + 0x0C,  # bg_free_blocks_count_lo of group 0
                r"group descriptor 0 of the filesystem in .* fails its metadata_csum check")
    if what == "inode mode 04755":
        number, slot = _node_at(fs, "usr/bin/ping")
        assert fs.inode(number).permissions == 0o755
        return slot + 1, rf"^inode {number} in .* fails its metadata_csum check"
    if what == "directory block":
        number, _slot = _node_at(fs, "etc")
        (_logical, physical, _count), = fs.runs(fs.inode(number))
        block = fs.read_block(physical)
        at = physical * bs + block.index(b"patch-me-name") + 12  # "...nam[e]" -> another name
        return at, (rf"directory inode {number} in .*: block {physical} \(directory block 0\) "
                    "fails its metadata_csum check")
    if what == "extent tree block":
        number, _slot = _node_at(fs, "var/sparse.img")
        (leaf,) = struct.unpack_from("<I", fs.inode(number).block, 12 + 4)  # ei_leaf_lo
        return (leaf * bs + 12 + 8,  # ee_start_lo of the first leaf extent
                rf"inode {number} in .*: extent tree block {leaf} fails its metadata_csum")
    if what == "xattr block":
        number, _slot = _node_at(fs, "etc/shadow")
        block = fs.inode(number).file_acl
        return (block * bs + bs - 100,  # inside the value of trusted.big
                rf"inode {number} in .*: its xattr block {block} fails its metadata_csum")
    if what == "inode bitmap":
        last = fs.sb.inodes_per_group - 1  # an unused inode marked in use
        return (fs.groups[0].inode_bitmap * bs + last // 8,
                r"the inode bitmap of group 0 \(block \d+\) fails its metadata_csum check")
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["superblock", "group descriptor", "inode mode 04755",
                                  "directory block", "extent tree block", "xattr block",
                                  "inode bitmap"])
def test_metadata_csum_damage_is_refused_with_one_line(what: str, rich_images: dict,
                                                       tmp_path: Path) -> None:
    dsk = sparse_copy(rich_images["ext4"][0], tmp_path / "image.dsk")
    with _open(dsk) as fs:
        assert fs.sb.csum_seed is not None, "mkfs.ext4 made the image with metadata_csum"
        at, expected = _target(fs, what)
    mask = 0x08 if what == "inode mode 04755" else 0x01  # mode high byte 0o0755 -> 0o4755
    _flip(dsk, OFFSET + at, mask)
    if what == "inode mode 04755":
        with open(dsk, "rb") as f:
            f.seek(OFFSET + at - 1)
            assert struct.unpack("<H", f.read(2))[0] == 0o104755
    e2fsck_finds_damage(dsk, OFFSET)
    dest = tmp_path / "storage" / "os-core"
    with pytest.raises(Ext4Error, match=expected) as info:
        extract_rootfs(dsk, OFFSET, 32 * MIB, dest, NullReporter())
    assert "\n" not in str(info.value) and info.value.hint
    assert not (tmp_path / "storage").exists(), "nothing is left behind"


def test_htree_index_block_damage_is_refused(htree_image: tuple, tmp_path: Path) -> None:
    dsk = sparse_copy(htree_image[1], tmp_path / "htree.dsk")
    offset = 3 * MIB
    with Ext4Reader.open(dsk, offset, 16 * MIB) as fs:
        number, _slot = _node_at(fs, "usr/share")
        number = dict(fs.entries(fs.inode(number)))[b"many"]
        node = fs.inode(number)
        assert node.flags & FL_INDEX
        root = next(iter(fs.runs(node)))[1]
    _flip(dsk, offset + root * 4096 + 0x28)  # the hash of the second index entry
    e2fsck_finds_damage(dsk, offset)
    with pytest.raises(Ext4Error, match=rf"directory inode {number} in .*: htree index block "
                                        rf"{root} \(directory block 0\) fails"):
        extract_rootfs(dsk, offset, 16 * MIB, tmp_path / "out", NullReporter())


def test_setuid_flip_is_not_published(rich_images: dict, tmp_path: Path) -> None:
    """The issue's case end to end: ``publish`` exits 2 with one line and publishes nothing."""
    dsk = sparse_copy(rich_images["ext4"][0], tmp_path / "image.dsk")
    with _open(dsk) as fs:
        number, slot = _node_at(fs, "usr/bin/ping")
    _flip(dsk, OFFSET + slot + 1, 0x08)
    storage = tmp_path / "storage"
    done = publish(storage, (dsk, rich_images["ext4"][1]))
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: inode {number} in {dsk}" in errors[0] and "metadata_csum" in errors[0]
    assert not (storage / "www").exists() or list((storage / "www").iterdir()) == []
    assert not (storage / "image" / "10").exists()


def test_checksums_of_every_flavour_verify(rich_images: dict) -> None:
    """Every structure of the pristine images passes (no false alarms), and the flavours
    that should carry checksums do."""
    for flavour, (dsk, _layout) in rich_images.items():
        with _open(dsk) as fs:
            assert (fs.sb.csum_seed is not None) == (flavour != "ext3"), flavour
