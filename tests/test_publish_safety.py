"""Publishing loses nothing: a failed forced rebuild restores what was published (the release
gate's refusals are in test_builder and test_check)."""

from __future__ import annotations

import contextlib
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_cli import publish, swupd_repo
from helpers_runs import group, kill_group, start_paused
from helpers_trees import snapshot
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.treemeta import load, record_path


def test_failed_forced_rebuild_keeps_the_published_tree(tmp_path, vector_images) -> None:
    storage = tmp_path / "storage"
    assert publish(storage, vector_images[10]).returncode == 0
    st = Storage(storage)
    before_tree = snapshot(st.os_core(10), times=True)
    before_www = snapshot(st.www(10), times=True)
    before_record = record_path(st.os_core(10)).read_bytes()
    # Rebuilding 10 from an image that says VERSION_ID=20 fails after extraction.
    done = publish(storage, vector_images[20], "--version", "10", "--force")
    assert done.returncode == 2 and "VERSION_ID=20" in done.stderr
    assert snapshot(st.os_core(10), times=True) == before_tree
    assert snapshot(st.www(10), times=True) == before_www
    # the tree's metadata record came back with it (the failed run had written 20's)
    assert record_path(st.os_core(10)).read_bytes() == before_record
    assert load(st.os_core(10)) is not None
    assert st.latest() == 10
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
    # A forced rebuild that succeeds replaces it and leaves nothing aside.
    again = publish(storage, vector_images[10], "--version", "10", "--force")
    assert again.returncode == 0, again.stderr
    assert st.latest() == 10 and (st.www(10) / "Manifest.MoM").is_file()
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))


# --------------------------------------------------------------------------- killed and full
#
# A run is stopped at a chosen step through the pipeline's test pause point
# (SWUPD_REPO_TEST_PAUSE, see swupd_repo.runreporter): the run prints "paused at <step>" and
# waits, so the test kills it, or fills its filesystem and lets it go on, at exactly that
# step. "|workers" pauses at the step's first progress while pool workers are alive (the
# processes that used to inherit the lock).

#: Step -> pause point. Hashing, fullfiles and manifests run in one pool; the packs and the
#: deltas start their own. After an extraction the build has no file left to hash (the
#: extraction hashed them), so the hashing step is stopped at its start.
KILL_POINTS = {
    "extraction": "extracting partition",
    "hashing": "hashing files",
    "manifests": "writing manifests",
    "fullfiles": "writing fullfiles|workers",
    "zero pack": "zero pack|workers",
    "delta packs": "delta pack",  # small enough to be compressed inline: no workers
    "markers": "moving latest",
}


@pytest.fixture(scope="module")
def image_30(tmp_path_factory, rootfs_trees) -> tuple[Path, Path]:
    """Version 20's tree with VERSION_ID=30, changed programs (deltas) and 40 new files of
    random bytes, so every pool of the run has more than one job."""
    from conftest import copy_tree
    from dsk import make_dsk

    work = tmp_path_factory.mktemp("v30")
    tree = copy_tree(rootfs_trees[20], work / "tree")
    (tree / "usr/lib/os-release").write_text('NAME="Oracle Test OS"\nVERSION_ID=30\n')
    rng = random.Random(30)
    for prog in sorted((tree / "usr/bin").glob("prog*"))[:8]:
        with prog.open("ab") as f:
            f.write(rng.randbytes(4096))
    new = tree / "usr/share/new"
    new.mkdir()
    for i in range(40):
        (new / f"blob{i}").write_bytes(rng.randbytes(rng.randrange(20_000, 200_000)))
    return make_dsk(tree, work, "ostro-image-30", rootfs_mb=48)


@pytest.fixture(scope="module")
def history(tmp_path_factory, vector_images) -> Path:
    """A storage with versions 10 and 20 published (copy it before changing it)."""
    storage = tmp_path_factory.mktemp("history") / "storage"
    for v in (10, 20):
        done = publish(storage, vector_images[v], "--jobs", "2")
        assert done.returncode == 0, done.stderr
    return storage


