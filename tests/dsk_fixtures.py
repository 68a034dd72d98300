"""Session-wide disk images built once per test run (conftest imports these fixtures).

Building needs root (chown to high ids, mknod, security.* and trusted.* xattrs): CI runs as
root. Images are small (tens of MB, sparse) because the machine is shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsk import make_dsk, make_htree_tree, make_rich_tree, sparse_copy


@pytest.fixture(scope="session")
def rich_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's source tree: owners > 65535, setuid, devices, xattrs, ACLs, sparse ..."""
    return make_rich_tree(tmp_path_factory.mktemp("rich") / "src")


@pytest.fixture(scope="session")
def rich_images(rich_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (dsk, layout JSON) of the rich tree in several filesystem flavours."""
    work = tmp_path_factory.mktemp("images")
    flavours = {
        "ext4": ("ext4", ("-b", "4096")),
        "ext3": ("ext3", ("-b", "4096")),
        "inline": ("ext4", ("-b", "4096", "-O", "inline_data")),
        # classic block maps with 1 KiB blocks (double-indirect), values in ea_inodes
        "blockmap-1k": ("ext4", ("-b", "1024", "-O", "^extent,^64bit,ea_inode")),
    }
    return {name: make_dsk(rich_tree, work, name, rootfs_mb=32, fs_type=fs, options=opts)
            for name, (fs, opts) in flavours.items()}


@pytest.fixture
def ext4_image_copy(rich_images: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the ext4 image that a test may damage, and its layout."""
    dsk, layout = rich_images["ext4"]
    return sparse_copy(dsk, tmp_path / "image.dsk"), layout


@pytest.fixture(scope="session")
def htree_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(source, dsk, layout) of a tree with one 6,000-entry directory; later layout generation."""
    base = tmp_path_factory.mktemp("htree")
    src = make_htree_tree(base / "src")
    dsk, layout = make_dsk(src, base, "htree", rootfs_mb=16, generation="new",
                           options=("-b", "4096", "-N", "8192"), index_dirs=True)
    return src, dsk, layout
