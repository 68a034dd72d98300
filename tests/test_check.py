"""``check``: consistency of every published file and simulated updates over real HTTP.

On the real server's output (the vectors, with image trees from the rootfs tars) it must pass;
each kind of damage must fail with the damaged file named. On a repository our generator built
it must pass, and the pipeline with the check on must refuse to move ``latest`` past a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import copy_tree
from helpers_signing import make_signer, manifest_tar, sign_www, tamper_fullfile
from swupd_repo.check import CheckFailed, check_repository
from swupd_repo.check.stamps import STAMP_DIR
from swupd_repo.errors import CheckError
from swupd_repo.progress import NullReporter, RecordingReporter
from swupd_repo.settings import Settings
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.swupd.manifest import parse_manifest


@pytest.fixture
def storage(vectors: Path, rootfs_trees: dict[int, Path], tmp_path: Path) -> Storage:
    """A storage directory holding the real server's www and the matching image trees."""
    store = Storage(tmp_path / "storage")
    shutil.copytree(vectors / "www", store.www_dir)
    for v, tree in rootfs_trees.items():
        copy_tree(tree, store.os_core(v))
    store.write_markers(20)
    return store


def entry_hash(store: Storage, version: int, path: str) -> str:
    manifest = parse_manifest((store.www(version) / "Manifest.os-core").read_bytes())
    return manifest.by_path()[path].hash


def test_real_server_output_passes(storage: Storage) -> None:
    reporter = RecordingReporter()
    report = check_repository(storage, reporter=reporter)
    assert report.ok and report.version == 20 and report.versions == [10, 20]
    assert [(s.from_version, s.to_version) for s in report.simulations] == [(0, 20), (10, 20)]
    assert report.fullfiles > 400 and report.pack_members > 400
    assert "13 deltas" in report.simulations[1].summary
    assert any("check passed" in line for line in reporter.infos)
    # the caller prints "10 -> 20: <summary>": the summary must not name the versions again
    assert not any(" -> 20" in s.summary for s in report.simulations)
    assert any(line.startswith("update 10 -> 20: ") and line.count("->") == 1
               for line in reporter.infos), reporter.infos


def test_version_not_yet_latest_can_be_checked(storage: Storage) -> None:
    storage.write_markers(10)  # the pipeline checks 20 before moving latest
    report = check_repository(storage, 20, from_versions=[10])
    assert [(s.from_version, s.to_version) for s in report.simulations] == [(0, 20), (10, 20)]


def test_deleted_fullfile_is_named(storage: Storage) -> None:
    digest = entry_hash(storage, 20, "/usr/bin/newprog")
    missing = storage.www(20) / "files" / f"{digest}.tar"
    missing.unlink()
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False)
    assert f"{missing} is missing (fullfile of /usr/bin/newprog)" in str(err.value)


def test_tampered_fullfile_is_named(storage: Storage) -> None:
    digest = entry_hash(storage, 10, "/usr/share/readonly")
    target = storage.www(10) / "files" / f"{digest}.tar"
    # the fullfile of another path: one member, but the wrong name and content
    other = entry_hash(storage, 10, "/usr/bin/prog01")
    shutil.copy(storage.www(10) / "files" / f"{other}.tar", target)
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False)
    assert str(target) in str(err.value) and "exactly one member" in str(err.value)


def test_mom_line_mismatch_is_named(storage: Storage) -> None:
    # the plain MoM and the tar both claim another hash for os-core
    mom_path = storage.www(20) / "Manifest.MoM"
    mom = parse_manifest(mom_path.read_bytes())
    mom.entries = [e.with_(hash="cd" * 32) for e in mom.entries]
    mom_path.write_bytes(mom.to_bytes())
    (storage.www(20) / "Manifest.MoM.tar").write_bytes(manifest_tar(mom.to_bytes(), "MoM"))
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False)
    assert f"{storage.www(20)}/Manifest.MoM: line for os-core has hash {'cd' * 32}" \
        in str(err.value)


def test_missing_zero_pack_and_markers(storage: Storage) -> None:
    (storage.www(10) / "pack-os-core-from-0.tar").unlink()
    storage.latest_www_marker.write_text("30\n")  # devices ahead of the last build
    with pytest.raises(CheckError) as err:
        check_repository(storage, 20, simulate=False)
    text = str(err.value)
    assert f"{storage.www(10)}/pack-os-core-from-0.tar is missing" in text
    assert "markers disagree" in text and "names version 30" in text
    assert isinstance(err.value, CheckFailed) and len(err.value.report.problems) == 4


