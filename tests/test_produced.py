"""The check of a version a container wrote (backends/produced.py), on real native output
with one pack made incomplete the way the real scripts make it (members left out)."""

from __future__ import annotations

import lzma
import re
import tarfile
from pathlib import Path

import pytest

from conftest import copy_tree
from swupd_repo.backends.produced import IncompleteOutput, delta_pack_source, verify_produced
from swupd_repo.pipeline import build_version
from swupd_repo.progress import RecordingReporter
from swupd_repo.settings import make_settings
from swupd_repo.storage import Storage


@pytest.fixture(scope="module")
def built(tmp_path_factory, rootfs_trees) -> Storage:
    """10 and 20 of the vectors, built by the native backend (once; tests get copies)."""
    store = Storage(tmp_path_factory.mktemp("produced") / "storage")
    for version in (10, 20):
        copy_tree(rootfs_trees[version], store.os_core(version))
        build_version(make_settings({"storage_dir": store.root, "backend": "native"}),
                      RecordingReporter(), version)
    return store


@pytest.fixture
def storage(tmp_path, built) -> Storage:
    return Storage(copy_tree(built.root, tmp_path / "storage"))


def keep_only_dirs(pack: Path) -> None:
    """Rewrite ``pack`` with its ``delta/`` and ``staged/`` directories only: what the real
    scripts write when every hard link into packstage failed."""
    with tarfile.open(pack) as tar:
        dirs = [m for m in tar.getmembers() if m.isdir()]
    with lzma.open(pack, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                    format=tarfile.PAX_FORMAT) as out:
        for member in dirs:
            out.addfile(member)


def test_complete_version_passes(storage):
    report = verify_produced(storage, 20)
    assert report.pack_members > 0 and report.fullfiles > 0 and report.problems == []


def test_empty_delta_pack_is_refused_naming_a_member(storage):
    """The gate's consistency check only requires members of zero packs; a delta pack that
    lost its members must be refused too."""
    pack = storage.www(20) / "pack-os-core-from-10.tar"
    keep_only_dirs(pack)
    with pytest.raises(IncompleteOutput) as caught:
        verify_produced(storage, 20)
    assert re.fullmatch(rf"{re.escape(str(pack))} lacks staged/[0-9a-f]{{64}} \(/\S+\) and any "
                        r"delta to it", str(caught.value)), caught.value


def test_empty_zero_pack_is_refused_with_the_count(storage):
    pack = storage.www(20) / "pack-os-core-from-0.tar"
    keep_only_dirs(pack)
    with pytest.raises(IncompleteOutput, match=rf"^{re.escape(str(pack))} lacks staged/[0-9a-f]"
                                               r"{64} \(/\S+\) \(and \d+ more problems\)$"):
        verify_produced(storage, 20)


def test_missing_fullfile_is_refused(storage):
    fullfile = sorted((storage.www(20) / "files").glob("*.tar"))[0]
    fullfile.unlink()
    with pytest.raises(IncompleteOutput, match=re.escape(f"{fullfile} is missing")):
        verify_produced(storage, 20)


def test_delta_pack_source():
    assert delta_pack_source(Path("pack-os-core-from-10.tar")) == 10
    assert delta_pack_source(Path("pack-os-core-from-0.tar")) == 0
    assert delta_pack_source(Path("pack-my-from-bundle-from-7.tar")) == 7
    assert delta_pack_source(Path("Manifest.MoM.tar")) == 0
