"""Storage lifecycle: stored trees share unchanged files, prune removes what no build reads.

Real .dsk images of a small OS series (10..50, a few files changed per version), published
with the real CLI into real storages; the SIGKILL is a real signal to a real prune process.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from helpers_cli import publish, swupd_repo
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.treemeta import load, record_path

VERSIONS = (10, 20, 30, 40, 50)
#: Which data files change in which version; 50 changes files last changed in 10, 20 and 40,
#: so its deltas start from trees a prune removes.
CHANGES = {10: set(range(12)), 20: {1, 2}, 30: {3}, 40: {4}, 50: {0, 1, 4}}
MTIME = 1_600_000_000
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def _content(index: int, last_change: int) -> bytes:
    data = bytearray(random.Random(index).randbytes(16384))
    data[100:110] = f"v{last_change:08}".encode()
    return bytes(data)


def make_version_tree(root: Path, version: int, many: int = 0) -> Path:
    """The tree of ``version``: os-release, 12 data files at their last change, ``many`` tiny
    files (so removing a tree takes long enough to be interrupted)."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/share/data").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(f"NAME=Test\nVERSION_ID={version}\n")
    os.utime(root / "usr/lib/os-release", (MTIME + version, MTIME + version))
    for index in range(12):
        last = max(v for v in VERSIONS if v <= version and index in CHANGES[v])
        path = root / f"usr/share/data/f{index:02}"
        path.write_bytes(_content(index, last))
        os.utime(path, (MTIME + last, MTIME + last))
    if version >= 20:  # same bytes, other owner and mode: only the record says so
        os.chown(root / "usr/share/data/f05", 1234, 1234)
        os.chmod(root / "usr/share/data/f05", 0o600)
    if many:
        (root / "usr/share/many").mkdir()
        for index in range(many):
            path = root / f"usr/share/many/n{index}"
            path.write_text(f"{index}\n")
            os.utime(path, (MTIME, MTIME))
    return root


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """``{V: (dsk, layout)}`` for V in 10..50."""
    from dsk import make_dsk

    work = tmp_path_factory.mktemp("series")
    return {v: make_dsk(make_version_tree(work / f"tree-{v}", v, many=1500), work,
                        f"img-{v}", rootfs_mb=32) for v in VERSIONS}


@pytest.fixture(autouse=True)
def _reproducible(monkeypatch) -> None:
    for key, value in EPOCH.items():
        monkeypatch.setenv(key, value)


def _publish_all(storage: Path, series, versions, *extra: str) -> None:
    for version in versions:
        done = publish(storage, series[version], "--version", str(version), *extra)
        assert done.returncode == 0, done.stderr


def _tree_digest(tree: Path) -> dict[str, tuple[int, str]]:
    """Every path of a stored tree: its disk mode and content digest, plus the record."""
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(tree))] = (st.st_mode, hashlib.sha256(data).hexdigest())
    out["<record>"] = (0, hashlib.sha256(record_path(tree).read_bytes()).hexdigest())
    return out


def test_unchanged_files_share_the_previous_versions_inode(tmp_path, series) -> None:
    storage = tmp_path / "s"
    _publish_all(storage, series, (10, 20))
    st = Storage(storage)
    old, new = st.os_core(10), st.os_core(20)
    for index in range(12):
        a = (old / f"usr/share/data/f{index:02}").stat()
        b = (new / f"usr/share/data/f{index:02}").stat()
        assert ((a.st_ino == b.st_ino) == (index not in CHANGES[20])), index
    shared = (new / "usr/share/data/f00").stat()
    assert shared.st_nlink == 2 and not shared.st_mode & 0o222
    assert (old / "usr/share/many/n7").stat().st_ino == (new / "usr/share/many/n7").stat().st_ino
    # f05 changed owner and mode, not content: it shares the inode, each version keeps its
    # metadata in its record, and the manifests tell the two apart
    assert (old / "usr/share/data/f05").stat().st_ino == (new / "usr/share/data/f05").stat().st_ino
    assert load(old).get("/usr/share/data/f05")[:3] == (0o100644, 0, 0)
    assert load(new).get("/usr/share/data/f05")[:3] == (0o100600, 1234, 1234)
    lines = {v: next(x.split("\t") for x in (st.www(v) / "Manifest.full").read_text()
                     .splitlines() if x.endswith("/usr/share/data/f05")) for v in (10, 20)}
    assert lines[10][1] != lines[20][1] and lines[20][2] == "20"
    check = swupd_repo("check", "--storage", storage, "--no-check-time")
    assert check.returncode == 0, check.stdout + check.stderr


