"""Bundles end to end (issue 15): repositories with several bundles, published by our generator
from real trees and their stored split, served over real HTTP on 127.0.0.1, and a device
(a scratch root, the client run as root) that installs, adds, removes and updates bundles.

The scenario, versions 10, 20 and 30 (``SCENARIO``):

* os-core: os-release, ``/usr/bin/ls`` (changes), ``/usr/lib/tobundle`` (moves into tools at
  20), ``/usr/share/doc`` (a directory several bundles put files in);
* editors (changes at 20), tools (gains ``/usr/lib/tobundle``, gives ``/usr/lib/moving`` to
  os-core), legacy (dropped at 20), extras (added at 20);
* at 30 tools is dropped, and ``/usr/lib/tobundle`` goes back to os-core; editors and extras
  do not change (their MoM lines stay at 20).

Every expected tree is worked out here from the scenario alone: the version's tree without the
paths the other bundles own; none of it comes from the client or ``check``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import copy_tree
from helpers_bundles import base_tree, publish_versions, write_tree
from helpers_cli import swupd_repo
from helpers_signing import manifest_tar
from helpers_trees import snapshot
from swupd_repo.check import CheckFailed, check_repository
from swupd_repo.client import (
    bundle_add,
    bundle_list,
    bundle_remove,
    compare_trees,
    install,
    update,
    verify,
)
from swupd_repo.errors import ClientError
from swupd_repo.progress import RecordingReporter
from swupd_repo.serve import serve_in_thread
from swupd_repo.storage import Storage
from swupd_repo.swupd.manifest import manifest_hash, parse_manifest

TRACK = "/usr/share/clear/bundles"


def _files(version: int, extra: dict[str, str | None]) -> dict[str, str | None]:
    return {**base_tree(version, []), "usr/share/doc": None, "opt": None, **extra}


#: version -> (tree, split) as tests/helpers_bundles.py takes them
#: (``/usr/share/man`` is editors', and tools has a file in it: both manifests list it)
SCENARIO: dict[int, tuple[dict[str, str | None], dict[str, set[str]]]] = {
    10: (_files(10, {
        "usr/bin/ls": "ls 10\n",
        "usr/lib/tobundle": "os-core's at 10, tools' at 20\n",
        "usr/bin/vi": "vi 10\n", "usr/share/vim": None, "usr/share/vim/vimrc": "set nu\n",
        "usr/share/doc/vi": "vi docs\n", "usr/share/clear/bundles/editors": "",
        "usr/share/man": None, "usr/share/man/vi.1": "vi(1)\n", "usr/share/man/gdb.1": "gdb(1)\n",
        "usr/bin/gdb": "gdb\n", "usr/lib/moving": "tools' at 10, os-core's at 20\n",
        "opt/tools": None, "opt/tools/helper": "helper\n",
        "usr/share/doc/gdb": "gdb docs\n", "usr/share/clear/bundles/tools": "",
        "usr/bin/legacy": "legacy\n", "usr/share/clear/bundles/legacy": "",
    }), {
        "editors": {"/usr/bin/vi", "/usr/share/vim", "/usr/share/vim/vimrc",
                    "/usr/share/doc/vi", "/usr/share/man", "/usr/share/man/vi.1",
                    f"{TRACK}/editors"},
        "tools": {"/usr/bin/gdb", "/usr/lib/moving", "/opt/tools", "/opt/tools/helper",
                  "/usr/share/doc/gdb", "/usr/share/man/gdb.1", f"{TRACK}/tools"},
        "legacy": {"/usr/bin/legacy", f"{TRACK}/legacy"},
    }),
    20: (_files(20, {
        "usr/bin/ls": "ls 20\n",
        "usr/lib/moving": "tools' at 10, os-core's at 20\n",
        "usr/bin/vi": "vi 20, a little longer\n", "usr/share/vim": None,
        "usr/share/vim/vimrc": "set nu\n", "usr/share/doc/vi": "vi docs\n",
        "usr/share/clear/bundles/editors": "",
        "usr/share/man": None, "usr/share/man/vi.1": "vi(1)\n", "usr/share/man/gdb.1": "gdb(1)\n",
        "usr/bin/gdb": "gdb\n", "usr/lib/tobundle": "os-core's at 10, tools' at 20\n",
        "opt/tools": None, "opt/tools/helper": "helper\n",
        "usr/share/doc/gdb": "gdb docs\n", "usr/share/clear/bundles/tools": "",
        "usr/bin/extra": "extra\n", "usr/share/clear/bundles/extras": "",
    }), {
        "editors": {"/usr/bin/vi", "/usr/share/vim", "/usr/share/vim/vimrc",
                    "/usr/share/doc/vi", "/usr/share/man", "/usr/share/man/vi.1",
                    f"{TRACK}/editors"},
        "tools": {"/usr/bin/gdb", "/usr/lib/tobundle", "/opt/tools", "/opt/tools/helper",
                  "/usr/share/doc/gdb", "/usr/share/man/gdb.1", f"{TRACK}/tools"},
        "extras": {"/usr/bin/extra", f"{TRACK}/extras"},
    }),
    30: (_files(30, {
        "usr/bin/ls": "ls 20\n",
        "usr/lib/moving": "tools' at 10, os-core's at 20\n",
        "usr/lib/tobundle": "os-core's at 10, tools' at 20\n",
        "usr/bin/vi": "vi 20, a little longer\n", "usr/share/vim": None,
        "usr/share/vim/vimrc": "set nu\n", "usr/share/doc/vi": "vi docs\n",
        "usr/share/clear/bundles/editors": "",
        "usr/share/man": None, "usr/share/man/vi.1": "vi(1)\n",
        "usr/bin/extra": "extra\n", "usr/share/clear/bundles/extras": "",
    }), {
        "editors": {"/usr/bin/vi", "/usr/share/vim", "/usr/share/vim/vimrc",
                    "/usr/share/doc/vi", "/usr/share/man", "/usr/share/man/vi.1",
                    f"{TRACK}/editors"},
        "extras": {"/usr/bin/extra", f"{TRACK}/extras"},
    }),
}


def not_expected(version: int, bundles: set[str]) -> set[str]:
    """The paths of ``version``'s tree that a device with os-core and ``bundles`` must not
    have: those the other bundles own, except directories above a path it has (editors owns
    ``/usr/share/man``, and a device with tools alone has it for ``gdb.1``)."""
    files, split = SCENARIO[version]
    others = {p for name, paths in split.items() if name not in bundles for p in paths}
    needed = set()
    for path in {f"/{p}" for p in files} - others:
        while path:
            path = path.rpartition("/")[0]
            needed.add(path)
    return others - needed


def skip(path: str) -> bool:
    return path.startswith("/etc/")  # config belongs to the device (never in a manifest)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Storage, dict[int, Path]]:
    """Versions 10, 20 and 30 published from real .dsk images with their splits
    (tests/helpers_bundles.py), and each version's tree as written into its image."""
    base = tmp_path_factory.mktemp("bundles")
    storage = Storage(publish_versions(base / "storage", base / "work", SCENARIO))
    trees = {v: write_tree(base / f"tree-{v}", files) for v, (files, _) in SCENARIO.items()}
    return storage, trees


