"""Storage: markers are atomic, latest is read like swupd-server reads it, leftovers are cleaned."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from pathlib import Path

import pytest

from swupd_repo.errors import StorageError, VersionError
from swupd_repo.storage import TEMP_PREFIX, Storage, read_version_file
from swupd_repo.versions import next_version, validate_new_version


def test_markers_round_trip(tmp_path) -> None:
    st = Storage(tmp_path)
    assert st.latest() == 0
    st.write_markers(10)
    assert st.latest_image_marker.read_text() == "10\n"
    assert st.latest_www_marker.read_text() == "10\n"
    assert (tmp_path / "www/version/format3/latest").is_file()
    assert st.latest() == 10
    assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]


def test_version_file_parsing(tmp_path) -> None:
    f = tmp_path / "v"
    f.write_text("")
    assert read_version_file(f) == 0
    f.write_text("20\nsomething")
    assert read_version_file(f) == 20
    f.write_text("garbage")
    with pytest.raises(StorageError, match="does not start with a version"):
        read_version_file(f)


def test_clean_leftovers(tmp_path) -> None:
    st = Storage(tmp_path)
    (st.www_dir / f"{TEMP_PREFIX}20.123").mkdir(parents=True)
    (st.www_dir / "10/delta").mkdir(parents=True)
    (st.www_dir / f"10/delta/{TEMP_PREFIX}5-10-abc.9").write_text("partial delta")
    (st.www_dir / f"10/{TEMP_PREFIX}pack-os-core-from-0.tar.9").write_text("partial pack")
    (st.image_dir / "20").mkdir(parents=True)
    (st.image_dir / f"20/{TEMP_PREFIX}os-core.9").mkdir()
    (st.www_dir / "10/Manifest.MoM").write_text("kept")
    removed = st.clean_leftovers()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == sorted([
        f"www/{TEMP_PREFIX}20.123", f"www/10/delta/{TEMP_PREFIX}5-10-abc.9",
        f"www/10/{TEMP_PREFIX}pack-os-core-from-0.tar.9", f"image/20/{TEMP_PREFIX}os-core.9"])
    assert (st.www_dir / "10/Manifest.MoM").read_text() == "kept"
    assert (st.image_dir / "20").is_dir()


def test_container_cannot_see_our_temporaries(tmp_path) -> None:
    """A forced rebuild's copies (www/<V> and image/<V>/os-core set aside) leave image/ and
    www/, which a container mounts and our generator inside it cleans, for the run."""
    from swupd_repo.backends.storage_guard import hidden_temporaries

    st = Storage(tmp_path)
    kept = [st.www_dir / f"{TEMP_PREFIX}old-20.7", st.image_dir / f"20/{TEMP_PREFIX}old-os-core.7"]
    for path in kept:
        path.mkdir(parents=True)
        (path / "data").write_text(path.name)
    hiding_place = tmp_path / "run-dir"  # the backend's own per-run directory
    hiding_place.mkdir()
    with hidden_temporaries(st, hiding_place):
        assert list(st.temporaries()) == []  # the whole storage is mounted: nothing left in sight
        for top in (st.www_dir, st.image_dir):
            assert not [p for p in top.rglob(f"{TEMP_PREFIX}*")]
    for path in kept:
        assert (path / "data").read_text() == path.name
    assert sorted(st.temporaries()) == sorted(kept)


def test_lock_refused_by_permissions_is_our_error() -> None:
    import shutil
    import tempfile

    from helpers_users import as_nobody

    root = Path(tempfile.mkdtemp(prefix="swupd-repo-lock-"))  # root's 0755: no .lock for others
    try:
        os.chmod(root, 0o755)
        outcome = as_nobody(lambda: Storage(root).lock().__enter__())
    finally:
        shutil.rmtree(root)
    assert outcome.startswith(f"StorageError: cannot lock {root}/.lock: Permission denied"), \
        outcome


def _try_lock(root: str, queue) -> None:
    try:
        with Storage(Path(root)).lock(wait=False):
            queue.put("locked")
    except StorageError as exc:
        queue.put(str(exc))


def test_lock_is_exclusive(tmp_path) -> None:
    st = Storage(tmp_path)
    queue = multiprocessing.get_context("fork").Queue()
    with st.lock():
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=_try_lock, args=(str(tmp_path), queue))
        p.start()
        p.join()
    # The child was forked while the lock was held: it holds no copy of it, and the message
    # names the holder.
    assert f"in use by another run: pid {os.getpid()} (" in queue.get(timeout=5)


def test_versions() -> None:
    assert next_version(0, 10) == 10
    assert next_version(20, 10) == 30
    validate_new_version(30, 20)
    validate_new_version(20, 20, force=True)
    with pytest.raises(VersionError, match="not greater than the latest published version 20"):
        validate_new_version(20, 20)
    with pytest.raises(VersionError):
        validate_new_version(10, 20, force=True)
    with pytest.raises(VersionError):
        validate_new_version(0, 0)


def test_a_killed_runs_unreleased_version_is_cleaned(tmp_path) -> None:
    """www/<V> left with its run's publishing flag goes when V is above latest (never
    released); a version the markers already name stays."""
    st = Storage(tmp_path)
    for v in (10, 20, 30):
        (st.www(v)).mkdir(parents=True)
        (st.www(v) / "Manifest.MoM").write_text(f"{v}")
    st.write_markers(20)
    (st.www_dir / f"{TEMP_PREFIX}publishing-30.77").touch()
    (st.www_dir / f"{TEMP_PREFIX}publishing-20.76").touch()
    st.clean_leftovers()
    assert st.published_versions() == [10, 20]
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*"))
    # A run that ends normally (released or not) leaves no flag behind.
    with st.publishing(40):
        assert list(st.www_dir.glob(f"{TEMP_PREFIX}publishing-40.*"))
    assert not list(st.www_dir.glob(f"{TEMP_PREFIX}publishing-*"))


def _lock_fds_of_child(root: str, queue) -> None:
    lock = os.stat(Path(root) / ".lock")
    mine = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/self/fd/{fd}")
            if (st.st_dev, st.st_ino) == (lock.st_dev, lock.st_ino):
                mine.append(fd)
    queue.put(mine)


def test_children_forked_under_the_lock_do_not_hold_it(tmp_path) -> None:
    st = Storage(tmp_path)
    queue = multiprocessing.get_context("fork").Queue()
    with st.lock():
        p = multiprocessing.get_context("fork").Process(target=_lock_fds_of_child,
                                                        args=(str(tmp_path), queue))
        p.start()
        p.join()
    assert queue.get(timeout=5) == []


def test_container_still_sees_the_publishing_flag(tmp_path) -> None:
    """The flag that makes a killed run's www/<V> a leftover stays in www/ while a container
    runs (a later run's clean_leftovers must find it), and comes back if the container's
    generator cleaned it."""
    from swupd_repo.backends.storage_guard import hidden_temporaries

    st = Storage(tmp_path)
    hiding_place = tmp_path / "run-dir"
    hiding_place.mkdir()
    with st.publishing(30):
        (flag,) = [p for p in st.temporaries() if st.is_publishing_flag(p)]
        with hidden_temporaries(st, hiding_place):
            assert flag.exists()
            flag.unlink()  # what `swupd-repo build` inside our image does first
        assert flag.exists()


def test_a_killed_replacement_puts_the_old_tree_back(tmp_path) -> None:
    """A forced rebuild killed half-way never committed: its half-written www/<V> goes and
    the tree it set aside (Storage.replacing) is the published one again."""
    st = Storage(tmp_path)
    www = st.www(20)
    www.mkdir(parents=True)
    (www / "Manifest.MoM").write_text("published\n")
    aside = st.www_dir / f"{TEMP_PREFIX}old-20.999999"
    www.rename(aside)
    www.mkdir()
    (www / "half-written").write_text("new\n")
    st.clean_leftovers()
    assert sorted(p.name for p in www.iterdir()) == ["Manifest.MoM"]
    assert (www / "Manifest.MoM").read_text() == "published\n"
    assert list(st.temporaries()) == []


def test_what_a_killed_container_run_hid_is_put_back(tmp_path) -> None:
    """The Docker backend hides our temporaries in its run directory for the container's
    run (hidden_temporaries, with a journal); after a kill, the next clean finds them there."""
    from swupd_repo.storage import HIDDEN_JOURNAL

    st = Storage(tmp_path)
    st.www_dir.mkdir()
    hidden = tmp_path / ".swupd-repo-docker-run.20.999999" / "hidden"
    (hidden / "0").mkdir(parents=True)
    (hidden / "0" / "Manifest.MoM").write_text("published\n")
    (hidden / HIDDEN_JOURNAL).write_text(f"0\twww/{TEMP_PREFIX}old-20.999999\n")
    st.clean_leftovers()
    assert (st.www(20) / "Manifest.MoM").read_text() == "published\n"


def test_hidden_temporaries_journal_lets_a_later_run_restore(tmp_path) -> None:
    from swupd_repo.backends.storage_guard import hidden_temporaries

    st = Storage(tmp_path)
    aside = st.www_dir / f"{TEMP_PREFIX}old-20.999999"
    aside.mkdir(parents=True)
    (aside / "Manifest.MoM").write_text("published\n")
    hidden = tmp_path / "run" / "hidden"
    hidden.mkdir(parents=True)
    with hidden_temporaries(st, hidden):
        assert not aside.exists()
        assert st.restore_hidden(hidden) == [aside]  # what the next run does after a kill
    assert (aside / "Manifest.MoM").read_text() == "published\n"
