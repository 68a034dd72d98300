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
from swupd_repo.swupd.names import delta_name


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
    # vi changed in 20: the pack from 10 carries it, whole or as its own delta
    assert f"staged/{vi.hash}" in delta_pack or \
        f"delta/{delta_name(10, 20, vi.hash)}" in delta_pack
    # every live entry of every bundle has its fullfile at its last_change (§4 invariant)
    for version in (10, 20):
        for name, (bv, _) in mom_lines(two, version).items():
            for e in manifest(two, bv, name).entries:
                if not e.deleted:
                    assert (www / str(e.last_change) / "files" / f"{e.hash}.tar").is_file()
                else:
                    assert e.hash == ZERO_HASH


# --- a file moving between bundles, a bundle dropped and one added ---------------------------

def _moves() -> dict:
    """10: editors and debug; 20: /usr/share/gdb (with gdbinit) moves from debug into
    os-core, unchanged; 30: debug is dropped (its files leave the image), devel is added."""
    from helpers_bundles import base_tree, tracking

    editors = {"usr/bin/vi": "vi\n", "usr/share/vim": None, "usr/share/vim/vimrc": "rc\n"}
    gdb = {"usr/bin/gdb": "gdb\n"}
    gdb_data = {"usr/share/gdb": None, "usr/share/gdb/gdbinit": "set pagination off\n"}
    editors_split = ["/usr/bin/vi", "/usr/share/vim", "/usr/share/vim/vimrc",
                     tracking("editors")]
    return {
        10: ({**base_tree(10, ["editors", "debug"]), **editors, **gdb, **gdb_data},
             {"editors": editors_split,
              "debug": ["/usr/bin/gdb", "/usr/share/gdb", "/usr/share/gdb/gdbinit",
                        tracking("debug")]}),
        20: ({**base_tree(20, ["editors", "debug"]), **editors, **gdb, **gdb_data},
             {"editors": editors_split, "debug": ["/usr/bin/gdb", tracking("debug")]}),
        30: ({**base_tree(30, ["editors", "devel"]), **editors, **gdb_data,
              "usr/include": None, "usr/include/gdb.h": "int gdb;\n"},
             {"editors": editors_split, "devel": ["/usr/include/gdb.h", tracking("devel")]}),
    }


@pytest.fixture(scope="module")
def moves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers_bundles import publish_versions

    base = tmp_path_factory.mktemp("moves")
    return publish_versions(base / "storage", base / "work", _moves())


def test_file_moving_from_a_bundle_into_os_core(moves: Path) -> None:
    www = moves / "www"
    # debug changed at 20: its entries for the moved paths are deleted there (§2.7)
    debug20 = lines(manifest(moves, 20, "debug"))
    assert debug20 == {"/usr/share/gdb/gdbinit": (".d..", 20), "/usr/share/gdb": (".d..", 20),
                       "/usr/bin/gdb": ("F...", 10),
                       "/usr/share/clear/bundles/debug": ("F...", 10)}
    assert manifest(moves, 20, "debug").previous == 10
    # os-core gains them at 20 although their content did not change
    core20 = lines(manifest(moves, 20, "os-core"))
    assert core20["/usr/share/gdb/gdbinit"] == ("F...", 20)
    assert core20["/usr/share/gdb"] == ("D...", 20)
    # Manifest.full: carried over from 10 by its own match, raised to 20 by the bundles, so
    # the fullfile a device fetches for os-core's entry exists (§2.7, §4)
    full20 = manifest(moves, 20, "full").by_path()
    gdbinit = full20["/usr/share/gdb/gdbinit"]
    assert gdbinit.last_change == 20
    assert (www / f"20/files/{gdbinit.hash}.tar").is_file()
    assert (www / f"10/files/{gdbinit.hash}.tar").is_file()
    # editors did not change: MoM@20 keeps its line from 10
    assert mom_lines(moves, 20)["editors"] == mom_lines(moves, 10)["editors"]
    assert not (www / "20/Manifest.editors").exists()
    # debug changed at 20 (deletions only): it still gets a zero pack and a delta pack
    assert (www / "20/pack-debug-from-0.tar").is_file()
    assert (www / "20/pack-debug-from-10.tar").is_file()