@pytest.fixture(scope="module")
def url(repo: tuple[Storage, dict[int, Path]]):
    with serve_in_thread(repo[0].www_dir) as base:
        yield base


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "root", tmp_path / "state"


def test_the_repository_has_the_bundles(repo: tuple[Storage, dict[int, Path]]) -> None:
    storage, _ = repo
    moms = {v: (storage.www(v) / "Manifest.MoM").read_text() for v in (10, 20, 30)}
    for name in ("os-core", "editors", "tools", "legacy"):
        assert f"\t{name}\n" in moms[10]
    assert "\tlegacy\n" not in moms[20] and "\textras\n" in moms[20]
    assert "\ttools\n" not in moms[30] and "\t20\teditors\n" in moms[30]


def test_add_a_bundle_then_update_gives_the_expected_tree(
        repo: tuple[Storage, dict[int, Path]], url: str, device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    install(url, root, 10, state_dir=state)
    assert bundle_list(root) == [("os-core", True)]
    assert compare_trees(root, trees[10], skip,
                         not_expected=not_expected(10, set())) == []
    stats = bundle_add(url, root, ["editors"], state_dir=state)
    assert stats.added == ["editors"] and stats.from_fullfile + stats.from_pack > 0
    assert "10/pack-editors-from-0.tar" in stats.packs
    assert bundle_list(root) == [("os-core", True), ("editors", True)]
    assert compare_trees(root, trees[10], skip,
                         not_expected=not_expected(10, {"editors"})) == []
    stats = update(url, root, to=20, state_dir=state)
    assert (stats.from_version, stats.to_version) == (10, 20)
    assert compare_trees(root, trees[20], skip,
                         not_expected=not_expected(20, {"editors"})) == []
    assert (root / "usr/bin/vi").read_bytes() == b"vi 20, a little longer\n"
    report = verify(url, root)
    assert report.ok and report.bundles == ["os-core", "editors"]
    # verify covers the bundle: a changed editors file is found, an absent tools one is not
    (root / "usr/bin/vi").write_bytes(b"changed\n")
    assert [m.path for m in verify(url, root).mismatches] == ["/usr/bin/vi"]


def test_add_without_packs_uses_fullfiles(url: str, repo: tuple[Storage, dict[int, Path]],
                                          device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    install(url, root, 20, state_dir=state)
    stats = bundle_add(url, root, ["tools", "extras"], state_dir=state, packs=False)
    assert stats.added == ["tools", "extras"] and stats.packs == [] and stats.from_fullfile > 0
    assert compare_trees(root, trees[20], skip,
                         not_expected=not_expected(20, {"tools", "extras"})) == []


def test_install_takes_bundles(url: str, repo: tuple[Storage, dict[int, Path]],
                               device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    stats = install(url, root, 10, state_dir=state, bundles=["tools"])
    assert stats.added == ["tools"]
    assert [n for n, _ in bundle_list(root)] == ["os-core", "tools"]
    assert compare_trees(root, trees[10], skip, not_expected=not_expected(10, {"tools"})) == []


def test_remove_deletes_exactly_the_bundle_s_own_files(
        url: str, repo: tuple[Storage, dict[int, Path]], device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    install(url, root, 20, state_dir=state, bundles=["editors", "tools"])
    before = snapshot(root)
    stats = bundle_remove(url, root, ["editors"], state_dir=state)
    after = snapshot(root)
    own = {p[1:] for p in SCENARIO[20][1]["editors"]} - {"usr/share/man"}
    assert set(before) - set(after) == own and stats.deleted == len(own)
    assert (root / "usr/share/man/gdb.1").is_file()  # tools lists the directory too
    assert {p: after[p] for p in after} == {p: before[p] for p in after}  # nothing else changed
    assert (root / "usr/share/doc/gdb").is_file()  # the shared directory stays
    assert bundle_list(root) == [("os-core", True), ("tools", True)]
    assert compare_trees(root, trees[20], skip, not_expected=not_expected(20, {"tools"})) == []
    assert verify(url, root).ok


def test_remove_refuses_os_core_and_what_is_not_installed(
        url: str, device: tuple[Path, Path]) -> None:
    root, state = device
    install(url, root, 20, state_dir=state, bundles=["tools"])
    before = snapshot(root)
    with pytest.raises(ClientError, match="os-core cannot be removed"):
        bundle_remove(url, root, ["os-core"], state_dir=state)
    with pytest.raises(ClientError, match="editors is not installed"):
        bundle_remove(url, root, ["tools", "editors"], state_dir=state)
    assert snapshot(root) == before


def test_a_file_moving_between_bundles_updates_on_every_device(
        url: str, repo: tuple[Storage, dict[int, Path]], tmp_path: Path) -> None:
    """/usr/lib/moving goes from tools into os-core, /usr/lib/tobundle from os-core into
    tools: a device without tools gains the first and loses the second; one with tools keeps
    both."""
    _, trees = repo
    for bundles in (set(), {"tools"}):
        root, state = tmp_path / f"root-{len(bundles)}", tmp_path / f"state-{len(bundles)}"
        install(url, root, 10, state_dir=state, bundles=sorted(bundles))
        assert (root / "usr/lib/moving").exists() == bool(bundles)
        assert (root / "usr/lib/tobundle").is_file()
        update(url, root, to=20, state_dir=state)
        assert (root / "usr/lib/moving").is_file()
        assert (root / "usr/lib/tobundle").exists() == bool(bundles)
        assert compare_trees(root, trees[20], skip,
                             not_expected=not_expected(20, bundles)) == [], bundles
        assert verify(url, root).ok


def test_a_dropped_bundle_goes_and_a_new_one_can_be_added(
        url: str, repo: tuple[Storage, dict[int, Path]], device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    install(url, root, 10, state_dir=state, bundles=["legacy", "editors"])
    assert (root / "usr/bin/legacy").is_file()
    reporter = RecordingReporter()
    stats = update(url, root, to=20, state_dir=state, reporter=reporter)
    assert stats.removed == ["legacy"]
    assert any("bundle legacy is not in version 20" in w for w in reporter.warnings)
    assert not (root / "usr/bin/legacy").exists()
    assert bundle_list(root) == [("os-core", True), ("editors", True)]
    assert compare_trees(root, trees[20], skip,
                         not_expected=not_expected(20, {"editors"})) == []
    assert bundle_list(root, url, all_bundles=True) == [
        ("editors", True), ("extras", False), ("os-core", True), ("tools", False)]
    bundle_add(url, root, ["extras"], state_dir=state)
    assert compare_trees(root, trees[20], skip,
                         not_expected=not_expected(20, {"editors", "extras"})) == []
    assert verify(url, root).ok


def test_update_across_versions_through_a_dropped_bundle(
        url: str, repo: tuple[Storage, dict[int, Path]], device: tuple[Path, Path]) -> None:
    """10 -> 30 at once with tools: tools' files go (it is dropped at 30) except
    /usr/lib/moving and /usr/lib/tobundle, which os-core has by then."""
    _, trees = repo
    root, state = device
    install(url, root, 10, state_dir=state, bundles=["tools", "editors"])
    stats = update(url, root, state_dir=state)
    assert (stats.to_version, stats.removed) == (30, ["tools"])
    assert (root / "usr/lib/moving").is_file() and (root / "usr/lib/tobundle").is_file()
    assert not (root / "usr/bin/gdb").exists() and not (root / "opt/tools").exists()
    assert os.listdir(root / "usr/share/man") == ["vi.1"]
    assert bundle_list(root) == [("os-core", True), ("editors", True)]
    assert compare_trees(root, trees[30], skip,
                         not_expected=not_expected(30, {"editors"})) == []
    assert verify(url, root).ok


def test_update_uses_each_bundle_s_delta_pack(url: str, device: tuple[Path, Path]) -> None:
    root, state = device
    install(url, root, 10, state_dir=state, bundles=["editors"])
    stats = update(url, root, to=20, state_dir=state)
    assert {"20/pack-os-core-from-10.tar", "20/pack-editors-from-10.tar"} <= set(stats.packs)
    # editors does not change at 30: no pack of it is asked for
    stats = update(url, root, state_dir=state)
    assert stats.packs == ["30/pack-os-core-from-20.tar"]


def test_cli_bundle_commands(url: str, device: tuple[Path, Path]) -> None:
    root, state = device
    common = ["--path", root, "--url", url, "--state-dir", state]
    assert swupd_repo("client", "install", "--version", "10", *common).returncode == 0
    done = swupd_repo("client", "bundle-add", "editors", "tools", *common)
    assert done.returncode == 0, done.stderr
    assert "added editors, tools at version 10" in done.stdout
    done = swupd_repo("client", "bundle-list", "--path", root)
    assert done.stdout.split() == ["os-core", "editors", "tools"]
    done = swupd_repo("client", "bundle-remove", "os-core", *common)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "os-core cannot be removed" in done.stderr
    done = swupd_repo("client", "bundle-remove", "tools", *common)
    assert done.returncode == 0 and "removed tools at version 10" in done.stdout
    assert not (root / "usr/bin/gdb").exists()


def test_check_passes_with_every_bundle_set(repo: tuple[Storage, dict[int, Path]]) -> None:
    storage, _ = repo
    report = check_repository(storage)
    assert [s.label() for s in report.simulations] == [
        "install->30 [os-core]", "install->30 [all bundles]",
        "10->30 [os-core]", "10->30 [all bundles]", "20->30 [os-core]", "20->30 [all bundles]"]


def test_check_finds_a_bundle_s_difference_only_on_its_devices(
        repo: tuple[Storage, dict[int, Path]], tmp_path: Path) -> None:
    """The image's copy of a bundle file differs from what was published: devices with every
    bundle report it, os-core devices (which must not have it) do not."""
    storage = Storage(copy_tree(repo[0].root, tmp_path / "storage"))
    vi = storage.os_core(30) / "usr/bin/vi"
    st = vi.stat()
    vi.unlink()  # it may share its inode with another stored tree
    vi.write_bytes(b"not what was published\n")
    os.chown(vi, st.st_uid, st.st_gid)
    vi.chmod(st.st_mode & 0o7777)
    with pytest.raises(CheckFailed) as err:
        check_repository(storage, simulate=True, trust_stamps=False)
    problems = err.value.report.problems
    assert any(p.startswith("update 10 -> 30 [all bundles]: /usr/bin/vi: content differs")
               for p in problems), problems
    assert not any("[os-core]" in p for p in problems), problems


def rewrite(www: Path, version: int, name: str, edit) -> bytes:
    """Edit ``www/<v>/Manifest.<name>`` (plain and tar) and re-hash its MoM line."""
    plain_path = www / str(version) / f"Manifest.{name}"
    manifest = parse_manifest(plain_path.read_bytes())
    edit(manifest)
    plain = manifest.to_bytes()
    plain_path.write_bytes(plain)
    (www / str(version) / f"Manifest.{name}.tar").write_bytes(manifest_tar(plain, name))
    if name != "MoM":
        rewrite(www, version, "MoM", lambda mom: setattr(mom, "entries", [
            e.with_(hash=manifest_hash(plain)) if e.path == name else e for e in mom.entries]))
    return plain


@pytest.fixture
def edited_url(repo: tuple[Storage, dict[int, Path]], tmp_path: Path):
    """The repository as a later server or another generator might write it: at 20, tools
    ``includes: editors`` (2.53 writes no includes:), and extras ships no tracking file."""
    www = tmp_path / "www"
    shutil.copytree(repo[0].www_dir, www, symlinks=True)
    rewrite(www, 20, "tools", lambda m: setattr(m, "includes", ("editors",)))
    rewrite(www, 20, "extras", lambda m: setattr(m, "entries", [
        e for e in m.entries if e.path != f"{TRACK}/extras"]))
    with serve_in_thread(www) as base:
        yield base


def test_includes_are_added_with_a_bundle_and_protect_it(
        edited_url: str, repo: tuple[Storage, dict[int, Path]],
        device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    url = edited_url
    install(url, root, 20, state_dir=state)
    stats = bundle_add(url, root, ["tools"], state_dir=state)
    assert stats.added == ["tools", "editors"]
    assert compare_trees(root, trees[20], skip,
                         not_expected=not_expected(20, {"tools", "editors"})) == []
    before = snapshot(root)
    with pytest.raises(ClientError, match="cannot remove editors: tools includes it"):
        bundle_remove(url, root, ["editors"], state_dir=state)
    assert snapshot(root) == before
    bundle_remove(url, root, ["tools", "editors"], state_dir=state)
    assert bundle_list(root) == [("os-core", True)]
    assert compare_trees(root, trees[20], skip, not_expected=not_expected(20, set())) == []


def test_a_bundle_without_its_tracking_file_is_still_tracked(
        edited_url: str, repo: tuple[Storage, dict[int, Path]],
        device: tuple[Path, Path]) -> None:
    _, trees = repo
    root, state = device
    install(edited_url, root, 20, state_dir=state)
    reporter = RecordingReporter()
    bundle_add(edited_url, root, ["extras"], state_dir=state, reporter=reporter)
    assert any("does not ship its tracking file" in w for w in reporter.warnings)
    assert bundle_list(root) == [("os-core", True), ("extras", True)]
    bundle_remove(edited_url, root, ["extras"], state_dir=state)
    assert bundle_list(root) == [("os-core", True)]
    assert compare_trees(root, trees[20], skip, not_expected=not_expected(20, set())) == []


# -- the scenario through the real definitions ---------------------------------------

@pytest.fixture(scope="module")
def defined(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """Versions 10 and 20 of a merged-/usr image with a dpkg database
    (tests/bundle_trees.py), published by ``swupd-repo publish`` with debug defined by the
    packages gdb and strace and docs by the glob /usr/share/doc/**; at 20 gdb's binary
    changes and docs gains a file."""
    from bundle_trees import make_dpkg_tree
    from dsk import make_dsk
    from helpers_cli import publish

    work = tmp_path_factory.mktemp("defined")
    storage = work / "storage"
    for version in (10, 20):
        tree = make_dpkg_tree(work / f"dpkg{version}", version)
        if version == 20:
            (tree / "usr/bin/gdb").write_text("gdb binary, version 2\n")
            (tree / "usr/share/doc/base-files/changelog").write_text("changes\n")
        image = make_dsk(tree, work / "img", f"dpkg{version}")
        done = publish(storage, image, "--bundle-packages", "debug=gdb,strace",
                       "--bundle-globs", "docs=/usr/share/doc/**")
        assert done.returncode == 0, done.stderr
    return Storage(storage)


def test_defined_bundles_add_update_remove_and_check(defined: Storage,
                                                     device: tuple[Path, Path]) -> None:
    """A device installs os-core at 10, adds debug, updates to 20 and equals the stored image
    without docs' paths; removing debug leaves os-core's; check passes with both sets."""
    from swupd_repo.treemeta import load as load_meta

    docs = {"/usr/share/doc", "/usr/share/doc/base-files",
            "/usr/share/doc/base-files/copyright", "/usr/share/doc/base-files/changelog",
            f"{TRACK}/docs"}
    debug = {"/usr/bin/gdb", "/usr/bin/strace", "/usr/lib/libgdbx.so.1", "/usr/share/gdb",
             "/usr/share/gdb/python", "/usr/share/gdb/python/gdb.py", f"{TRACK}/debug"}
    image = defined.os_core(20)
    root, state = device
    with serve_in_thread(defined.www_dir) as url:
        install(url, root, 10, state_dir=state)
        assert not (root / "usr/bin/gdb").exists()
        assert bundle_add(url, root, ["debug"], state_dir=state).added == ["debug"]
        update(url, root, state_dir=state)
        assert (root / "usr/bin/gdb").read_text() == "gdb binary, version 2\n"
        assert compare_trees(root, image, skip, load_meta(image), not_expected=docs) == []
        assert verify(url, root).ok
        bundle_remove(url, root, ["debug"], state_dir=state)
        assert compare_trees(root, image, skip, load_meta(image),
                             not_expected=docs | debug) == []
    report = check_repository(defined)
    assert len(report.simulations) == 4 and report.ok


def test_a_tracked_bundle_the_repository_lacks(url: str, device: tuple[Path, Path]) -> None:
    """A tracking file for a bundle no MoM lists (made by hand): verify says its files were
    not verified, the CLI notes it, adding another bundle still works, and the next update
    stops tracking it."""
    root, state = device
    install(url, root, 20, state_dir=state)
    (root / "usr/share/clear/bundles/ghost").touch()
    report = verify(url, root)
    assert report.ok and report.unknown_bundles == ["ghost"]
    done = swupd_repo("client", "verify", "--path", root, "--url", url)
    assert done.returncode == 0 and "bundle ghost is tracked but not in version 20" in done.stdout
    with pytest.raises(ClientError, match=r"cannot remove ghost: version 20 .* does not list it"):
        bundle_remove(url, root, ["ghost"], state_dir=state)
    assert bundle_add(url, root, ["extras"], state_dir=state).added == ["extras"]
    assert update(url, root, state_dir=state).removed == ["ghost"]
    assert bundle_list(root) == [("os-core", True), ("extras", True)]


def test_a_tampered_bundle_file_fails_the_add_and_leaves_the_target(
        repo: tuple[Storage, dict[int, Path]], device: tuple[Path, Path], tmp_path: Path) -> None:
    """Every hash is checked before the target is touched: the bundle stays untracked."""
    from helpers_signing import tamper_fullfile

    www = tmp_path / "www"
    shutil.copytree(repo[0].www_dir, www, symlinks=True)
    vi = parse_manifest((www / "20/Manifest.editors").read_bytes()).by_path()["/usr/bin/vi"]
    tampered = www / f"20/files/{vi.hash}.tar"
    tamper_fullfile(tampered)
    root, state = device
    with serve_in_thread(www) as url:
        install(url, root, 20, state_dir=state)
        before = snapshot(root)
        with pytest.raises(ClientError, match=f"{vi.hash}.tar: content for /usr/bin/vi hashes"):
            bundle_add(url, root, ["editors"], state_dir=state, packs=False)
    assert snapshot(root) == before and bundle_list(root) == [("os-core", True)]


def test_an_include_the_version_lacks_is_refused(
        repo: tuple[Storage, dict[int, Path]], device: tuple[Path, Path], tmp_path: Path) -> None:
    www = tmp_path / "www"
    shutil.copytree(repo[0].www_dir, www, symlinks=True)
    rewrite(www, 20, "extras", lambda m: setattr(m, "includes", ("nosuch",)))
    root, state = device
    with serve_in_thread(www) as url:
        install(url, root, 20, state_dir=state)
        before = snapshot(root)
        with pytest.raises(ClientError, match="cannot add extras: nosuch, named by includes:"):
            bundle_add(url, root, ["extras"], state_dir=state)
    assert snapshot(root) == before