def test_simulation_finds_image_difference(storage: Storage) -> None:
    """A repository that does not reproduce its image: the image differs from what was built."""
    (storage.os_core(20) / "usr/share/big.txt").unlink()
    newprog = storage.os_core(20) / "usr/bin/newprog"
    newprog.write_bytes(newprog.read_bytes() + b"x")
    shutil.copystat(storage.os_core(10) / "usr/bin/prog01", newprog)
    with pytest.raises(CheckError) as err:
        check_repository(storage)
    text = str(err.value)
    assert "update 10 -> 20: /usr/share/big.txt: unexpected file" in text
    assert "install of 20: /usr/bin/newprog: content differs" in text


def test_cli_check(storage: Storage, capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    assert main(["check", "--storage", str(storage.root), "--from", "10", "20"]) == 0
    out, err = capsys.readouterr()
    assert "10 -> 20:" in out and "check passed" in out
    assert "not simulating an update from 20: it is not before 20" in err
    assert main(["check", "--storage", str(storage.root), "--no-simulate", "--full"]) == 0
    assert "(0 files unchanged since their last check)" in capsys.readouterr().out
    (storage.www(10) / "pack-os-core-from-0.tar").unlink()
    assert main(["check", "--storage", str(storage.root), "--no-simulate"]) == 2
    err = capsys.readouterr().err
    assert "pack-os-core-from-0.tar is missing" in err
    # run on its own, the check changed nothing: it must not claim a publish was refused
    assert "nothing was changed" in err and "not published" not in err


def test_cli_holds_the_storage_lock(storage: Storage,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A check must not read www/<V> while a publish writes it: it waits for the lock."""
    from swupd_repo.cli import main

    argv = ["check", "--storage", str(storage.root), "--no-simulate"]
    with storage.lock():
        assert main([*argv, "--no-wait"]) == 2
    assert "is in use by another run" in capsys.readouterr().err

    held, release = threading.Event(), threading.Event()

    def publish() -> None:
        with storage.lock():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=publish)
    holder.start()
    held.wait(10)
    timer = threading.Timer(0.5, release.set)
    timer.start()
    try:
        began = time.monotonic()
        assert main(argv) == 0
        assert time.monotonic() - began >= 0.4
    finally:
        release.set()
        holder.join()
    err = capsys.readouterr().err
    assert f"is in use by another run: pid {os.getpid()} (" in err  # who holds it
    assert "waiting for it to finish" in err


class SnapshotReporter(RecordingReporter):
    """Notes, as each simulation starts, what TMPDIR and the storage root hold."""

    def __init__(self, storage: Storage, tmp: Path) -> None:
        super().__init__()
        self.storage, self.tmp = storage, tmp
        self.seen: list[tuple[list[str], list[str]]] = []

    def step(self, name: str, total: int | None = None) -> None:
        super().step(name, total)
        if name.startswith("simulating"):
            self.seen.append((sorted(p.name for p in self.tmp.iterdir()),
                              sorted(p.name for p in self.storage.root.iterdir())))


def test_scratch_roots_live_under_tmpdir(storage: Storage, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Never in the storage, where a concurrent publish's clean-up would delete them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    reporter = SnapshotReporter(storage, scratch)
    check_repository(storage, reporter=reporter)
    assert len(reporter.seen) == 2
    for in_tmp, in_storage in reporter.seen:
        assert [n for n in in_tmp if n.startswith("swupd-repo-check-20-")], in_tmp
        assert not [n for n in in_storage if n.startswith(TEMP_PREFIX)], in_storage
    assert list(scratch.iterdir()) == []


def test_unwritable_scratch_is_a_user_error(storage: Storage, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(CheckError) as err:
        check_repository(storage)
    assert f"cannot create a scratch directory in {tmp_path / 'missing'}" in str(err.value)
    assert "TMPDIR" in str(err.value) and not isinstance(err.value, CheckFailed)


def test_manifests_are_read_from_their_tars(storage: Storage) -> None:
    """Devices fetch only Manifest.<X>.tar; the plain bundle manifests are not needed."""
    for plain in storage.www_dir.glob("*/Manifest.*"):
        if plain.name in ("Manifest.os-core", "Manifest.full"):
            plain.unlink()
    report = check_repository(storage)
    assert [(s.from_version, s.to_version) for s in report.simulations] == [(0, 20), (10, 20)]


def test_stamps_skip_unchanged_files_but_never_a_changed_one(storage: Storage) -> None:
    first = check_repository(storage, simulate=False)
    assert first.unchanged == 0
    assert sorted(p.name for p in (storage.root / STAMP_DIR).iterdir()) == ["10.json",
                                                                           "20.json"]
    second = check_repository(storage, simulate=False)
    packs = 3  # 10 from 0, 20 from 0, 20 from 10
    assert second.unchanged == first.fullfiles + packs and second.pack_members == 0
    assert second.fullfiles == first.fullfiles

    # new content (so a new size and mtime): verified again, and caught
    digest = entry_hash(storage, 10, "/usr/share/readonly")
    tampered = storage.www(10) / "files" / f"{digest}.tar"
    tamper_fullfile(tampered)
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False)
    assert f"{tampered}: content for /usr/share/readonly hashes to" in str(err.value)

    # a failed check records nothing; a change that keeps size and mtime is caught too (ctime)
    manifest = parse_manifest((storage.www(10) / "Manifest.os-core").read_bytes())
    sneaky = next(f for e in manifest.entries if not e.deleted and e.last_change == 10
                  and (f := storage.www(10) / "files" / f"{e.hash}.tar").read_bytes()
                  .startswith(b"\x1f\x8b") and f != tampered)
    before = sneaky.stat()
    data = bytearray(sneaky.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sneaky.write_bytes(data)
    os.utime(sneaky, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert sneaky.stat().st_size == before.st_size
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False)
    assert str(sneaky) in str(err.value)


def add_image(store: Storage, version: int, tree: Path) -> None:
    """``image/<version>/os-core``: a copy of ``tree`` whose os-release says ``version``."""
    copy_tree(tree, store.os_core(version))
    release = store.os_core(version) / "usr/lib/os-release"
    text = release.read_text()
    release.write_text(text[:text.index("VERSION_ID=")] + f"VERSION_ID={version}\n")


def test_generator_output_passes_and_gate_holds_latest(rootfs_trees: dict[int, Path],
                                                       tmp_path: Path) -> None:
    """The native generator's repository passes; a devel build (18) in www does not block the
    next publish; a broken repository never becomes latest."""
    from swupd_repo.pipeline import build_version

    store = Storage(tmp_path / "storage")
    settings = Settings(storage_dir=store.root, check=True, jobs=1)
    reporter = RecordingReporter()
    for v, tree in ((10, rootfs_trees[10]), (18, rootfs_trees[10]), (20, rootfs_trees[20])):
        add_image(store, v, tree)
        assert build_version(settings, reporter, v) == v
        assert store.latest() == v
    assert any("not simulating an update from 18: devices never update from a version ending "
               "in 8 or 9" in line for line in reporter.infos)
    report = check_repository(store)
    assert report.ok and report.versions == [10, 18, 20]
    assert [s.from_version for s in report.simulations] == [0, 10]

    # deleting one fullfile makes the check fail, naming it
    newprog = store.www(20) / "files" / f"{entry_hash(store, 20, '/usr/bin/newprog')}.tar"
    saved = newprog.read_bytes()
    newprog.unlink()
    with pytest.raises(CheckError) as err:
        check_repository(store)
    assert f"{newprog} is missing (fullfile of /usr/bin/newprog)" in str(err.value)
    newprog.write_bytes(saved)

    # tamper with a fullfile version 30 still uses (unchanged since 10), then publish 30
    digest = entry_hash(store, 10, "/usr/bin/prog01")
    tamper_fullfile(store.www(10) / "files" / f"{digest}.tar")
    add_image(store, 30, rootfs_trees[20])
    with pytest.raises(CheckError) as err:
        build_version(settings, NullReporter(), 30)
    assert f"{store.www(10)}/files/{digest}.tar: content for /usr/bin/prog01 hashes to" \
        in str(err.value)
    assert "the version was not published" in str(err.value)
    assert store.latest() == 20 and not store.www(30).exists()


def test_signatures_checked_with_a_cert(storage: Storage, tmp_path: Path) -> None:
    material, pem = make_signer(tmp_path, "release")
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False, trusted_certs=[pem])
    assert f"{storage.www(10)}/Manifest.MoM is not signed" in str(err.value)
    sign_www(storage.www_dir, material)
    report = check_repository(storage, trusted_certs=[pem])
    assert report.signatures >= 8
    bad = storage.www(20) / "Manifest.os-core.signed"
    bad.write_bytes((storage.www(10) / "Manifest.os-core.signed").read_bytes())
    with pytest.raises(CheckError) as err:
        check_repository(storage, simulate=False, trusted_certs=[pem])
    assert f"{bad}: bad signature" in str(err.value)


def test_broken_delta_in_pack_fails_the_simulation(storage: Storage) -> None:
    """A delta that does not produce its file is a repository bug even though clients fall
    back: the simulated update from a pristine root must apply every delta."""
    pack = storage.www(20) / "pack-os-core-from-10.tar"
    with tarfile.open(pack, "r:*") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]
    buf = io.BytesIO()
    broken = None
    with tarfile.open(fileobj=buf, mode="w:xz", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            if data is not None and m.name.startswith("delta/") and broken is None:
                broken, data = m.name, data[:-1] + bytes([data[-1] ^ 0xFF])
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    pack.write_bytes(buf.getvalue())
    with pytest.raises(CheckError) as err:
        check_repository(storage)
    assert "update 10 -> 20: 1 delta(s) in 20/pack-os-core-from-10.tar failed" in str(err.value)
    assert broken is not None