def _earlier(storage: Path) -> dict[str, tuple]:
    """Every file and symlink of versions 10 and 20 (directories grow: deltas are added).

    A stored tree's metadata is its record (``image/<V>/os-core.meta``, compared whole):
    the disk mode of its files is not, and a later version sharing a file's inode clears
    its write bits (:mod:`swupd_repo.dedup`), so those bits are left out of the comparison.
    """
    found = {}
    for top in ("www/10", "www/20", "image/10", "image/20"):
        for path, entry in snapshot(storage / top).items():
            if entry[0] == stat.S_IFREG and top.startswith("image/") and \
                    path.startswith("os-core/"):
                entry = (entry[0], entry[1] & ~0o222, *entry[2:])
            if entry[0] != stat.S_IFDIR:
                found[f"{top}/{path}"] = entry
    found["markers"] = Storage(storage).latest()
    return found


def _earlier_intact(before: dict[str, tuple], storage: Path) -> None:
    after = _earlier(storage)
    changed = [k for k in before if k != "markers" and after.get(k) != before[k]]
    assert not changed, changed


@pytest.mark.parametrize("step", list(KILL_POINTS))
def test_sigkill_at_each_step_leaves_no_process_and_a_free_lock(step, tmp_path, history,
                                                                 image_30) -> None:
    from conftest import copy_tree

    storage = copy_tree(history, tmp_path / "storage")
    before = _earlier(storage)
    proc = start_paused(storage, image_30, KILL_POINTS[step])
    try:
        # (at the start of "writing manifests" the pool may not have started: after an
        # extraction the build hashes nothing; "fullfiles" kills it with workers alive)
        if "|workers" in KILL_POINTS[step]:
            assert len(group(proc.pid)) > 1, "the pause point should have workers alive"
        proc.kill()  # what `kill -9 <pid of swupd-repo publish>` does: the workers stay
        proc.wait()
        deadline = time.monotonic() + 10
        while group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group(proc.pid) == [], f"processes of the killed run are left at {step}"
        assert Storage(storage).latest() == 20
        _earlier_intact(before, storage)
        # The lock is free at once: a run that refuses to wait gets it.
        again = publish(storage, image_30, "--no-wait", "--jobs", "2")
        assert again.returncode == 0, again.stderr
    finally:
        kill_group(proc.pid)  # whatever a failing run left, for the next tests
    assert Storage(storage).latest() == 30
    _earlier_intact(before, storage)
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))


@pytest.mark.parametrize("step", ["hashing files", "zero pack",
                                  "moving latest"])
def test_a_killed_forced_rebuild_leaves_the_published_version(step, tmp_path, history,
                                                              vector_images) -> None:
    """``publish --force`` of the published 20 sets its www/20 and tree aside; killed before
    it committed, the next run puts them back (it used to remove them as leftovers)."""
    from conftest import copy_tree

    storage = copy_tree(history, tmp_path / "storage")
    before = _earlier(storage)
    proc = start_paused(storage, vector_images[20], step, None, "--version", "20", "--force")
    try:
        proc.kill()
        proc.wait()
    finally:
        kill_group(proc.pid)
    cleaned = swupd_repo("prune", "--storage", storage, "--dry-run")  # cleans, changes nothing
    assert cleaned.returncode == 0, cleaned.stderr
    _earlier_intact(before, storage)
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))