def test_bundle_dropped_and_bundle_added(moves: Path) -> None:
    www = moves / "www"
    mom30 = mom_lines(moves, 30)
    assert set(mom30) == {"os-core", "editors", "devel"}  # debug left the MoM (§2.8)
    assert mom30["editors"][0] == 10 and mom30["devel"][0] == 30
    devel = manifest(moves, 30, "devel")
    assert devel.previous == 0
    assert lines(devel) == {"/usr/include/gdb.h": ("F...", 30),
                            "/usr/share/clear/bundles/devel": ("F...", 30)}
    assert "/usr/include" in lines(manifest(moves, 30, "os-core"))
    # a new bundle has no earlier change point: a zero pack only
    assert sorted(p.name for p in (www / "30").glob("pack-devel-*")) == [
        "pack-devel-from-0.tar"]
    # the dropped bundle's files are deleted in Manifest.full only (2.53 lists nobody's
    # deletions for a bundle that is gone)
    full30 = lines(manifest(moves, 30, "full"))
    assert full30["/usr/bin/gdb"] == (".d..", 30)
    assert "/usr/bin/gdb" not in lines(manifest(moves, 30, "os-core"))


def test_check_passes_on_bundle_repositories(two: Path, moves: Path) -> None:
    from swupd_repo.check import check_repository
    from swupd_repo.storage import Storage

    for storage, latest in ((two, 20), (moves, 30)):
        report = check_repository(Storage(storage), simulate=False, trust_stamps=False)
        assert report.ok and report.version == latest
        assert report.manifests >= 2 * len(report.versions) + 2


def test_check_fails_when_a_bundle_manifest_does_not_match_the_mom(
        two: Path, tmp_path: Path) -> None:
    """A Manifest.debug whose plain file and tar agree, but not with the MoMs' line."""
    import shutil

    from swupd_repo.check import CheckFailed, check_repository
    from swupd_repo.storage import Storage
    from swupd_repo.swupd.manifest_tar import manifest_tar_bytes

    storage = Storage(shutil.copytree(two, tmp_path / "storage", symlinks=True))
    www10 = storage.www(10)
    debug = manifest(storage.root, 10, "debug")
    debug.entries = [e.with_(last_change=5) if e.path == "/usr/bin/gdb" else e
                     for e in debug.entries]
    data = debug.to_bytes()
    (www10 / "Manifest.debug").write_bytes(data)
    (www10 / "Manifest.debug.tar").write_bytes(manifest_tar_bytes([("Manifest.debug", data)]))
    with pytest.raises(CheckFailed) as err:
        check_repository(storage, simulate=False)
    problems = err.value.report.problems
    actual = manifest_hash(data)
    # both MoMs that name debug at 10 are reported
    for v in (10, 20):
        assert any(p.startswith(f"{storage.www(v)}/Manifest.MoM: line for debug has hash")
                   and p.endswith(f"hashes to {actual}") for p in problems), problems


