"""Rebase versions and retiring old versions from ``www/`` (issue 13).

Real .dsk images of a small OS series (10..50; 30 is published with ``--rebase``), published
with the real CLI into real storages; devices are the real client (``swupd-repo client``)
talking to a real ``swupd-repo serve`` over HTTP on 127.0.0.1; the SIGKILL is a real signal
to a real prune process stopped at a chosen step by the test pause hook.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers_cli import publish, swupd_repo
from helpers_runs import kill_group
from swupd_repo.client.compare import compare_trees, skip_for
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.swupd.manifest import parse_manifest
from swupd_repo.treemeta import load

VERSIONS = (10, 20, 30, 40, 50)
REBASE = 30
#: Which data files change in which version (30, the rebase, changes one as well).
CHANGES = {10: set(range(8)), 20: {1, 2}, 30: {3}, 40: {4}, 50: {0, 1, 5}}
MTIME = 1_600_000_000
#: The small files a retired version keeps (no packs, files/ or delta/).
KEPT_NAMES = {"Manifest.MoM", "Manifest.MoM.tar", "Manifest.full", "Manifest.full.tar",
              "Manifest.os-core", "Manifest.os-core.tar", "format", "swupd-server-src-version"}


def _content(index: int, last_change: int) -> bytes:
    data = bytearray(random.Random(index).randbytes(16384))
    data[100:110] = f"v{last_change:08}".encode()
    return bytes(data)


def make_version_tree(root: Path, version: int) -> Path:
    """os-release, 8 data files at their last change; ``gone`` lives in 10 only (a deletion
    carried across the rebase), ``added`` from 40 on."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/share/data").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(f"NAME=Test\nVERSION_ID={version}\n")
    os.utime(root / "usr/lib/os-release", (MTIME + version, MTIME + version))
    for index in range(8):
        last = max(v for v in VERSIONS if v <= version and index in CHANGES[v])
        path = root / f"usr/share/data/f{index:02}"
        path.write_bytes(_content(index, last))
        os.utime(path, (MTIME + last, MTIME + last))
    extra = {"gone": "only in 10\n"} if version == 10 else {}
    if version >= 40:
        extra["added"] = "from 40 on\n"
    for name, text in extra.items():
        (root / "usr/share/data" / name).write_text(text)
        os.utime(root / "usr/share/data" / name, (MTIME, MTIME))
    return root


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    from dsk import make_dsk

    work = tmp_path_factory.mktemp("rebase-series")
    return {v: make_dsk(make_version_tree(work / f"tree-{v}", v), work, f"img-{v}",
                        rootfs_mb=16) for v in VERSIONS}


