"""The generator with several bundles (issue 15): what swupd-server 2.53 writes for them.

Storages are published from real ``.dsk`` images with the split written as the stored
Assignment (tests/helpers_bundles.py); the rules checked are format3 §2.6-§2.8, §4 and §5.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from helpers_bundles import TWO_BUNDLES, two_bundle_storage
from swupd_repo.swupd.hashing import ZERO_HASH
from swupd_repo.swupd.manifest import Manifest, manifest_hash, parse_manifest


def manifest(storage: Path, version: int, name: str) -> Manifest:
    return parse_manifest((storage / "www" / str(version) / f"Manifest.{name}").read_bytes())


def lines(m: Manifest) -> dict[str, tuple[str, int]]:
    return {e.path: (e.flags, e.last_change) for e in m.entries}


def mom_lines(storage: Path, version: int) -> dict[str, tuple[int, str]]:
    return {e.path: (e.last_change, e.hash) for e in manifest(storage, version, "MoM").entries}


def pack_members(pack: Path) -> set[str]:
    with tarfile.open(pack) as tar:
        return {m.name for m in tar.getmembers()}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("two")
    return two_bundle_storage(base / "storage", base / "work")


def test_two_bundles_publish_10_and_20(two: Path) -> None:
    www = two / "www"
    # every bundle is listed in the MoM, os-core first in groups.ini order, sorted as 2.53
    # sorts (last_change, then name descending)
    m10 = (www / "10/Manifest.MoM").read_text().splitlines()[-3:]
    assert [line.split("\t")[3] for line in m10] == ["os-core", "editors", "debug"]
    # os-core lists what no bundle owns, and the directories above the bundles' files
    core10 = lines(manifest(two, 10, "os-core"))
    assert "/usr/bin/vi" not in core10 and "/usr/bin/gdb" not in core10
    assert core10["/usr/bin"] == ("D...", 10) and core10["/usr/share"] == ("D...", 10)
    assert "/etc/hosts" not in core10 and "/usr/share/clear/bundles/os-core" in core10
    # a bundle lists exactly its paths (shared directories drop out, §2.6 item 4)
    split10 = TWO_BUNDLES[10][1]
    for name in ("editors", "debug"):
        m = manifest(two, 10, name)
        assert set(lines(m)) == set(split10[name])
        assert m.previous == 0 and m.version == 10
    # at 20 editors changed (vi), debug did not: no Manifest.debug at 20, its MoM line keeps
    # version 10 and the hash of www/10/Manifest.debug (§2.7, §2.8)
    assert not (www / "20/Manifest.debug").exists()
    mom20 = mom_lines(two, 20)
    assert mom20["debug"] == (10, manifest_hash((www / "10/Manifest.debug").read_bytes()))
    assert mom20["editors"][0] == 20 and mom20["os-core"][0] == 20
    for name in ("editors", "os-core"):
        assert mom20[name][1] == manifest_hash((www / f"20/Manifest.{name}").read_bytes())
    editors20 = manifest(two, 20, "editors")
    assert editors20.previous == 10
    assert lines(editors20) == {"/usr/bin/vi": ("F...", 20),
                                "/usr/share/vim": ("D...", 10),
                                "/usr/share/vim/vimrc": ("F...", 10),
                                "/usr/share/clear/bundles/editors": ("F...", 10)}
    vi_size = len(TWO_BUNDLES[20][0]["usr/bin/vi"] or "")
    assert editors20.contentsize == vi_size
    # MoM contentsize: the bundles written in this run only (§2.2)
    core20 = manifest(two, 20, "os-core")
    assert manifest(two, 20, "MoM").contentsize == core20.contentsize + vi_size
    # Manifest.full holds every path of the image
    full20 = lines(manifest(two, 20, "full"))
    assert {"/usr/bin/vi", "/usr/bin/gdb", "/usr/lib/os-release"} <= set(full20)
    assert full20["/usr/bin/vi"] == ("F...", 20) and full20["/usr/bin/gdb"] == ("F...", 10)


def test_packs_per_bundle(two: Path) -> None:
    www = two / "www"
    for name in ("os-core", "editors", "debug"):
        m = manifest(two, 10, name)
        staged = {f"staged/{e.hash}" for e in m.entries if not e.deleted}
        assert staged <= pack_members(www / f"10/pack-{name}-from-0.tar")
    # only bundles that changed in 20 get packs there, from their own change points
    assert sorted(p.name for p in (www / "20").glob("pack-*")) == [
        "pack-editors-from-0.tar", "pack-editors-from-10.tar",
        "pack-os-core-from-0.tar", "pack-os-core-from-10.tar"]
    vi = manifest(two, 20, "editors").by_path()["/usr/bin/vi"]
    delta_pack = pack_members(www / "20/pack-editors-from-10.tar")
    assert f"staged/{vi.hash}" in delta_pack or any(n.startswith("delta/") for n in delta_pack)
    # every live entry of every bundle has its fullfile at its last_change (§4 invariant)
    for version in (10, 20):
        for name, (bv, _) in mom_lines(two, version).items():
            for e in manifest(two, bv, name).entries:
                if not e.deleted:
                    assert (www / str(e.last_change) / "files" / f"{e.hash}.tar").is_file()
                else:
                    assert e.hash == ZERO_HASH
