"""Shared fixtures: paths to the project and to the shared reference vectors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# The Docker engine and images (test_docker_backend, test_layer's docker build).
from docker_fixtures import base_image, engine, server_image  # noqa: F401

# Disk images shared by the layout/gpt/ext4/extract tests (built once per session).
from dsk_fixtures import ext4_image_copy, htree_image, rich_images, rich_tree  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VECTORS = SHARED / "vectors" / "basic"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """``../shared/vectors/basic``: real swupd-server 2.53 output (see its README)."""
    if not VECTORS.is_dir():
        pytest.fail(f"reference vectors missing at {VECTORS}")
    return VECTORS


def extract_rootfs_tar(tar: Path, dest: Path) -> Path:
    """Extract a vectors rootfs tar as the vectors' README says (as root: owners, modes, xattrs)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def rootfs_trees(tmp_path_factory, vectors) -> dict[int, Path]:
    """``{10: tree, 20: tree}``: the vectors' input trees, extracted once per session.

    Shared by many tests: treat them as read-only and use :func:`copy_tree` before changing
    anything (a hard-linked copy would share inode metadata with these trees).
    """
    base = tmp_path_factory.mktemp("rootfs")
    return {v: extract_rootfs_tar(vectors / f"rootfs-{v}.tar", base / str(v)) for v in (10, 20)}


def copy_tree(src: Path, dest: Path) -> Path:
    """A full copy with owners, modes, xattrs, times and hard links (``cp -a``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--", str(src), str(dest)], check=True)
    return dest


def pytest_collection_modifyitems(items) -> None:
    """Docker tests last: scripts/test builds their images in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)
