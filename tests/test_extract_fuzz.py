"""Mutated images never crash the reader or write outside the target (hypothesis).

Mutations land where they hurt: superblock, group descriptors, the inode table, directory
blocks and xattr blocks of a small real image. Every outcome must be a successful extraction
or one of our errors, never another exception, and nothing may appear outside the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsk import mkfs
from swupd_repo.errors import SwupdRepoError
from swupd_repo.ext4 import Ext4Reader
from swupd_repo.extract import extract_rootfs
from swupd_repo.progress import NullReporter

SIZE_MB = 2
#: 150 keeps the run well under a minute; raise it for a deeper local run.
EXAMPLES = int(os.environ.get("SWUPD_REPO_FUZZ_EXAMPLES", "150"))


def _small_tree(root: Path) -> None:
    (root / "etc/sub/deeper").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    for i in range(12):
        (root / "etc" / f"file{i}").write_bytes(b"x" * (i * 37))
    (root / "usr/bin/big").write_bytes(os.urandom(40_000))
    os.link(root / "usr/bin/big", root / "usr/bin/big-link")
    os.symlink("../etc/file1", root / "usr/bin/rel")
    os.symlink("/" + "long/" * 30, root / "usr/bin/long")
    os.setxattr(root / "etc/file3", "user.note", b"n" * 300)
    os.setxattr(root / "etc/file4", "security.SMACK64", b"_")
    os.mkfifo(root / "etc/fifo")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple[int, int]]]:
    """The image bytes and the byte ranges holding metadata."""
    base = tmp_path_factory.mktemp("fuzz")
    _small_tree(base / "src")
    image = mkfs(base / "fs.img", base / "src", SIZE_MB, "ext4",
                 ("-b", "1024", "-I", "256", "-O", "inline_data,^has_journal,^resize_inode"))
    regions = [(1024, 2048), (2048, 3072)]
    with Ext4Reader.open(image, 0, SIZE_MB << 20) as fs:
        bs = fs.block_size
        table = fs.groups[0].inode_table * bs
        regions.append((table, table + 40 * fs.sb.inode_size))
        regions.append((fs.groups[0].inode_bitmap * bs, fs.groups[0].inode_bitmap * bs + 16))
        pending = [2]
        seen = set()
        while pending:
            number = pending.pop()
            if number in seen:
                continue
            seen.add(number)
            node = fs.inode(number)
            if node.file_acl:
                regions.append((node.file_acl * bs, node.file_acl * bs + bs))
            if node.mode & 0o170000 == 0o040000:
                if not fs.is_inline(node):
                    for _logical, physical, count in fs.runs(node):
                        regions.append((physical * bs, (physical + count) * bs))
                pending.extend(n for name, n in fs.entries(node) if name not in (b".", b".."))
    return image.read_bytes(), regions


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_images(pristine: tuple[bytes, list[tuple[int, int]]], data: st.DataObject) -> None:
    original, regions = pristine
    image = bytearray(original)
    mutations = data.draw(st.lists(st.tuples(st.sampled_from(regions), st.integers(0, 1 << 20),
                                             st.integers(0, 255)), min_size=1, max_size=6))
    for (start, end), pick, value in mutations:
        image[start + pick % (end - start)] = value
    sandbox = Path(tempfile.mkdtemp(prefix="swupd-repo-fuzz-"))
    try:
        (sandbox / "image.img").write_bytes(image)
        fence = sandbox / "fence"
        fence.mkdir()
        dest = fence / "storage" / "os-core"
        try:
            extract_rootfs(sandbox / "image.img", 0, len(image), dest, NullReporter())
        except SwupdRepoError:
            assert list(fence.iterdir()) == [], "a failed extraction leaves nothing"
        else:
            assert os.listdir(fence / "storage") == ["os-core"]
        assert sorted(os.listdir(sandbox)) == ["fence", "image.img"], "wrote outside"
    finally:
        shutil.rmtree(sandbox)


def test_the_pristine_image_extracts(pristine: tuple[bytes, list], tmp_path: Path) -> None:
    """Without mutations the fuzz image is fine, so the property test explores real damage."""
    (tmp_path / "image.img").write_bytes(pristine[0])
    stats = extract_rootfs(tmp_path / "image.img", 0, len(pristine[0]), tmp_path / "out",
                           NullReporter())
    assert stats.files == 13 and stats.hardlinks == 1 and stats.symlinks == 2
