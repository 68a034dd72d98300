"""Mutated images never crash the reader or write outside the target (hypothesis).

Mutations land where they hurt: superblock, group descriptors, the inode table, the inode
bitmap, directory blocks, extent tree blocks and xattr blocks of a small real mkfs.ext4 image.
Every outcome must be a successful extraction or one of our errors, never another exception,
and nothing may appear outside the target. Two images: one without ``metadata_csum``, where
damage reaches the parsers, and one with it, where the checksums must catch damage first.

Runs are deterministic. Two profiles, chosen with ``SWUPD_REPO_FUZZ``:

* ``ci`` (default): ``derandomize=True``, so every run (CI, a laptop, the lead's merge) tries
  the same fixed set of ``SWUPD_REPO_FUZZ_EXAMPLES`` (default 400) mutation lists per image,
  and the images are the same bytes in every run (see ``FLAVOURS``); a failure is reproducible
  by simply running the test again.
* ``long``: for a run by hand, random seeds, as many examples as you like::

      SWUPD_REPO_FUZZ=long SWUPD_REPO_FUZZ_EXAMPLES=5000 python3 -m pytest \\
          tests/test_extract_fuzz.py

  a failure prints a ``@reproduce_failure(...)`` line that pins it.

Failure output stays short: the image is held by :class:`Pristine`, whose repr is one line, and
hypothesis reports the mutations as ``(region, offset, byte)`` triples.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsk import mkfs
from swupd_repo.errors import SwupdRepoError
from swupd_repo.ext4 import Ext4Reader
from swupd_repo.ext4.inode import FL_EXTENTS
from swupd_repo.extract import extract_rootfs
from swupd_repo.progress import NullReporter

SIZE_MB = 2
PROFILE = os.environ.get("SWUPD_REPO_FUZZ", "ci")
EXAMPLES = int(os.environ.get("SWUPD_REPO_FUZZ_EXAMPLES", "400"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=PROFILE != "long",
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
#: mkfs options of both images; the second keeps ext4's default metadata_csum. Fixed UUID
#: (the checksum seed) and htree hash seed, fixed contents and times (E2FSPROGS_FAKE_TIME for
#: mkfs's own) make the images the same bytes in every run, so the examples are the same tests.
_FIXED = ("-b", "1024", "-I", "256", "-U", "2f1a7c4e-0000-4000-8000-00000000f022",
          "-E", "hash_seed=2f1a7c4e-0000-4000-8000-00000000f023")
FLAVOURS = {
    "no-csum": (*_FIXED, "-O", "inline_data,^has_journal,^resize_inode,^metadata_csum"),
    "csum": (*_FIXED, "-O", "^has_journal,^resize_inode"),
}


class Pristine:
    """A small real image and its metadata regions; repr is one line (hypothesis and pytest
    print the test's arguments on failure, and 2 MiB of bytes made an 8 MB log)."""

    def __init__(self, name: str, image: bytes, regions: tuple[tuple[str, int, int], ...]):
        self.name = name
        self.image = image
        self.regions = regions

    def __repr__(self) -> str:
        return f"Pristine({self.name!r}: {len(self.image)} bytes, {len(self.regions)} regions)"


def _small_tree(root: Path) -> None:
    (root / "etc/sub/deeper").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    for i in range(12):
        (root / "etc" / f"file{i}").write_bytes(b"x" * (i * 37))
    (root / "usr/bin/big").write_bytes(random.Random(7).randbytes(40_000))
    os.link(root / "usr/bin/big", root / "usr/bin/big-link")
    os.symlink("../etc/file1", root / "usr/bin/rel")
    os.symlink("/" + "long/" * 30, root / "usr/bin/long")
    os.setxattr(root / "etc/file3", "user.note", b"n" * 300)
    os.setxattr(root / "etc/file4", "security.SMACK64", b"_")
    os.mkfifo(root / "etc/fifo")
    with open(root / "usr/bin/sparse", "wb") as f:  # fragments: an extent tree of depth 1
        for i in range(8):
            f.seek(i * 8192)
            f.write(b"s" * 1024)
    for path in (root, *root.rglob("*")):
        os.utime(path, (1_500_000_000, 1_500_000_000), follow_symlinks=False)


def _regions(image: Path) -> tuple[tuple[str, int, int], ...]:
    """Named byte ranges of the metadata the reader trusts."""
    regions = [("superblock", 1024, 2048), ("group descriptors", 2048, 3072)]
    with Ext4Reader.open(image, 0, SIZE_MB << 20) as fs:
        bs = fs.block_size
        table = fs.groups[0].inode_table * bs
        regions.append(("inode table", table, table + 40 * fs.sb.inode_size))
        bitmap = fs.groups[0].inode_bitmap * bs
        regions.append(("inode bitmap", bitmap, bitmap + 16))
        pending = [2]
        seen = set()
        while pending:
            number = pending.pop()
            if number in seen:
                continue
            seen.add(number)
            node = fs.inode(number)
            if node.file_acl:
                regions.append((f"xattr block of inode {number}", node.file_acl * bs,
                                node.file_acl * bs + bs))
            magic, _entries, _max, depth = struct.unpack_from("<HHHH", node.block)
            if stat.S_ISREG(node.mode) and node.flags & FL_EXTENTS and depth > 0:
                assert magic == 0xF30A
                leaf = int.from_bytes(node.block[16:20], "little")  # first index's ei_leaf_lo
                regions.append((f"extent block of inode {number}", leaf * bs, leaf * bs + bs))
            if stat.S_ISDIR(node.mode):
                if not fs.is_inline(node):
                    for _logical, physical, count in fs.runs(node):
                        regions.append((f"directory inode {number}", physical * bs,
                                        (physical + count) * bs))
                pending.extend(n for name, n in fs.entries(node) if name not in (b".", b".."))
    return tuple(regions)


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def pristine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("fuzz")
    _small_tree(base / "src")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("E2FSPROGS_FAKE_TIME", "1500000000")
        image = mkfs(base / "fs.img", base / "src", SIZE_MB, "ext4", FLAVOURS[request.param])
    regions = _regions(image)
    assert any(name.startswith("extent block") for name, _, _ in regions)
    return Pristine(request.param, image.read_bytes(), regions)


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_images(pristine: Pristine, data: st.DataObject) -> None:
    image = bytearray(pristine.image)
    mutations = data.draw(st.lists(
        st.tuples(st.sampled_from(pristine.regions), st.integers(0, 1 << 20),
                  st.integers(0, 255)).map(lambda m: (m[0][0], m[0][1] + m[1] % (m[0][2] - m[0][1]),
                                                      m[2])),
        min_size=1, max_size=6), label="mutations (region, offset, byte)")
    for _region, offset, value in mutations:
        image[offset] = value
    sandbox = Path(tempfile.mkdtemp(prefix="swupd-repo-fuzz-"))
    try:
        (sandbox / "image.img").write_bytes(image)
        fence = sandbox / "fence"
        fence.mkdir()
        dest = fence / "storage" / "os-core"
        try:
            extract_rootfs(sandbox / "image.img", 0, len(image), dest, NullReporter())
        except SwupdRepoError as exc:
            assert "\n" not in str(exc), "one line"
            assert list(fence.iterdir()) == [], "a failed extraction leaves nothing"
        else:
            # the tree, its metadata record (swupd_repo.treemeta) and its side file of
            # hashes (swupd_repo.swupd.hashcache), nothing else
            assert sorted(os.listdir(fence / "storage")) == [".hashcache.json", "os-core",
                                                              "os-core.meta"]
        assert sorted(os.listdir(sandbox)) == ["fence", "image.img"], "wrote outside"
    finally:
        shutil.rmtree(sandbox)


def test_the_pristine_image_extracts(pristine: Pristine, tmp_path: Path) -> None:
    """Without mutations the fuzz image is fine, so the property test explores real damage."""
    (tmp_path / "image.img").write_bytes(pristine.image)
    stats = extract_rootfs(tmp_path / "image.img", 0, len(pristine.image), tmp_path / "out",
                           NullReporter())
    assert stats.files == 14 and stats.hardlinks == 1 and stats.symlinks == 2
    with Ext4Reader.open(tmp_path / "image.img", 0, len(pristine.image)) as fs:
        assert (fs.sb.csum_seed is not None) == (pristine.name == "csum")
