"""Extraction of real .dsk images (sgdisk + mkfs -d) into a tree equal to the source tree.

Equality covers what swupd hashes and more: type, mode (setuid/setgid/sticky), uid, gid,
content, link target, device number, every xattr (ACLs in setxattr form), hard-link grouping
and mtime to the second; mode, owner, device number and xattrs as the tree's metadata record
holds them (the tree on disk is the extracting user's), the rest from disk. Damaged images
give one clear error each and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from dsk import (
    LONG_TARGET,
    debugfs,
    describe_tree,
    hardlink_groups,
    make_dsk,
    make_layout,
    rootfs_offset,
    sparse_copy,
)
from helpers_cli import publish
from helpers_users import as_nobody
from swupd_repo import treemeta
from swupd_repo.cli import main as cli_main
from swupd_repo.errors import DiskImageError, Ext4Error, ExtractError
from swupd_repo.ext4 import Ext4Reader
from swupd_repo.extract import extract_rootfs
from swupd_repo.gpt import find_partition
from swupd_repo.layout import load_layout
from swupd_repo.progress import RecordingReporter

FLAVOURS = ("ext4", "ext3", "inline", "blockmap-1k")
OFFSET = rootfs_offset(make_layout(32))


def extract(dsk: Path, layout: Path, dest: Path, reporter: RecordingReporter | None = None):
    reporter = reporter or RecordingReporter()
    extent = find_partition(dsk, load_layout(layout).rootfs(), reporter)
    return extract_rootfs(dsk, extent.offset, extent.size, dest, reporter)


def without_root_mtime(tree: dict[str, tuple]) -> dict[str, tuple]:
    """mkfs -d gives the root directory its own creation time, not the source's."""
    out = dict(tree)
    out["."] = (*out["."][:-1], None)
    return out


def test_source_tree_has_what_the_issue_asks_for(rich_tree: Path) -> None:
    """Guards the other tests: a source tree missing a feature would make them vacuous."""
    tree = describe_tree(rich_tree)
    modes = {v[1] for v in tree.values()}
    assert {0o600, 0o4755, 0o2711, 0o1777} <= modes
    assert any(v[2] > 65535 and v[3] > 65535 for v in tree.values())
    assert tree["usr/lib/long-link"][6] == LONG_TARGET and len(LONG_TARGET) == 200
    assert tree["usr/lib/dangling"][6].startswith("../")
    assert tree["etc/localtime"][6].startswith("/")
    kinds = {stat.S_IFMT(v[0]) for v in tree.values()}
    assert {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
            stat.S_IFIFO} <= kinds
    names = {name for v in tree.values() for name, _ in v[8]}
    assert {"user.comment", "security.ima", "security.SMACK64", "security.capability",
            "trusted.big", "system.posix_acl_access", "system.posix_acl_default"} <= names
    assert len(dict(tree["etc/shadow"][8])["trusted.big"]) == 3000
    assert os.major(tree["dev/big"][7]) == 4000 and os.minor(tree["dev/big"][7]) == 1_000_000
    assert tree["var/empty"] and tree["empty/nested/deeper"]
    assert "ünïcødé/名前.txt" in tree and "dir with spaces/file with spaces.txt" in tree
    assert len(hardlink_groups(rich_tree)) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_extracted_tree_equals_source(flavour: str, rich_tree: Path, rich_images: dict,
                                      tmp_path: Path) -> None:
    dsk, layout = rich_images[flavour]
    dest = tmp_path / "storage" / "image" / "10" / "os-core"
    reporter = RecordingReporter()
    stats = extract(dsk, layout, dest, reporter)

    want = without_root_mtime(describe_tree(rich_tree))
    got = without_root_mtime(describe_tree(dest, stored=True))
    if flavour == "inline":
        # mkfs.ext4 1.47.0 -d with inline_data drops a trailing hole of a sparse file (the
        # image itself says 12075008 bytes, see debugfs stat): compare with what the image
        # holds, which is the source's data cut at that size.
        size = got["var/sparse.img"][4]
        data = (rich_tree / "var/sparse.img").read_bytes()[:size]
        assert hashlib.sha256(data).hexdigest() == got["var/sparse.img"][5]
        want["var/sparse.img"] = got["var/sparse.img"]
    assert set(got) == set(want)
    for path in sorted(want):
        assert got[path] == want[path], path
    assert hardlink_groups(dest) == hardlink_groups(rich_tree)
    sparse = os.stat(dest / "var/sparse.img")
    assert sparse.st_blocks * 512 < sparse.st_size // 4, "holes were written out"
    assert not (dest / "lost+found").exists()
    assert sorted(os.listdir(dest.parent)) == [".hashcache.json", "os-core", "os-core.meta"]
    assert (stats.hardlinks, stats.devices, stats.fifos) == (2, 4, 1)
    assert reporter.steps[-1][1] == reporter.advanced > 70  # every used inode, once


