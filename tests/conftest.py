"""Shared fixtures: paths to the project and to the shared reference vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

# Disk images shared by the layout/gpt/ext4/extract tests (built once per session).
from dsk_fixtures import htree_image, rich_images, rich_tree  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VECTORS = SHARED / "vectors" / "basic"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """``../shared/vectors/basic``: real swupd-server 2.53 output (see its README)."""
    if not VECTORS.is_dir():
        pytest.fail(f"reference vectors missing at {VECTORS}")
    return VECTORS