def test_writers_into_latest_leave_older_versions_unchanged(tmp_path, series) -> None:
    """Each way a tree is written: a container's rsync (a new file renamed over the old name,
    rsync's default: the real container runs rsync without --inplace) and its ``hardlink``
    step (docker-contract.md), a forced re-extraction, a forced rebuild (hash cache, full
    link) of the newest tree."""
    storage = tmp_path / "s"
    _publish_all(storage, series, (10,))
    done = publish(storage, series[20], "--version", "20")
    assert done.returncode == 0, done.stderr
    # the writers below meet inodes linked while extracting (not by dedup's later pass)
    assert "linked instead of written" in done.stdout + done.stderr
    st = Storage(storage)
    _assert_shared_read_only(st, "usr/share/data/f00")
    before = _tree_digest(st.os_core(10))
    # rsync's way: write a temporary file beside the target, rename it over
    target = st.os_core(20) / "usr/share/data/f00"
    tmp = target.with_name(".f00.rsync")
    tmp.write_bytes(b"changed by a container\n")
    os.rename(tmp, target)
    assert _tree_digest(st.os_core(10)) == before
    # the real container's last step: util-linux hardlink over the new and previous trees
    for args in ([st.image(20)], [st.image(10), st.image(20)]):
        subprocess.run(["hardlink", *map(str, args)], check=True, capture_output=True)
    assert _tree_digest(st.os_core(10)) == before
    again = publish(storage, series[20], "--version", "20", "--force")
    assert again.returncode == 0, again.stderr
    assert "linked instead of written" in again.stdout + again.stderr
    assert _tree_digest(st.os_core(10)) == before
    _assert_shared_read_only(st, "usr/share/data/f00")
    rebuilt = swupd_repo("build", "--storage", storage, "--version", "20", "--force")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert _tree_digest(st.os_core(10)) == before
    assert (st.os_core(10) / "usr/share/data/f00").stat().st_ino == \
        (st.os_core(20) / "usr/share/data/f00").stat().st_ino  # shared again after the rebuild


def _assert_shared_read_only(st: Storage, path: str) -> None:
    """Versions 10 and 20 share ``path``'s inode, and no write bit is left on it."""
    old, new = (st.os_core(v) / path for v in (10, 20))
    assert old.stat().st_ino == new.stat().st_ino
    assert old.stat().st_mode & 0o222 == 0


