"""``check``: consistency of every published file and simulated updates over real HTTP.

On the real server's output (the vectors, with image trees from the rootfs tars) it must pass;
each kind of damage must fail with the damaged file named. On a repository our generator built
it must pass, and the pipeline with the check on must refuse to move ``latest`` past a failure.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from swupd_repo.check import check_repository
from swupd_repo.errors import CheckError
from swupd_repo.progress import NullReporter, RecordingReporter
from swupd_repo.settings import Settings
from swupd_repo.storage import Storage
from swupd_repo.swupd.manifest import parse_manifest


def extract(tar: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def images(vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("images")
    return {v: extract(vectors / f"rootfs-{v}.tar", base / str(v)) for v in (10, 20)}


@pytest.fixture
def storage(vectors: Path, images: dict[int, Path], tmp_path: Path) -> Storage:
    """A storage directory holding the real server's www and the matching image trees."""
    store = Storage(tmp_path / "storage")
    shutil.copytree(vectors / "www", store.www_dir)
    for v, tree in images.items():
        store.image(v).mkdir(parents=True)
        # hard links keep the copy cheap; the check only reads the image
        subprocess.run(["cp", "-a", "--link", str(tree), str(store.os_core(v))], check=True)
    store.write_markers(20)
    return store


def manifest_tar(plain: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        info = tarfile.TarInfo(f"Manifest.{name}")
        info.size, info.mode = len(plain), 0o644
        tar.addfile(info, io.BytesIO(plain))
    return buf.getvalue()


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
    storage.latest_image_marker.write_text("30\n")
    with pytest.raises(CheckError) as err:
        check_repository(storage, 20, simulate=False)
    text = str(err.value)
    assert f"{storage.www(10)}/pack-os-core-from-0.tar is missing" in text
    assert "markers disagree" in text and "names version 30" in text
    assert len(err.value.report.problems) == 4  # type: ignore[attr-defined]


def test_simulation_finds_image_difference(storage: Storage) -> None:
    """A repository that does not reproduce its image: the image differs from what was built."""
    (storage.os_core(20) / "usr/share/big.txt").unlink()
    newprog = storage.os_core(20) / "usr/bin/newprog"
    data = newprog.read_bytes()
    newprog.unlink()  # a hard link into the shared image: replace it, never write through it
    newprog.write_bytes(data + b"x")
    shutil.copystat(storage.os_core(10) / "usr/bin/prog01", newprog)
    with pytest.raises(CheckError) as err:
        check_repository(storage)
    text = str(err.value)
    assert "update 10 -> 20: /usr/share/big.txt: unexpected file" in text
    assert "install of 20: /usr/bin/newprog: content differs" in text


def test_cli_check(storage: Storage, capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    assert main(["check", "--storage", str(storage.root), "--from", "10"]) == 0
    assert "check passed" in capsys.readouterr().out
    (storage.www(10) / "pack-os-core-from-0.tar").unlink()
    assert main(["check", "--storage", str(storage.root), "--no-simulate"]) == 2
    assert "pack-os-core-from-0.tar is missing" in capsys.readouterr().err


def test_generator_output_passes_and_gate_holds_latest(images: dict[int, Path],
                                                       tmp_path: Path) -> None:
    """The native generator's repository passes; a broken one never becomes latest."""
    from swupd_repo.pipeline import build_version

    store = Storage(tmp_path / "storage")
    settings = Settings(storage_dir=store.root, check=True, jobs=1)
    for v in (10, 20):
        store.image(v).mkdir(parents=True)
        subprocess.run(["cp", "-a", str(images[v]), str(store.os_core(v))], check=True)
        assert build_version(settings, NullReporter(), v) == v
        assert store.latest() == v
    report = check_repository(store)
    assert report.ok and [s.from_version for s in report.simulations] == [0, 10]

    # deleting one fullfile makes the check fail, naming it
    newprog = store.www(20) / "files" / f"{entry_hash(store, 20, '/usr/bin/newprog')}.tar"
    saved = newprog.read_bytes()
    newprog.unlink()
    with pytest.raises(CheckError) as err:
        check_repository(store)
    assert f"{newprog} is missing (fullfile of /usr/bin/newprog)" in str(err.value)
    newprog.write_bytes(saved)

    # tamper with a fullfile version 30 still uses (unchanged since 10), then publish 30
    from test_client import tamper_fullfile  # shared helper (tests/ is on sys.path)

    digest = entry_hash(store, 10, "/usr/bin/prog01")
    tamper_fullfile(store.www(10) / "files" / f"{digest}.tar")
    store.image(30).mkdir(parents=True)
    subprocess.run(["cp", "-a", str(images[20]), str(store.os_core(30))], check=True)
    release = store.os_core(30) / "usr/lib/os-release"
    release.write_text(release.read_text().replace("VERSION_ID=20", "VERSION_ID=30"))
    with pytest.raises(CheckError) as err:
        build_version(settings, NullReporter(), 30)
    assert f"{store.www(10)}/files/{digest}.tar: content for /usr/bin/prog01 hashes to" \
        in str(err.value)
    assert store.latest() == 20 and not store.www(30).exists()


def test_signatures_checked_with_a_cert(storage: Storage, tmp_path: Path) -> None:
    from test_client import make_signer, sign_www  # shared helpers (tests/ is on sys.path)

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
