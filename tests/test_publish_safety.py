"""Publishing loses nothing: a failed forced rebuild restores what was published (the release
gate's refusals are in test_builder and test_check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsk import make_dsk
from swupd_repo.storage import TEMP_PREFIX, Storage


@pytest.fixture(scope="module")
def images(tmp_path_factory, rootfs_trees) -> dict[int, tuple[Path, Path]]:
    work = tmp_path_factory.mktemp("dsk")
    return {v: make_dsk(rootfs_trees[v], work, f"img-{v}", rootfs_mb=32) for v in (10, 20)}


def publish(storage: Path, image: tuple[Path, Path], *extra: str) -> subprocess.CompletedProcess:
    dsk, layout = image
    return subprocess.run([sys.executable, "-m", "swupd_repo.cli", "publish", "--dsk", str(dsk),
                           "--layout", str(layout), "--storage", str(storage), *extra],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          timeout=600)


def tree_listing(root: Path) -> list[tuple[str, int, int, int, int]]:
    return sorted((p.relative_to(root).as_posix(), p.lstat().st_mode, p.lstat().st_uid,
                   p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_failed_forced_rebuild_keeps_the_published_tree(tmp_path, images) -> None:
    storage = tmp_path / "storage"
    assert publish(storage, images[10]).returncode == 0
    st = Storage(storage)
    before_tree = tree_listing(st.os_core(10))
    before_www = tree_listing(st.www(10))
    # Rebuilding 10 from an image that says VERSION_ID=20 fails after extraction.
    done = publish(storage, images[20], "--version", "10", "--force")
    assert done.returncode == 2 and "VERSION_ID=20" in done.stderr
    assert tree_listing(st.os_core(10)) == before_tree
    assert tree_listing(st.www(10)) == before_www
    assert st.latest() == 10
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
    # A forced rebuild that succeeds replaces it and leaves nothing aside.
    again = publish(storage, images[10], "--version", "10", "--force")
    assert again.returncode == 0, again.stderr
    assert st.latest() == 10 and (st.www(10) / "Manifest.MoM").is_file()
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
