"""The whole job outside BitBake: ``swupd-repo publish`` from real .dsk images.

Disk image -> GPT -> ext4 extraction -> native generator -> markers must give exactly what
the real swupd-server gave for the same trees (the vectors), and every refusal or interruption
must leave the storage as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_cli import publish, swupd_repo
from helpers_trees import snapshot
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.swupd.manifest import manifest_hash, parse_manifest


def _strip_timestamp(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if not line.startswith(b"timestamp:")]


def _drop_hash(line: bytes) -> bytes:
    fields = line.split(b"\t")
    return b"\t".join(fields[:1] + fields[2:]) if line.startswith(b"M...") else line


@pytest.fixture(scope="module")
def published(tmp_path_factory, vector_images) -> Path:
    """A storage with versions 10 and 20 published from the two images."""
    storage = tmp_path_factory.mktemp("storage")
    for version in (10, 20):
        done = publish(storage, vector_images[version])
        assert done.returncode == 0, done.stderr
        assert f"published version {version}" in done.stdout
    return storage


def test_disk_images_give_the_real_servers_manifests(published, vectors) -> None:
    st = Storage(published)
    assert st.latest_image_marker.read_text() == "20\n"
    assert st.latest_www_marker.read_text() == "20\n"
    assert st.published_versions() == [10, 20]
    for version in (10, 20):
        for name in ("Manifest.MoM", "Manifest.os-core", "Manifest.full"):
            ours = (st.www(version) / name).read_bytes()
            theirs = (vectors / "manifests" / str(version) / name).read_bytes()
            ours_lines, their_lines = _strip_timestamp(ours), _strip_timestamp(theirs)
            if name == "Manifest.MoM":  # its M hash covers the os-core manifest's timestamp
                lines = parse_manifest(ours).entries
                assert lines
                for line in lines:
                    plain = st.www(line.last_change) / f"Manifest.{line.path}"
                    assert line.hash == manifest_hash(plain.read_bytes()), (version, line.path)
                ours_lines = [_drop_hash(line) for line in ours_lines]
                their_lines = [_drop_hash(line) for line in their_lines]
            assert ours_lines == their_lines, (version, name)
    assert not list(published.rglob(f"{TEMP_PREFIX}*"))


def test_stale_image_and_old_version_are_refused_without_changes(published, vector_images) -> None:
    before = snapshot(published)
    stale = publish(published, vector_images[10])  # would become 30, but the image says 10
    assert stale.returncode == 2
    assert "VERSION_ID=10" in stale.stderr and "OS_VERSION" in stale.stderr
    old = publish(published, vector_images[20], "--version", "20")
    assert old.returncode == 2
    assert "not greater than the latest published version 20" in old.stderr
    assert snapshot(published) == before


def test_extract_refuses_a_published_versions_tree(published, vector_images) -> None:
    before = snapshot(published)
    dsk, layout = vector_images[20]
    done = swupd_repo("extract", "--dsk", dsk, "--layout", layout, "--storage", published,
                      "--version", "10", "--force")
    assert done.returncode == 2
    assert "belongs to published version 10" in done.stderr
    assert snapshot(published) == before


def test_bad_layout_names_the_file(published, vector_images, tmp_path) -> None:
    bad = tmp_path / "disk-layout.json"
    bad.write_text('{"partition_05_rootfs": {"name": "rootfs",,}}')
    before = snapshot(published)
    done = publish(published, (vector_images[20][0], bad))
    assert done.returncode == 2
    assert str(bad) in done.stderr and "line 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(published) == before


def test_killed_run_leaves_latest_and_is_cleaned_by_the_next(tmp_path, vector_images) -> None:
    storage = tmp_path / "storage"
    assert publish(storage, vector_images[10]).returncode == 0
    before = snapshot(storage)
    dsk, layout = vector_images[20]
    proc = subprocess.Popen([sys.executable, "-m", "swupd_repo.cli", "publish", "--dsk", dsk,
                             "--layout", layout, "--storage", storage],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill it as soon as it has started writing version 20 (extraction or generation).
    while time.monotonic() < deadline and proc.poll() is None:
        if list(storage.rglob(f"{TEMP_PREFIX}*")) or (storage / "image/20").exists():
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = Storage(storage)
    assert st.latest() == 10
    assert not st.www(20).exists()
    assert {k: v for k, v in snapshot(storage).items() if k.startswith(("www/10", "www/version",
            "image/10", "image/latest"))} == {k: v for k, v in before.items() if k.startswith(
            ("www/10", "www/version", "image/10", "image/latest"))}
    again = publish(storage, vector_images[20])
    assert again.returncode == 0, again.stderr
    assert st.latest() == 20
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))


def test_bad_input_creates_nothing_in_the_storage(vector_images, tmp_path) -> None:
    """A wrong --layout, --partition or --dsk is refused before the storage (or its lock
    file) is created."""
    storage = tmp_path / "storage"
    dsk, layout = vector_images[10]
    bad = tmp_path / "disk-layout.json"
    bad.write_text("[1, 2")
    for args in ((dsk, bad), (dsk, tmp_path / "missing.json"), (tmp_path / "missing.dsk", layout)):
        done = publish(storage, args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    done = publish(storage, vector_images[10], "--partition", "99")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not storage.exists()


def test_a_waiting_publish_says_whom_it_waits_for(vector_images, tmp_path) -> None:
    """While another run holds the storage: --no-wait fails at once naming the holder; a
    plain publish says whom it waits for and what that run is doing, then goes on."""
    storage = Storage(tmp_path / "storage")
    with storage.lock() as held:
        held.status("writing fullfiles")
        refused = publish(storage.root, vector_images[10], "--no-wait")
        assert refused.returncode == 2
        assert (f"in use by another run: pid {os.getpid()} (" in refused.stderr
                and "now writing fullfiles" in refused.stderr), refused.stderr
        assert not (storage.root / "image").exists()

        dsk, layout = vector_images[10]
        proc = subprocess.Popen(
            [sys.executable, "-m", "swupd_repo.cli", "publish", "--dsk", dsk, "--layout",
             layout, "--storage", storage.root], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stderr.readline()
            assert f"pid {os.getpid()}" in first and "now writing fullfiles" in first, first
            assert "waiting" in first, first
            held.status("zero pack os-core")  # the waiting run follows the holder's progress
            second = proc.stderr.readline()
            assert "still waiting" in second and "now zero pack os-core" in second, second
            assert proc.poll() is None and not (storage.root / "image").exists()
        except BaseException:
            proc.kill()
            raise
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest
    assert storage.latest() == 10


def test_jobs_beyond_the_cores_start_one_worker_per_core(tmp_path, vector_images) -> None:
    """``--jobs 100000`` starts no more worker processes than there are usable cores."""
    from helpers_runs import group, kill_group, start_paused
    from swupd_repo.swupd.workpool import usable_cores

    storage = tmp_path / "storage"
    # (fullfiles, not hashing: after an extraction the build has no file left to hash)
    proc = start_paused(storage, vector_images[10], "writing fullfiles|workers", jobs=100000)
    try:
        assert 1 < len(group(proc.pid)) <= 1 + usable_cores()
    finally:
        kill_group(proc.pid)
        proc.wait()


def test_every_option_has_help() -> None:
    """``--help`` explains every flag of the commands that publish (the signing ones too)."""
    from swupd_repo.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "publish" in a.choices)
    for name in ("publish", "build", "extract"):
        missing = [a.option_strings for a in subparsers.choices[name]._actions
                   if a.option_strings and not a.help]
        assert not missing, (name, missing)