@pytest.fixture(autouse=True)
def _reproducible(monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def _publish(storage: Path, series, versions, *extra: str) -> None:
    for version in versions:
        flags = ("--rebase",) if version == REBASE else ()
        done = publish(storage, series[version], "--version", str(version), *flags, *extra)
        assert done.returncode == 0, done.stderr


def _manifest(storage: Path, version: int, name: str):
    return parse_manifest((Storage(storage).www(version) / f"Manifest.{name}").read_bytes())


def _du(root: Path) -> int:
    done = subprocess.run(["du", "-s", "-B1", str(root)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[0])


def _check(storage: Path) -> subprocess.CompletedProcess:
    done = swupd_repo("check", "--storage", storage, "--no-check-time")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _served(storage: Path):
    """``swupd-repo serve`` of the storage in its own process; yields the URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "swupd_repo.cli", "serve", "--storage",
                             str(storage), "--port", str(port), "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "version/format3/latest", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no server"
                time.sleep(0.1)
        yield url
    finally:
        kill_group(proc.pid)
        proc.wait()


def _client(*args: str | os.PathLike) -> None:
    done = swupd_repo("client", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def _assert_equals_latest(storage: Path, root: Path) -> None:
    st = Storage(storage)
    latest = st.latest()
    entries = _manifest(storage, latest, "full").by_path()
    image = st.os_core(latest)
    assert compare_trees(root, image, skip_for(entries), load(image)) == []
    assert (root / "usr/lib/os-release").read_text().endswith(f"VERSION_ID={latest}\n")


def test_rebase_retire_and_devices_on_retired_versions(tmp_path, series) -> None:
    storage = tmp_path / "s"
    st = Storage(storage)
    _publish(storage, series, VERSIONS[:4])
    # the rebase: every live entry changed in 30, with its fullfile there; the deletion of
    # 20 keeps its version (it ties nothing to www/20)
    for name in ("os-core", "full"):
        manifest = _manifest(storage, REBASE, name)
        live = [e for e in manifest.entries if not e.deleted]
        assert live and {e.last_change for e in live} == {REBASE}
        assert [(e.path, e.last_change) for e in manifest.entries if e.deleted] == \
            [("/usr/share/data/gone", 20)]
    for entry in live:
        assert (st.www(REBASE) / "files" / f"{entry.hash}.tar").is_file(), entry.path
    # its packs from earlier versions are its zero pack; 40's delta packs start at 30
    zero = (st.www(REBASE) / "pack-os-core-from-0.tar").stat()
    for source in (10, 20):
        assert (st.www(REBASE) / f"pack-os-core-from-{source}.tar").stat().st_ino == zero.st_ino
    assert sorted(p.name for p in st.www(40).glob("pack-*")) == \
        ["pack-os-core-from-0.tar", "pack-os-core-from-30.tar"]

    # a device installed on 10 before the retirement
    device = tmp_path / "device-10"
    with _served(storage) as url:
        _client("install", "--version", "10", "--path", device, "--url", url,
                "--state-dir", tmp_path / "state")

    dry = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (st.www(10) / "files").is_dir()  # a dry run changes nothing
    before = _du(st.www_dir)
    done = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE))
    assert done.returncode == 0, done.stderr
    freed = int(done.stdout.strip().splitlines()[-1].split()[-2])
    assert dry.stdout.strip().splitlines()[-1].split()[-2] == str(freed)
    assert freed == before - _du(st.www_dir) > 0
    for version in (10, 20):
        assert {p.name for p in st.www(version).iterdir()} == KEPT_NAMES
    assert (st.www(REBASE) / "pack-os-core-from-0.tar").is_file()
    assert st.latest() == 40 and st.released() == 40

    # check simulates devices on every version, the retired ones laid down from a seed
    out = _check(storage)
    for source in (10, 20, 30):
        assert f"update {source} -> 40" in out.stdout + out.stderr
    assert "not simulating an update from the retired" not in out.stdout + out.stderr

    # the device on the retired 10 updates over HTTP and equals latest's tree
    with _served(storage) as url:
        _client("update", "--path", device, "--url", url, "--state-dir", tmp_path / "state")
    _assert_equals_latest(storage, device)
    assert not (device / "usr/share/data/gone").exists()

    # later builds, status and report work on the retired history
    _publish(storage, series, VERSIONS[4:])
    assert sorted(p.name for p in st.www(50).glob("pack-*")) == \
        ["pack-os-core-from-0.tar", "pack-os-core-from-30.tar", "pack-os-core-from-40.tar"]
    _check(storage)
    for command in ("status", "report"):
        ran = swupd_repo(command, "--storage", storage)
        assert ran.returncode == 0, ran.stdout + ran.stderr

    # once the trees of 10 and 20 are pruned as well, what those versions held that changed
    # before the rebase is stored nowhere: check says it cannot lay them down, and passes
    pruned = swupd_repo("prune", "--storage", storage)
    assert pruned.returncode == 0, pruned.stderr
    assert not st.image(10).exists() and not st.image(20).exists()
    out = _check(storage)
    for source in (10, 20):
        assert f"not simulating an update from the retired version {source}" in out.stderr
    assert "update 30 -> 50" in out.stdout + out.stderr


def test_www_prune_refuses_without_a_released_rebase(tmp_path, series) -> None:
    storage = tmp_path / "s"
    for version in (10, 20, 30):
        done = publish(storage, series[version], "--version", str(version))
        assert done.returncode == 0, done.stderr
    refused = swupd_repo("prune", "--storage", storage, "--www-before", "30")
    assert refused.returncode == 2
    assert "no rebase version at or after 30" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2  # the line and its hint
    done = publish(storage, series[40], "--version", "40", "--rebase", "--stage")
    assert done.returncode == 0, done.stderr
    staged = swupd_repo("prune", "--storage", storage, "--www-before", "40")
    assert staged.returncode == 2 and "40 is not released yet" in staged.stderr
    assert all((Storage(storage).www(v) / "files").is_dir() for v in (10, 20, 30, 40))


def test_a_rebuild_on_a_retired_version_must_be_a_rebase(tmp_path, series) -> None:
    """A forced rebuild of the rebase (latest) is built on the version before it, which is
    retired: as a plain version it would name fullfiles that are gone."""
    from swupd_repo.swupd.rebase import is_rebase

    storage = tmp_path / "s"
    st = Storage(storage)
    _publish(storage, series, VERSIONS[:3])
    done = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE))
    assert done.returncode == 0, done.stderr
    plain = publish(storage, series[REBASE], "--version", str(REBASE), "--force")
    assert plain.returncode == 2
    assert "version 30 would be built on version 20, whose content was retired" in plain.stderr
    assert is_rebase(st.www_dir, REBASE) and st.latest() == REBASE
    again = publish(storage, series[REBASE], "--version", str(REBASE), "--force", "--rebase")
    assert again.returncode == 0, again.stderr
    assert is_rebase(st.www_dir, REBASE)
    _check(storage)


def _start_paused_prune(storage: Path, pause: str, before: int) -> subprocess.Popen:
    env = {**os.environ, "SWUPD_REPO_TEST_PAUSE": pause}
    proc = subprocess.Popen([sys.executable, "-m", "swupd_repo.cli", "prune", "--storage",
                             str(storage), "--www-before", str(before)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("paused at "):
            return proc
    proc.wait()
    pytest.fail(f"the prune ended before pausing at {pause!r}: {''.join(seen)}")


@pytest.mark.parametrize("pause", ["retiring www/20", "removing the retired content"])
def test_sigkill_during_www_prune_leaves_a_valid_storage(tmp_path, series, pause) -> None:
    storage = tmp_path / "s"
    st = Storage(storage)
    _publish(storage, series, VERSIONS[:4])
    proc = _start_paused_prune(storage, pause, REBASE)
    kill_group(proc.pid)
    proc.wait()
    assert list(st.www_dir.glob(f"{TEMP_PREFIX}retired-*"))  # killed in the middle
    assert not (st.www(10) / "pack-os-core-from-0.tar").exists()
    out = _check(storage)
    for source in (10, 20, 30):
        assert f"update {source} -> 40" in out.stdout + out.stderr
    again = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE))
    assert again.returncode == 0, again.stderr
    assert "left by an interrupted run" in again.stderr + again.stdout
    assert not list(st.www_dir.glob(f"{TEMP_PREFIX}*"))
    for version in (10, 20):
        assert {p.name for p in st.www(version).iterdir()} == KEPT_NAMES
    _check(storage)


@pytest.fixture(scope="module")
def rebased(tmp_path_factory, series) -> Path:
    """A storage with 10..40 published, 30 as the rebase (nothing retired yet); tests copy it
    (``cp -a`` keeps the rebase's hard-linked packs) before changing it."""
    storage = tmp_path_factory.mktemp("rebased") / "s"
    _publish(storage, series, VERSIONS[:4])
    return storage


def _copy(storage: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--", str(storage), str(dest)], check=True)
    return dest


def _bytes_per_inode(root: Path) -> int:
    seen: dict[tuple[int, int], int] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink():
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def test_report_counts_a_rebase_s_linked_packs_once(rebased) -> None:
    """The rebase's packs from 10 and 20 are links of its zero pack: the report's www/<V>
    bytes (summed into its repository-size plot) and delta pack bytes are what the disk
    holds, not the zero pack counted three times."""
    from swupd_repo.report import collect

    st = Storage(rebased)
    figures = {v.version: v for v in collect(st).versions}
    assert figures[REBASE].www_bytes == _bytes_per_inode(st.www(REBASE))
    assert figures[REBASE].delta_pack_bytes == 0
    pack = st.www(40) / "pack-os-core-from-30.tar"
    assert figures[40].delta_pack_bytes == pack.stat().st_size > 0


def test_www_prune_refreshes_the_report_a_publish_wrote(rebased, tmp_path) -> None:
    """STORAGE/report.* shows each www/<V>'s files and bytes: retiring versions changes
    them, as a release or revert changes what it shows, so the prune writes it again."""
    import json

    from swupd_repo.report import collect, to_json, write_report_files

    storage = _copy(rebased, tmp_path / "s")
    st = Storage(storage)
    _html, data = write_report_files(st)
    done = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE))
    assert done.returncode == 0, done.stderr
    written, fresh = json.loads(data.read_text()), json.loads(to_json(collect(st)))
    assert written["versions"] == fresh["versions"]
    assert written["updates"] == fresh["updates"]
    # a device on a retired version downloads only what is still there
    assert {u["from_version"] for u in written["updates"]} == {10, 20, 30}
    assert all(not u["missing"] for u in written["updates"])
    dry = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE), "--dry-run")
    assert dry.returncode == 0 and "report:" not in dry.stderr


