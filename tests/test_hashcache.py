"""Hashes that survive re-extraction (issue 16): the extraction hashes the bytes it writes,
and the sharing with the previous version and the build (in this process or another) use
those hashes instead of reading every file again; yet no change slips through, not even one
that keeps a file's size and mtime (Yocto clamps every mtime to ``SOURCE_DATE_EPOCH``).

Real .dsk images (``mkfs.ext4 -d``), the real CLI in separate processes.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from dsk import make_dsk
from helpers_cli import publish, swupd_repo
from swupd_repo.dedup import share_with_previous
from swupd_repo.extract import extract_rootfs
from swupd_repo.gpt import find_partition
from swupd_repo.layout import load_layout
from swupd_repo.progress import RecordingReporter
from swupd_repo.storage import Storage
from swupd_repo.swupd import hashcache
from swupd_repo.swupd.scan import scan_tree
from swupd_repo.treemeta import Meta

MTIME = 1_700_000_000  # every file's mtime, as SOURCE_DATE_EPOCH clamping leaves it
EPOCH = {"SOURCE_DATE_EPOCH": str(MTIME)}
FLAVOURS = ("ext4", "ext3", "inline", "blockmap-1k")


def _tree(root: Path, version: int, app_variant: int = 0) -> Path:
    """os-release (VERSION_ID, same size in every version), an app whose ``app_variant``
    changes one byte (same size), 30 data files, a hard link pair; every mtime MTIME."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/share/data").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(f"NAME=Test\nVERSION_ID={version}\n")
    app = bytearray(random.Random(1).randbytes(65536))
    app[1000] = app_variant
    (root / "usr/bin/app").write_bytes(bytes(app))
    for index in range(30):
        (root / f"usr/share/data/d{index:02}").write_bytes(random.Random(index).randbytes(5000))
    os.link(root / "usr/share/data/d00", root / "usr/share/data/d00-link")
    os.setxattr(root / "usr/share/data/d01", "user.test", b"x")
    for path in (root, *root.rglob("*")):
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``a10``: version 10; ``a20``: version 20, only os-release changed; ``b20``: version 20
    with the app changed too; ``b10``: version 10 with the app changed (a forced rebuild).
    Every change keeps size and mtime."""
    work = tmp_path_factory.mktemp("hashcache")
    specs = {"a10": (10, 0), "a20": (20, 0), "b20": (20, 1), "b10": (10, 1)}
    return {name: make_dsk(_tree(work / f"tree-{name}", version, variant), work, name)
            for name, (version, variant) in specs.items()}


@pytest.fixture(autouse=True)
def _reproducible(monkeypatch) -> None:
    for key, value in EPOCH.items():
        monkeypatch.setenv(key, value)


def _extract(image: tuple[Path, Path], dest: Path) -> None:
    dsk, layout = image
    extent = find_partition(dsk, load_layout(layout).rootfs(None), RecordingReporter())
    extract_rootfs(dsk, extent.offset, extent.size, dest, RecordingReporter())


def _hashed(output: str) -> tuple[int, int]:
    """(files hashed, files from the hash cache) as a build reports them."""
    found = re.search(r"(\d+) files hashed, (\d+) from the hash cache", output)
    assert found, output
    return int(found[1]), int(found[2])


def _full_hashes(storage: Path, version: int) -> dict[str, str]:
    lines = (Storage(storage).www(version) / "Manifest.full").read_text().split("\n\n", 1)[1]
    return {f[3]: f[1] for f in (x.split("\t") for x in lines.splitlines())}


def _scanned(tree: Path) -> dict[str, str]:
    """Every regular file's hash, read from the tree now (no side file)."""
    records = scan_tree(tree, RecordingReporter()).records
    return {p: r.hash for p, r in records.items() if r.is_regular}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_extraction_hashes_equal_a_scan_of_the_tree(flavour: str, rich_images: dict,
                                                    tmp_path: Path) -> None:
    """Sparse, inline, hard-linked, xattr-carrying and special files alike."""
    tree = tmp_path / "image/10/os-core"
    _extract(rich_images[flavour], tree)
    result = scan_tree(tree, RecordingReporter(), cache_file=hashcache.cache_path(tree))
    regular = {p: r.hash for p, r in result.records.items() if r.is_regular}
    assert (result.hashed, result.cached) == (0, len(regular)) and len(regular) > 10
    assert regular == _scanned(tree)


def test_build_in_another_process_reads_no_file_and_sees_a_later_change(
        images, tmp_path: Path) -> None:
    """``extract`` then ``build`` (two processes); a file rewritten in the stored tree with
    its size and mtime kept is hashed again, the others are not."""
    storage = tmp_path / "s"
    dsk, layout = images["a10"]
    done = swupd_repo("extract", "--dsk", dsk, "--layout", layout, "--storage", storage,
                      "--version", "10")
    assert done.returncode == 0, done.stderr
    tree = Storage(storage).os_core(10)
    app = tree / "usr/bin/app"
    data = bytearray(app.read_bytes())
    data[5] ^= 0xFF
    app.write_bytes(bytes(data))
    os.utime(app, (MTIME, MTIME))
    done = swupd_repo("build", "--storage", storage, "--version", "10")
    assert done.returncode == 0, done.stderr
    assert _hashed(done.stderr) == (1, 32)
    assert _full_hashes(storage, 10)["/usr/bin/app"] == _scanned(tree)["/usr/bin/app"]
    manifest = _full_hashes(storage, 10)
    assert {p: manifest[p] for p in _scanned(tree)} == _scanned(tree)