def _disk_usage(root: Path) -> int:
    """Bytes on disk below ``root``, each inode once (``du`` without apparent sizes)."""
    done = subprocess.run(["du", "-s", "-B1", str(root)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[0])


def _www_files(storage: Path, version: int) -> dict[str, object]:
    """``www/<version>`` and every delta file: bytes, or for a tar its members (name, mode,
    data) without their mtimes, which are when the file was written (a delta made later).
    Dotfiles are left out: they are the generator's own bookkeeping (the pack-reuse index,
    which names its sources' sizes and mtimes), never served to devices."""
    www = storage / "www"
    out: dict[str, object] = {}
    for path in sorted((www / str(version)).rglob("*")):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.name.endswith(".tar"):
            with tarfile.open(path) as tar:
                out[str(path.relative_to(www))] = [
                    (m.name, m.mode, m.type, tar.extractfile(m).read() if m.isfile() else b"")
                    for m in tar.getmembers()]
        elif path.is_file():
            out[str(path.relative_to(www))] = path.read_bytes()
    for path in sorted(www.glob("*/delta/*")):
        out[str(path.relative_to(www))] = path.read_bytes()
    return out


def test_a_build_after_prune_writes_the_same_delta_packs(tmp_path, series) -> None:
    plain, pruned = tmp_path / "plain", tmp_path / "pruned"
    _publish_all(plain, series, VERSIONS)
    _publish_all(pruned, series, VERSIONS[:-1])
    dry = swupd_repo("prune", "--storage", pruned, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {pruned / 'image/10'}" in dry.stdout
    assert Storage(pruned).os_core(10).is_dir()  # a dry run changes nothing
    on_disk = _disk_usage(pruned / "image")
    done = swupd_repo("prune", "--storage", pruned)
    assert done.returncode == 0, done.stderr
    st = Storage(pruned)
    assert sorted(int(p.name) for p in st.image_dir.iterdir() if p.name.isdigit()) == [30, 40]
    freed = int(done.stdout.strip().splitlines()[-1].split()[-2])
    assert dry.stdout.strip().splitlines()[-1].split()[-2] == str(freed)
    # what was reported is what went: shared inodes still linked from 30/40 are not counted
    assert freed == on_disk - _disk_usage(pruned / "image") > 0
    _publish_all(pruned, series, VERSIONS[-1:])
    ours, theirs = _www_files(pruned, 50), _www_files(plain, 50)
    assert [n for n in theirs if "/delta/" in n and n.startswith("50/")]  # deltas were made
    assert ours.keys() == theirs.keys()
    assert [n for n in ours if ours[n] != theirs[n]] == []
    check = swupd_repo("check", "--storage", pruned, "--no-check-time")
    assert check.returncode == 0, check.stdout + check.stderr


def test_keep_trees_setting_prunes_after_each_publish(tmp_path, series) -> None:
    storage = tmp_path / "s"
    _publish_all(storage, series, (10, 20, 30), "--keep-trees", "1")
    st = Storage(storage)
    assert sorted(int(p.name) for p in st.image_dir.iterdir() if p.name.isdigit()) == [20, 30]
    status = swupd_repo("status", "--storage", storage)
    assert status.returncode == 0, status.stderr
    assert "prune --keep 1 would remove nothing" in status.stdout
    rows = {int(line.split()[0]): [float(x) for x in line.split()[1:]]
            for line in status.stdout.splitlines() if line.split()[0].isdigit()}
    assert sorted(rows) == [10, 20, 30]
    assert rows[10][0] == 0 and rows[10][3] > 0  # its tree is gone, its www/ is not
    image, shared, own, _www = rows[30]
    assert shared > own > 0 and abs(image - shared - own) < 0.11


def test_sigkill_during_prune_leaves_a_valid_storage(tmp_path, series) -> None:
    storage = tmp_path / "s"
    _publish_all(storage, series, (10, 20, 30, 40))
    st = Storage(storage)
    proc = subprocess.Popen([sys.executable, "-m", "swupd_repo.cli", "prune", "--storage",
                             storage], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    caught = False
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f"{TEMP_PREFIX}pruned-") for p in st.image_dir.iterdir()):
            caught = True
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught, "prune finished before it could be interrupted"
    # every remaining tree is whole: its record matches it
    for version in (30, 40):
        assert load(st.os_core(version)) is not None
    check = swupd_repo("check", "--storage", storage, "--no-check-time")
    assert check.returncode == 0, check.stdout + check.stderr
    again = swupd_repo("prune", "--storage", storage)
    assert again.returncode == 0, again.stderr
    assert "left by an interrupted run" in again.stderr + again.stdout
    assert not list(st.image_dir.glob(f"{TEMP_PREFIX}*"))
    assert sorted(int(p.name) for p in st.image_dir.iterdir() if p.name.isdigit()) == [30, 40]


def _linked_while_extracting(output: str) -> int:
    """The count of the publish's "N files unchanged since ..., linked instead of written"."""
    line = next(x for x in output.splitlines() if "linked instead of written" in x)
    return int(line.split("; ")[-1].split()[0])


def test_pruning_keeps_the_next_extraction_sharing(tmp_path, series) -> None:
    """Removing a tree unlinks the inodes it shared with the kept trees, which moves their
    ctime: the kept tree's side file of hashes must still let the next extraction link its
    unchanged files instead of writing them (as it does without pruning)."""
    plain, pruned = tmp_path / "plain", tmp_path / "pruned"
    counts = {}
    for storage, extra in ((plain, ()), (pruned, ("--keep-trees", "1"))):
        _publish_all(storage, series, (10, 20, 30), *extra)  # pruned: 10 goes after 30
        assert Storage(storage).os_core(10).exists() == (storage == plain)
        done = publish(storage, series[40], "--version", "40", *extra)
        assert done.returncode == 0, done.stderr
        counts[storage] = _linked_while_extracting(done.stdout + done.stderr)
    assert counts[plain] > 1000
    assert counts[pruned] == counts[plain]


def test_a_stored_file_changed_in_place_is_not_linked(tmp_path, series) -> None:
    """A file of the previous tree rewritten in place with its size and mtime kept (its
    ctime moved, as after a prune): the next extraction reads it, finds other bytes and
    writes the image's file instead of linking to the changed inode."""
    storage = tmp_path / "s"
    _publish_all(storage, series, (10,))
    st = Storage(storage)
    old = st.os_core(10) / "usr/share/data/f00"
    original, mtime = old.read_bytes(), old.stat().st_mtime_ns
    with open(old, "r+b") as f:  # through the inode, as a careless user's editor would
        f.write(b"X" * 16)
    os.utime(old, ns=(mtime, mtime))
    done = publish(storage, series[20], "--version", "20")
    assert done.returncode == 0, done.stderr
    new = st.os_core(20) / "usr/share/data/f00"
    assert new.stat().st_ino != old.stat().st_ino
    assert new.read_bytes() == original