#: Step -> pause point where the storage's filesystem is filled (every writing step).
FULL_POINTS = {
    "extraction": "extracting partition",
    "hash cache": "hashing files",
    "manifests": "writing manifests",
    "fullfiles": "writing fullfiles",
    "zero pack": "zero pack",
    "delta packs": "delta pack",
    "markers": "moving latest",
}


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A real, size-limited filesystem (tmpfs, 200 MiB) to hold the storage; root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """Take every free byte of ``fs`` (the kernel says ENOSPC, as on a full disk)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096):  # big writes, then the last pages
            data = b"\xff" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, data)
    finally:
        os.close(fd)
    assert os.statvfs(fs).f_bavail == 0
    return filler


def _one_line_error(stderr: str, storage: Path) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("swupd-repo: error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    assert str(storage) in errors[0] and "No space left on device" in errors[0], errors[0]
    assert "free space" in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("step", list(FULL_POINTS))
def test_full_disk_at_each_writing_step_is_one_line(step, tmp_path, small_fs, history,
                                                    image_30) -> None:
    from conftest import copy_tree

    storage = copy_tree(history, small_fs / "storage")
    before = _earlier(storage)
    resume = tmp_path / "resume"
    proc = start_paused(storage, image_30, FULL_POINTS[step], resume)
    try:
        filler = _fill(small_fs)
        resume.touch()
        _, rest = proc.communicate(timeout=300)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 2, rest
    _one_line_error(rest, storage)
    assert Storage(storage).latest() == 20 and not (storage / "www/30").exists()
    _earlier_intact(before, storage)
    # Once there is space again, the same publish goes through.
    filler.unlink()
    again = publish(storage, image_30, "--no-wait", "--jobs", "2")
    assert again.returncode == 0, again.stderr
    assert Storage(storage).latest() == 30
    _earlier_intact(before, storage)
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))


def test_storage_too_small_for_the_image(tmp_path, small_fs, vector_images) -> None:
    """A storage that cannot even hold the extracted rootfs: one line, nothing left."""
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_fs)], check=True)
    storage = small_fs / "storage"
    done = publish(storage, vector_images[10], "--jobs", "2")
    assert done.returncode == 2
    _one_line_error(done.stderr, storage)
    assert Storage(storage).latest() == 0 and not (storage / "image/10").exists()


def test_read_only_storage_mid_run_is_one_line(tmp_path, history, image_30) -> None:
    """``www/`` turns read-only while fullfiles are written (as a filesystem does after an
    I/O error): one line saying so, and after a remount read-write the next publish works.
    ``www/`` is its own tmpfs here: the lock file, open for writing, keeps the storage's
    root from being remounted."""
    from conftest import copy_tree

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    storage = copy_tree(history, tmp_path / "storage")
    www = storage / "www"
    www.rename(tmp_path / "www.orig")
    www.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(www)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{tmp_path}/www.orig/.", str(www)], check=True)
        before = _earlier(storage)
        resume = tmp_path / "resume"
        proc = start_paused(storage, image_30, "writing fullfiles", resume)
        try:
            subprocess.run(["mount", "-o", "remount,ro", str(www)], check=True)
            resume.touch()
            _, rest = proc.communicate(timeout=300)
        finally:
            kill_group(proc.pid)
            subprocess.run(["mount", "-o", "remount,rw", str(www)], check=True)
        assert proc.returncode == 2, rest
        assert "Traceback" not in rest, rest
        error = rest.rstrip().splitlines()[-1]
        assert error.startswith("swupd-repo: error: ") and "Read-only file system" in error
        assert str(storage) in error and "read-write" in error, error
        assert Storage(storage).latest() == 20 and not (storage / "www/30").exists()
        _earlier_intact(before, storage)
        again = publish(storage, image_30, "--no-wait", "--jobs", "2")
        assert again.returncode == 0, again.stderr
        _earlier_intact(before, storage)
        assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
    finally:
        subprocess.run(["umount", "-l", str(www)], check=False)


@pytest.mark.parametrize("files", [3, 600])
def test_staged_tree_is_fsynced_file_by_file_unless_large(tmp_path, monkeypatch, files) -> None:
    """A few staged files get an fsync each (a syncfs would also flush e.g. a freshly
    extracted image tree the www version does not need); beyond FSYNC_EACH_MAX, one syncfs.
    os.fsync is only observed: every call still reaches the kernel."""
    from swupd_repo.swupd import publish as pub

    staging = tmp_path / "staging"
    (staging / "files").mkdir(parents=True)
    for i in range(files):
        (staging / "files" / f"{i}.tar").write_bytes(b"x")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(pub.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    syncfs_calls: list[Path] = []
    real_syncfs = pub._syncfs
    monkeypatch.setattr(pub, "_syncfs", lambda root: (syncfs_calls.append(root),
                                                       real_syncfs(root))[1])
    pub._fsync_tree_dirs(staging)
    if files <= pub.FSYNC_EACH_MAX:
        assert syncfs_calls == []
        assert len(synced) == files + 2  # and both directories
    else:
        assert syncfs_calls == [staging]