def test_next_version_shares_by_hash_and_keeps_a_same_size_same_mtime_change(
        images, tmp_path: Path) -> None:
    """Version 20 changes the app (one byte; size and mtime kept): the sharing decides every
    file by its hash without reading it, the app keeps its own inode and gets its new hash,
    and the build hashes nothing."""
    storage = tmp_path / "s"
    done = publish(storage, images["a10"], "--version", "10")
    assert done.returncode == 0, done.stderr
    st = Storage(storage)
    _extract(images["b20"], st.os_core(20))
    stats = share_with_previous(st, 20, RecordingReporter())
    assert (stats.linked, stats.compared, stats.by_hash) == (29, 0, 31)
    old, new = st.os_core(10), st.os_core(20)
    assert (old / "usr/bin/app").stat().st_ino != (new / "usr/bin/app").stat().st_ino
    assert (old / "usr/share/data/d05").stat().st_ino == (new / "usr/share/data/d05").stat().st_ino
    done = swupd_repo("build", "--storage", storage, "--version", "20")
    assert done.returncode == 0, done.stderr
    assert _hashed(done.stderr) == (0, 33)
    v10, v20 = _full_hashes(storage, 10), _full_hashes(storage, 20)
    assert v20["/usr/bin/app"] != v10["/usr/bin/app"]
    assert {p: v20[p] for p in _scanned(new)} == _scanned(new)
    check = swupd_repo("check", "--storage", storage, "--no-check-time")
    assert check.returncode == 0, check.stdout + check.stderr


def test_publish_of_only_os_release_reads_no_file_twice(images, tmp_path: Path) -> None:
    """The extraction links each unchanged file to the previous tree's inode instead of
    writing it (decided by the hashes: d00 and its link are linked in their own tree, so they
    are written), and the build hashes nothing."""
    storage = tmp_path / "s"
    for name, version in (("a10", 10), ("a20", 20)):
        done = publish(storage, images[name], "--version", str(version))
        assert done.returncode == 0, done.stderr
    assert "30 files unchanged since" in done.stderr, done.stderr
    assert _hashed(done.stderr) == (0, 33)
    old, new = Storage(storage).os_core(10), Storage(storage).os_core(20)
    assert (old / "usr/bin/app").stat().st_ino == (new / "usr/bin/app").stat().st_ino
    assert (old / "usr/lib/os-release").stat().st_ino != \
        (new / "usr/lib/os-release").stat().st_ino
    v10, v20 = _full_hashes(storage, 10), _full_hashes(storage, 20)
    assert v20["/usr/lib/os-release"] != v10["/usr/lib/os-release"]
    assert v20["/usr/bin/app"] == v10["/usr/bin/app"]
    assert {p: v20[p] for p in _scanned(Storage(storage).os_core(20))} == \
        _scanned(Storage(storage).os_core(20))


def test_publish_links_no_file_whose_bytes_changed(images, tmp_path: Path) -> None:
    """Version 20 changes the app's bytes, not its size or mtime: the extraction writes it
    (its hash differs), links the 29 unchanged data files, and the manifest has its new hash."""
    storage = tmp_path / "s"
    for name, version in (("a10", 10), ("b20", 20)):
        done = publish(storage, images[name], "--version", str(version))
        assert done.returncode == 0, done.stderr
    assert "29 files unchanged since" in done.stderr, done.stderr
    assert _hashed(done.stderr) == (0, 33)
    old, new = Storage(storage).os_core(10), Storage(storage).os_core(20)
    assert (old / "usr/bin/app").stat().st_ino != (new / "usr/bin/app").stat().st_ino
    assert (old / "usr/bin/app").read_bytes() != (new / "usr/bin/app").read_bytes()
    v10, v20 = _full_hashes(storage, 10), _full_hashes(storage, 20)
    assert v20["/usr/bin/app"] != v10["/usr/bin/app"]
    assert {p: v20[p] for p in _scanned(new)} == _scanned(new)


def test_forced_rebuild_hashes_the_new_image(images, tmp_path: Path) -> None:
    """The image of version 10 is rebuilt with the app changed (size and mtime kept)."""
    storage = tmp_path / "s"
    done = publish(storage, images["a10"], "--version", "10")
    assert done.returncode == 0, done.stderr
    before = _full_hashes(storage, 10)
    done = publish(storage, images["b10"], "--version", "10", "--force")
    assert done.returncode == 0, done.stderr
    assert _hashed(done.stderr) == (0, 33)
    after = _full_hashes(storage, 10)
    tree = Storage(storage).os_core(10)
    assert after["/usr/bin/app"] != before["/usr/bin/app"]
    assert {p: after[p] for p in _scanned(tree)} == _scanned(tree)


def test_written_entries_wait_for_the_filesystem_clock(tmp_path: Path, monkeypatch) -> None:
    """An entry is stored only once the side file's own ctime is past the file's: a file
    changed after that gets a later ctime. One whose ctime is ahead of the clock is left out."""
    monkeypatch.setattr(hashcache, "_TICK_WAIT_S", 0.05)
    (tmp_path / "tree").mkdir()
    f = tmp_path / "tree/f"
    f.write_bytes(b"x")
    st = os.lstat(f)
    meta = Meta(0o100644, 0, 0, 0, {})
    fresh = [*hashcache.entry_key(st, meta), "h1"]
    ahead = list(fresh)
    ahead[4] = st.st_ctime_ns + 3_600_000_000_000
    path = hashcache.cache_path(tmp_path / "tree")
    assert hashcache.save_written(path, {"/f": fresh, "/g": ahead}) == 1
    assert os.stat(path).st_ctime_ns > st.st_ctime_ns
    loaded = hashcache.load(path)
    assert set(loaded) == {"/f"}
    assert hashcache.proven(loaded["/f"], os.lstat(f), meta) == "h1"
    f.write_bytes(b"y")
    assert hashcache.proven(loaded["/f"], os.lstat(f), meta) is None