def test_htree_directory_of_6000_entries(htree_image: tuple[Path, Path, Path],
                                         tmp_path: Path) -> None:
    src, dsk, layout = htree_image
    dest = tmp_path / "os-core"
    extract(dsk, layout, dest)
    assert len(os.listdir(dest / "usr/share/many")) == 6000
    assert without_root_mtime(describe_tree(dest, stored=True)) == \
        without_root_mtime(describe_tree(src))


def test_existing_destination_is_refused(rich_images: dict, tmp_path: Path) -> None:
    dsk, layout = rich_images["ext4"]
    dest = tmp_path / "os-core"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(ExtractError, match="already exists"):
        extract(dsk, layout, dest)
    assert (dest / "keep").read_text() == "mine"


def test_cli_extract(rich_images: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dsk, layout = rich_images["ext4"]
    storage = tmp_path / "storage"
    args = ["extract", "--dsk", str(dsk), "--layout", str(layout), "--storage", str(storage),
            "--version", "20"]
    assert cli_main(args) == 0
    record = treemeta.load(storage / "image/20/os-core")
    assert record is not None and record.get("/usr/bin/su").mode & stat.S_ISUID
    assert "extracted" in capsys.readouterr().out
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main([*args, "--force", "--partition", "rootfs"]) == 0


# --- damaged inputs: one clear error each, nothing left behind -------------------------------


@pytest.fixture
def damaged(ext4_image_copy: tuple[Path, Path]) -> tuple[Path, Path]:
    return ext4_image_copy


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fix_gpt(path: Path, header_lba: int) -> None:
    """Recompute the entry-array and header CRCs of the GPT header at ``header_lba``."""
    with open(path, "r+b") as f:
        f.seek(header_lba * 512)
        header = bytearray(f.read(512))
        size, entries_lba, count, entry_size = (struct.unpack_from("<I", header, 12)[0],
                                                *struct.unpack_from("<QII", header, 72))
        f.seek(entries_lba * 512)
        entries = f.read(count * entry_size)
        struct.pack_into("<I", header, 88, zlib.crc32(entries))
        struct.pack_into("<I", header, 16, 0)
        struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:size])))
        f.seek(header_lba * 512)
        f.write(header)


def expect_clean_failure(dsk: Path, layout: Path, tmp_path: Path, error: type,
                         match: str) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    with pytest.raises(error, match=match) as info:
        extract(dsk, layout, storage / "image" / "10" / "os-core")
    assert info.value.hint, "every error says what to do"
    assert list(storage.rglob("*")) == [], "nothing may be left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dsk.name, "storage"])