def test_a_rebuild_on_a_version_naming_retired_content_must_be_a_rebase(tmp_path,
                                                                        series) -> None:
    """``--www-before 20`` with the rebase at 30 retires 10 only; 20 is kept, but its
    unchanged entries name fullfiles of 10. A plain forced rebuild of 30 (built on 20) would
    carry those: it is refused like one on a retired version, and 30 stays the rebase."""
    from swupd_repo.swupd.rebase import is_rebase

    storage = tmp_path / "s"
    st = Storage(storage)
    _publish(storage, series, VERSIONS[:3])
    done = swupd_repo("prune", "--storage", storage, "--www-before", "20")
    assert done.returncode == 0, done.stderr
    assert not (st.www(10) / "files").exists() and (st.www(20) / "files").is_dir()
    plain = publish(storage, series[REBASE], "--version", str(REBASE), "--force")
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert "version 30 would be built on version 20, whose content was retired" in \
        plain.stderr.strip().splitlines()[-1]  # one line, not a missing fullfile of 10
    assert is_rebase(st.www_dir, REBASE) and st.latest() == REBASE
    _check(storage)


def test_a_staged_rebase_released_later_then_retired_and_reverted(tmp_path, series) -> None:
    """The rebase staged and a version built on it staged too, both released at once; then
    the retirement, a revert to a retired version's tree and a tree prune: check passes
    through all of it and a device on a retired version reaches every new latest."""
    storage = tmp_path / "s"
    st = Storage(storage)
    _publish(storage, series, (10, 20))
    for version in (REBASE, 40):
        flags = ("--rebase",) if version == REBASE else ()
        done = publish(storage, series[version], "--version", str(version), "--stage", *flags)
        assert done.returncode == 0, done.stderr
    device, state = tmp_path / "device-20", tmp_path / "state"
    with _served(storage) as url:
        _client("install", "--version", "20", "--path", device, "--url", url,
                "--state-dir", state)
    assert swupd_repo("release", "40", "--storage", storage).returncode == 0
    done = swupd_repo("prune", "--storage", storage, "--www-before", str(REBASE))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in st.www(20).iterdir()} == KEPT_NAMES
    out = _check(storage)
    for source in (10, 20, 30):
        assert f"update {source} -> 40" in out.stdout + out.stderr
    reverted = swupd_repo("revert", "--to", "10", "--storage", storage)
    assert reverted.returncode == 0, reverted.stderr
    assert st.latest() == st.released() == 50
    _check(storage)
    with _served(storage) as url:
        _client("update", "--path", device, "--url", url, "--state-dir", state)
    _assert_equals_latest(storage, device)
    assert (device / "usr/share/data/gone").is_file()  # 10's tree again
    assert swupd_repo("prune", "--storage", storage).returncode == 0
    _check(storage)
    from dsk import make_dsk

    image = make_dsk(make_version_tree(tmp_path / "tree-60", 60), tmp_path, "img-60",
                     rootfs_mb=16)
    done = publish(storage, image, "--version", "60")
    assert done.returncode == 0, done.stderr
    _check(storage)


def test_www_prune_with_keep_is_refused(tmp_path) -> None:
    """``--keep`` is the tree prune's: with ``--www-before`` it was silently ignored."""
    done = swupd_repo("prune", "--storage", tmp_path / "s", "--www-before", "30", "--keep", "1")
    assert done.returncode == 2
    assert "--keep applies to the trees and --www-before to www/" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [(), ("--www-before", "30")], ids=["trees", "www"])
def test_prune_of_a_storage_that_does_not_exist_is_refused(tmp_path, args) -> None:
    """A mistyped --storage was made into an empty storage (its lock file) and the tree prune
    said it removed nothing."""
    done = swupd_repo("prune", "--storage", tmp_path / "typo", *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"swupd-repo: error: storage directory {tmp_path / 'typo'} "
                                  "does not exist")
    assert not (tmp_path / "typo").exists()