def _copy(two: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    import shutil

    from swupd_repo.storage import Storage

    return Storage(shutil.copytree(two, tmp_path / "storage", symlinks=True))


def test_check_fails_when_the_mom_is_not_the_stored_split(two: Path, tmp_path: Path) -> None:
    from swupd_repo.bundles.assignment import Assignment, read_assignment, write_assignment
    from swupd_repo.check import CheckFailed, check_repository

    storage = _copy(two, tmp_path)
    split = read_assignment(storage.os_core(20))
    write_assignment(storage.os_core(20),
                     Assignment({**split.bundles, "extra": frozenset({"/usr/bin/core-tool"})}))
    with pytest.raises(CheckFailed) as err:
        check_repository(storage, simulate=False)
    assert err.value.report.problems == [
        f"{storage.www(20)}/Manifest.MoM lists the bundles debug, editors, os-core, but "
        f"{storage.image(20)}/os-core.bundles gives debug, editors, extra, os-core"]


def test_check_fails_on_a_path_two_bundles_give_different_content(two: Path,
                                                                  tmp_path: Path) -> None:
    """The client drops both entries of such a pair: neither file would be installed."""
    from swupd_repo.check import CheckFailed, check_repository
    from swupd_repo.swupd.manifest_tar import manifest_tar_bytes

    storage = _copy(two, tmp_path)
    www20 = storage.www(20)
    editors = manifest(storage.root, 20, "editors")
    vi = editors.by_path()["/usr/bin/vi"]
    editors.entries.append(vi.with_(path="/usr/bin/gdb"))  # debug@10 has another gdb
    data = editors.to_bytes()
    (www20 / "Manifest.editors").write_bytes(data)
    (www20 / "Manifest.editors.tar").write_bytes(
        manifest_tar_bytes([("Manifest.editors", data)]))
    mom = manifest(storage.root, 20, "MoM")
    mom.entries = [e.with_(hash=manifest_hash(data)) if e.path == "editors" else e
                   for e in mom.entries]
    (www20 / "Manifest.MoM").write_bytes(mom.to_bytes())
    (www20 / "Manifest.MoM.tar").write_bytes(
        manifest_tar_bytes([("Manifest.MoM", mom.to_bytes())]))
    with pytest.raises(CheckFailed) as err:
        check_repository(storage, simulate=False)
    assert err.value.report.problems == [
        f"{www20}/Manifest.MoM: /usr/bin/gdb is in bundles debug and editors with different "
        "hashes (a client installs neither)"]


def test_revert_keeps_the_bundles_of_the_reverted_tree(two: Path, tmp_path: Path) -> None:
    from helpers_bundles import swupd_repo

    storage = _copy(two, tmp_path)
    done = swupd_repo("revert", "--to", "10", "--storage", storage.root, "--jobs", "1")
    assert done.returncode == 0, done.stderr
    mom30 = mom_lines(storage.root, 30)
    assert set(mom30) == {"os-core", "editors", "debug"}
    assert mom30["debug"][0] == 10  # the same as at 10 and 20
    # vi goes back to its content of 10: editors changes again
    assert mom30["editors"][0] == 30
    assert manifest(storage.root, 30, "editors").by_path()["/usr/bin/vi"].hash == \
        manifest(storage.root, 10, "editors").by_path()["/usr/bin/vi"].hash


# --- end to end: definitions resolved from the image's package database ----------------------

def test_definitions_by_packages_and_globs_publish_10_and_20(tmp_path: Path) -> None:
    """``swupd-repo publish`` with debug defined by dpkg packages and docs by a glob: the
    bundle manifests hold what the definitions resolve to; at 20 (only os-release changed)
    neither bundle changes, and the check passes on both versions."""
    from bundle_trees import make_dpkg_tree
    from dsk import make_dsk
    from helpers_cli import publish
    from swupd_repo.bundles.assignment import read_assignment
    from swupd_repo.check import check_repository
    from swupd_repo.storage import Storage

    storage = Storage(tmp_path / "storage")
    for version in (10, 20):
        image = make_dsk(make_dpkg_tree(tmp_path / f"src{version}", version), tmp_path / "img",
                         f"dpkg{version}")
        done = publish(storage.root, image, "--jobs", "1",
                       "--bundle-packages", "debug=gdb,strace",
                       "--bundle-globs", "docs=/usr/share/doc/**")
        assert done.returncode == 0, done.stderr
    split = read_assignment(storage.os_core(10)).bundles
    for name in ("debug", "docs"):
        assert set(lines(manifest(storage.root, 10, name))) == set(split[name])
    assert "/usr/bin/gdb" in split["debug"] and "/usr/share/doc" in split["docs"]
    core = lines(manifest(storage.root, 10, "os-core"))
    assert not set(core) & (split["debug"] | split["docs"])
    assert "/usr/share/clear/bundles/os-core" in core and "/usr/bin/sh" in core
    mom20 = mom_lines(storage.root, 20)
    assert mom20["debug"][0] == mom20["docs"][0] == 10 and mom20["os-core"][0] == 20
    assert check_repository(storage, simulate=False).ok


def test_prune_keeps_the_change_point_of_an_unchanged_bundle(two: Path) -> None:
    """With one delta-pack version os-core's and editors' next delta packs start from 20,
    but debug last changed at 10: its next delta pack reads the tree of 10."""
    from swupd_repo.prune import plan
    from swupd_repo.storage import Storage

    result = plan(Storage(two), keep=0, deltapack_versions=1)
    assert result.keep == {20: "latest", 10: "delta packs of debug start from it"}
    assert result.remove == []


# --- a device with every bundle, over real HTTP (our verifying client, as check uses it) -----

def _device(storage: Path, tmp_path: Path, install_version: int, bundles: list[str],
            to: int) -> tuple[list[str], list[str]]:
    """Install ``bundles`` of ``install_version`` into a scratch root, update it to ``to``;
    returns its differences from ``image/<to>/os-core`` (the format's exceptions aside) and
    the packs the client downloaded."""
    from swupd_repo.client import compare_trees, install, update
    from swupd_repo.client.compare import skip_for
    from swupd_repo.serve import serve_in_thread
    from swupd_repo.storage import Storage
    from swupd_repo.treemeta import load as load_meta

    store = Storage(storage)
    root, state = tmp_path / "root", tmp_path / "state"
    with serve_in_thread(store.www_dir) as url:
        installed = install(url, root, install_version, state_dir=state, bundles=bundles)
        updated = update(url, root, to=to, state_dir=state)
    entries = manifest(storage, to, "full").by_path()
    return (compare_trees(root, store.os_core(to), skip_for(entries),
                          load_meta(store.os_core(to))), installed.packs + updated.packs)


def test_device_with_every_bundle_follows_a_file_into_os_core(moves: Path,
                                                             tmp_path: Path) -> None:
    """10 -> 20: gdbinit is deleted in debug and new in os-core; a device with both keeps it
    (a live entry wins over a deleted one) and equals the image of 20."""
    diffs, packs = _device(moves, tmp_path, 10, ["os-core", "editors", "debug"], 20)
    assert diffs == []
    # each bundle came from its own packs; editors did not change at 20: no pack of it there
    assert sorted(packs) == ["10/pack-debug-from-0.tar", "10/pack-editors-from-0.tar",
                             "10/pack-os-core-from-0.tar", "20/pack-debug-from-10.tar",
                             "20/pack-os-core-from-10.tar"]


def test_device_with_os_core_and_one_bundle(two: Path, tmp_path: Path) -> None:
    """os-core and editors of 10, updated to 20: the image of 20 without debug's files."""
    diffs, packs = _device(two, tmp_path, 10, ["os-core", "editors"], 20)
    assert not any("debug" in p for p in packs)
    assert diffs == [f"{p}: missing (expected a {kind})" for p, kind in (
        ("/usr/bin/gdb", "file"), ("/usr/share/clear/bundles/debug", "file"),
        ("/usr/share/gdb", "directory"), ("/usr/share/gdb/gdbinit", "file"))]


def test_a_dropped_bundle_is_named_in_a_warning(tmp_path: Path) -> None:
    from helpers_bundles import make_image, publish_split

    storage = tmp_path / "storage"
    only_editors = {"editors": TWO_BUNDLES[20][1]["editors"]}
    for version, split in ((10, TWO_BUNDLES[10][1]), (20, only_editors)):
        done = publish_split(storage, make_image(TWO_BUNDLES[version][0], tmp_path,
                                                 f"image-{version}"), version, split)
        assert done.returncode == 0, done.stderr
    assert "warning: bundle debug of version 10 is not defined for 20: it leaves the MoM " \
        "(our client removes its files on update; a c42f8a3a client keeps them)" in done.stderr
    assert set(mom_lines(storage, 20)) == {"os-core", "editors"}


def test_check_names_a_mom_without_os_core_a_bundle_twice_and_one_from_the_future(
        two: Path, tmp_path: Path) -> None:
    from swupd_repo.check import CheckFailed, check_repository
    from swupd_repo.swupd.manifest_tar import manifest_tar_bytes

    storage = _copy(two, tmp_path)
    www20 = storage.www(20)
    mom = manifest(storage.root, 20, "MoM")
    lines_by_name = {e.path: e for e in mom.entries}
    mom.entries = [lines_by_name["editors"], lines_by_name["editors"],
                   lines_by_name["debug"].with_(last_change=30)]
    (www20 / "Manifest.MoM").write_bytes(mom.to_bytes())
    (www20 / "Manifest.MoM.tar").write_bytes(
        manifest_tar_bytes([("Manifest.MoM", mom.to_bytes())]))
    with pytest.raises(CheckFailed) as err:
        check_repository(storage, simulate=False)
    problems = err.value.report.problems
    where = f"{www20}/Manifest.MoM"
    for expected in (f"{where}: bundle editors is listed twice",
                     f"{where}: bundle debug names version 30, after this one",
                     f"{where} has no os-core line: no device can install or update"):
        assert expected in problems, problems