def test_bad_mbr(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    patch(damaged[0], 510, b"\0\0")
    expect_clean_failure(*damaged, tmp_path, DiskImageError, "no valid MBR")


def test_bad_gpt_crcs_on_both_headers(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    last_lba = damaged[0].stat().st_size // 512 - 1
    patch(damaged[0], 512 + 16, b"\xde\xad")
    patch(damaged[0], last_lba * 512 + 16, b"\xbe\xef")
    expect_clean_failure(*damaged, tmp_path, DiskImageError, "CRC32 mismatch.*CRC32 mismatch")


def test_partition_past_end_of_file(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    dsk = damaged[0]
    last_lba = dsk.stat().st_size // 512 - 1
    entry5_last = 2 * 512 + 4 * 128 + 40  # primary entry array at LBA 2
    patch(dsk, entry5_last, struct.pack("<Q", last_lba + 100_000))
    fix_gpt(dsk, 1)
    with open(dsk, "rb") as f:  # the backup array lives just before the backup header
        f.seek(last_lba * 512 + 72)
        backup_entries = struct.unpack("<Q", f.read(8))[0]
    patch(dsk, backup_entries * 512 + 4 * 128 + 40, struct.pack("<Q", last_lba + 100_000))
    fix_gpt(dsk, last_lba)
    expect_clean_failure(*damaged, tmp_path, DiskImageError, "partition 5 .* ends at byte")


def test_truncated_image(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    dsk, layout = damaged
    extent = find_partition(dsk, load_layout(layout).rootfs(), RecordingReporter())
    os.truncate(dsk, OFFSET + 8 * (1 << 20))
    expect_clean_failure(dsk, layout, tmp_path, DiskImageError, "truncated")
    # and the reader alone, given the range the intact image had
    with pytest.raises(Ext4Error, match=r"truncated|ends inside|outside"):
        extract_rootfs(dsk, extent.offset, extent.size, tmp_path / "storage" / "x",
                       RecordingReporter())
    assert list((tmp_path / "storage").iterdir()) == []


def test_zeroed_superblock(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    patch(damaged[0], OFFSET + 1024, bytes(1024))
    expect_clean_failure(*damaged, tmp_path, Ext4Error, "holds no ext2/3/4 filesystem")


def _inode_offset(dsk: Path, path: str) -> int:
    """Byte offset in ``dsk`` of the inode of ``path`` (looked up with our reader)."""
    with Ext4Reader.open(dsk, OFFSET, 32 << 20) as fs:
        number = 2
        for name in path.split("/"):
            number = dict(fs.entries(fs.inode(number)))[name.encode()]
        group, index = divmod(number - 1, fs.sb.inodes_per_group)
        return (OFFSET + fs.groups[group].inode_table * fs.block_size
                + index * fs.sb.inode_size)


def test_extent_pointing_outside_the_partition(damaged: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """With valid checksums (debugfs recomputes them), as a crafted image would have."""
    at = _inode_offset(damaged[0], "usr/lib/random.bin")
    with open(damaged[0], "rb") as f:
        f.seek(at + 0x28)
        assert struct.unpack("<H", f.read(2))[0] == 0xF30A  # an extent header
    # i_block[5] is ee_start_lo of the first extent
    debugfs(damaged[0], OFFSET, f"sif usr/lib/random.bin block[5] {0x7FFFFFF0}")
    expect_clean_failure(*damaged, tmp_path, Ext4Error, "lie outside the filesystem")


@pytest.mark.parametrize(("flavour", "refusal"), [
    ("ext3", "not a valid file name"),  # no metadata_csum: the name check refuses it
    ("ext4", r"directory inode \d+ in .*: block \d+ \(directory block 0\) fails its "
             "metadata_csum check"),
])
def test_directory_entry_escaping_the_target(flavour: str, refusal: str, rich_images: dict,
                                             tmp_path: Path) -> None:
    dsk = sparse_copy(rich_images[flavour][0], tmp_path / "image.dsk")
    data = dsk.read_bytes()
    hits = [i for i in range(len(data)) if data.startswith(b"patch-me-name", i)]
    assert hits, "the entry to patch is in the image"
    for hit in hits:
        patch(dsk, hit, b"..x/../../etc")
    expect_clean_failure(dsk, rich_images[flavour][1], tmp_path, Ext4Error, refusal)
    assert not (tmp_path / "etc").exists()


def test_unreachable_inode_is_an_error(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    """An entry cleared (inode 0) leaves a used inode nobody reaches: never a silent miss."""
    debugfs(damaged[0], OFFSET, "unlink etc/patch-me-name")  # keeps the inode's link count
    expect_clean_failure(*damaged, tmp_path, Ext4Error, "not reachable")


def test_an_ordinary_user_extracts_everything_into_the_record(rich_images: dict,
                                                             rich_tree: Path) -> None:
    """No root, no pseudo: owners, set-id bits, devices and security.*/trusted.* xattrs all
    reach the record, and the tree on disk is the user's, with nothing that needs privileges.

    Runs the extraction in a forked child that dropped to uid/gid 65534 (where chown, mknod of
    a device and setting trusted.* fail with a real EPERM).
    """
    dsk, layout = rich_images["ext4"]
    extent = find_partition(dsk, load_layout(layout).rootfs(), RecordingReporter())
    base = Path(tempfile.mkdtemp(prefix="swupd-repo-nobody-"))
    try:
        os.chmod(base, 0o777)
        sparse_copy(dsk, base / "image.dsk")
        os.chmod(base / "image.dsk", 0o644)
        dest = base / "s" / "image" / "10" / "os-core"
        outcome = as_nobody(lambda: extract_rootfs(
            base / "image.dsk", extent.offset, extent.size, dest, RecordingReporter()))
        assert outcome == "ok", outcome
        assert without_root_mtime(describe_tree(dest, stored=True)) == \
            without_root_mtime(describe_tree(rich_tree))
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                assert (st.st_uid, st.st_gid) == (65534, 65534), path
                assert not stat.S_ISCHR(st.st_mode) and not stat.S_ISBLK(st.st_mode), path
                assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), path
                assert os.listxattr(path, follow_symlinks=False) == [], path
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("name", [b"comm\0nt", b"\0\0\0\0\0\0\0"])
def test_xattr_name_with_nul_is_refused(name: bytes, rich_images: dict, tmp_path: Path) -> None:
    """Not ``ValueError: embedded null byte`` from os.setxattr: one Ext4Error naming the inode.

    On the ext3 flavour (no metadata_csum), where nothing but the name check can notice.
    """
    dsk = sparse_copy(rich_images["ext3"][0], tmp_path / "image.dsk")
    with Ext4Reader.open(dsk, OFFSET, 32 << 20) as fs:
        number = 2
        for part in ("usr", "bin", "su"):
            number = dict(fs.entries(fs.inode(number)))[part.encode()]
    data = dsk.read_bytes()
    hits = [i for i in range(OFFSET, len(data)) if data.startswith(b"comment", i)]
    assert len(hits) == 1, "user.comment of usr/bin/su, stored once"
    patch(dsk, hits[0], name)
    expect_clean_failure(dsk, rich_images["ext3"][1], tmp_path, Ext4Error,
                         rf"inode {number} in .* has damaged extended attributes: an attribute "
                         r"is named b'user\.\S*', which is not a valid attribute name")


# --- huge and sparse files: bounded extraction, and the max_file_size limit -------------------


@pytest.fixture(scope="module")
def sparse_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An 8 MiB rootfs holding a valid 20 GiB sparse file (4 bytes of data at 10 GiB): what
    a ``truncate -s 20G`` in a recipe gives. e2fsck finds nothing wrong with it."""
    base = tmp_path_factory.mktemp("sparse")
    src = base / "src"
    (src / "usr/lib").mkdir(parents=True)
    (src / "usr/lib/os-release").write_text("VERSION_ID=10\n")
    with open(src / "usr/huge", "wb") as f:
        f.truncate(20 << 30)
        f.seek(10 << 30)
        f.write(b"data")
    dsk, layout = make_dsk(src, base / "w", "sparse", rootfs_mb=8)
    assert e2fsck_clean(dsk, OFFSET)
    return dsk, layout


def e2fsck_clean(dsk: Path, offset: int) -> bool:
    return subprocess.run(["e2fsck", "-fn", f"{dsk}?offset={offset}"], capture_output=True,
                          check=False).returncode == 0


def test_sparse_20_gib_file_is_refused_by_max_file_size(sparse_image: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """The issue's case: publish stalled for over 15 minutes; now one line naming the limit."""
    storage = tmp_path / "storage"
    done = publish(storage, sparse_image)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "/usr/huge (inode" in errors[0] and "21474836480 bytes" in errors[0]
    assert "more than max_file_size (4294967296 bytes)" in errors[0]
    assert "SWUPD_REPO_MAX_FILE_SIZE / --max-file-size" in errors[0]
    assert not (storage / "image" / "10").exists() and not (storage / "www" / "10").exists()


def test_sparse_file_extracts_in_bounded_space(sparse_image: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """With the limit raised, extraction writes the data blocks only: holes stay holes."""
    dest = tmp_path / "os-core"
    reporter = RecordingReporter()
    extent = find_partition(sparse_image[0], load_layout(sparse_image[1]).rootfs(), reporter)
    extract_rootfs(sparse_image[0], extent.offset, extent.size, dest, reporter,
                   max_file_size=20 << 30)
    huge = os.stat(dest / "usr/huge")
    assert huge.st_size == 20 << 30 and huge.st_blocks * 512 <= 64 << 10
    with open(dest / "usr/huge", "rb") as f:
        f.seek((10 << 30) - 2)
        assert f.read(8) == b"\0\0data\0\0"
    # 20 GiB of zeros are not hashed while extracting (the build hashes what it must)
    from swupd_repo.swupd import hashcache

    assert set(hashcache.load(hashcache.cache_path(dest))) == {"/usr/lib/os-release"}


def test_inode_claiming_1_tib_is_refused_by_max_file_size(damaged: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """e2fsck accepts a 1 TiB i_size over a few blocks (a sparse tail), so it is not damage:
    the limit refuses it, and with the limit raised it extracts as a sparse file."""
    dsk, layout = damaged
    debugfs(dsk, OFFSET, "sif etc/os-release size 1099511627776")
    assert e2fsck_clean(dsk, OFFSET)
    storage = tmp_path / "storage"
    storage.mkdir()
    extent = find_partition(dsk, load_layout(layout).rootfs(), RecordingReporter())
    with pytest.raises(ExtractError, match=r"/etc/os-release \(inode \d+\) in .* is "
                                           r"1099511627776 bytes \(1024\.0 GiB, holes "
                                           r"included\), more than max_file_size"):
        extract_rootfs(dsk, extent.offset, extent.size, storage / "a", RecordingReporter(),
                       max_file_size=4 << 30)
    assert list(storage.iterdir()) == []
    extract_rootfs(dsk, extent.offset, extent.size, storage / "b", RecordingReporter(),
                   max_file_size=1 << 40)
    claimed = os.stat(storage / "b/etc/os-release")
    assert claimed.st_size == 1 << 40 and claimed.st_blocks * 512 <= 64 << 10


def test_symlink_claiming_a_huge_target_is_refused_before_reading(damaged: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """A 256 MiB symlink target was read into memory before its length was judged."""
    debugfs(damaged[0], OFFSET, f"sif usr/lib/long-link size {256 << 20}")
    expect_clean_failure(*damaged, tmp_path, Ext4Error,
                         r"symlink inode \d+ in .* claims a target of 268435456 bytes")
