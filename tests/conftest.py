"""Shared fixtures: paths to the project and to the reference vectors in tests/data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# The Docker engine and images (test_docker_backend, test_layer's docker build).
from docker_fixtures import base_image, engine, server_image  # noqa: F401

# Disk images shared by the layout/gpt/ext4/extract tests (built once per session).
from dsk import extract_rootfs_tar
from dsk_fixtures import ext4_image_copy, htree_image, rich_images, rich_tree  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# Real swupd-server output, kept inside the repository so a clone tests itself (see its README).
VECTORS = REPO / "tests" / "data" / "vectors" / "basic"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """``tests/data/vectors/basic``: real swupd-server 2.53 output (see its README)."""
    if not VECTORS.is_dir():
        pytest.fail(f"reference vectors missing at {VECTORS}")
    return VECTORS


@pytest.fixture(scope="session")
def rootfs_trees(tmp_path_factory, vectors) -> dict[int, Path]:
    """``{10: tree, 20: tree}``: the vectors' input trees, extracted once per session.

    Shared by many tests: treat them as read-only and use :func:`copy_tree` before changing
    anything (a hard-linked copy would share inode metadata with these trees).
    """
    base = tmp_path_factory.mktemp("rootfs")
    return {v: extract_rootfs_tar(vectors / f"rootfs-{v}.tar", base / str(v)) for v in (10, 20)}


@pytest.fixture(scope="session")
def vector_images(tmp_path_factory, rootfs_trees) -> dict[int, tuple[Path, Path]]:
    """``{10: (dsk, layout JSON), 20: ...}``: the vectors' trees as Ostro-style .dsk images."""
    from dsk import make_dsk

    work = tmp_path_factory.mktemp("dsk")
    # mkfs.ext4 -d only reads the shared trees
    return {v: make_dsk(rootfs_trees[v], work, f"ostro-image-{v}", rootfs_mb=32)
            for v in (10, 20)}


def copy_tree(src: Path, dest: Path) -> Path:
    """A full copy with owners, modes, xattrs, times and hard links (``cp -a``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--", str(src), str(dest)], check=True)
    return dest


def pytest_collection_modifyitems(items) -> None:
    """Docker tests last: scripts/test builds their images in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)
