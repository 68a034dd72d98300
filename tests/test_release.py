"""Stage, release and revert on a repository our generator builds from the vectors' trees,
with devices simulated by our verifying client over real HTTP (``swupd-repo serve`` code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import copy_tree
from helpers_cli import build, swupd_repo
from helpers_trees import disown, snapshot
from swupd_repo.check import check_repository
from swupd_repo.client import compare_trees, install, update
from swupd_repo.osrelease import read_version_id, stamp_version_id
from swupd_repo.serve import serve_in_thread
from swupd_repo.storage import Storage


def is_os_release(path: str) -> bool:
    return path in ("/usr/lib/os-release", "/etc/os-release")


@pytest.fixture(scope="module")
def tree30(rootfs_trees: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 20's tree with one file changed, one added and one deleted."""
    tree = copy_tree(rootfs_trees[20], tmp_path_factory.mktemp("tree30") / "30")
    (tree / "usr/bin/prog01").write_bytes((tree / "usr/bin/prog01").read_bytes() + b"30")
    (tree / "usr/share/added-in-30").write_text("new in 30\n")
    (tree / "usr/bin/prog02").unlink()
    stamp_version_id(tree, 30)
    return tree


@pytest.fixture
def staged(tmp_path: Path, rootfs_trees: dict[int, Path]) -> Path:
    """10 released, 20 staged (with the gate on: it must pass while latest stays 10)."""
    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    build(storage, rootfs_trees[20], 20, "--stage", "--check")
    return storage


def test_stage_then_release(staged: Path, tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    st = Storage(staged)
    assert st.latest_www_marker.read_text() == "10\n"
    assert st.latest_image_marker.read_text() == "20\n"
    assert st.latest() == 20 and st.released() == 10
    root, state = tmp_path / "root", tmp_path / "state"
    with serve_in_thread(st.www_dir) as url:
        install(url, root, 10, state_dir=state)
        stats = update(url, root, state_dir=state)
        assert stats.to_version == 10 and stats.installed == 0  # 20 is not visible
        assert read_version_id(root)[0] == 10
        done = swupd_repo("release", "20", "--storage", staged, "--check")
        assert done.returncode == 0, done.stderr
        assert "released version 20 (devices were on 10)" in done.stdout
        assert st.latest_www_marker.read_text() == "20\n"
        stats = update(url, root, state_dir=state)
        assert stats.to_version == 20 and stats.installed > 0
    assert compare_trees(root, rootfs_trees[20], lambda p: p.startswith("/etc/")) == []


def test_client_can_be_pointed_at_a_staged_version(staged: Path, tmp_path: Path,
                                                   rootfs_trees: dict[int, Path]) -> None:
    st = Storage(staged)
    root = tmp_path / "root"
    with serve_in_thread(st.www_dir) as url:
        install(url, root, 10, state_dir=tmp_path / "state")
        done = swupd_repo("client", "update", "--path", root, "--url", url, "--version", "20",
                          "--state-dir", tmp_path / "state")
        assert done.returncode == 0, done.stderr
    assert read_version_id(root)[0] == 20
    assert compare_trees(root, rootfs_trees[20], lambda p: p.startswith("/etc/")) == []
    assert st.released() == 10


def test_next_build_goes_above_the_staged_version_and_builds_on_it(
        staged: Path, tree30: Path) -> None:
    st = Storage(staged)
    build(st.root, tree30, 30, "--stage")
    mom = (st.www(30) / "Manifest.MoM").read_text()
    assert "previous:\t20\n" in mom
    assert st.released() == 10 and st.latest() == 30
    # releasing the newest staged version skips 20 for devices; both paths are proven
    check_repository(st, 30, from_versions=[10, 20])


@pytest.mark.parametrize(("version", "message"), [
    ("30", "version 30 is not published"),
    ("10", "version 10 is not after the released version 10: latest only moves forward"),
    ("5", "version 5 is not published"),
])
def test_release_of_missing_or_older_version_is_refused(staged: Path, version: str,
                                                        message: str) -> None:
    before = snapshot(staged)
    done = swupd_repo("release", version, "--storage", staged)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert snapshot(staged) == before


def test_release_cannot_go_back(staged: Path) -> None:
    assert swupd_repo("release", "20", "--storage", staged).returncode == 0
    before = snapshot(staged)
    done = swupd_repo("release", "20", "--storage", staged)
    assert done.returncode == 2 and "not after the released version 20" in done.stderr
    assert "swupd-repo revert --to 20" in done.stderr
    assert snapshot(staged) == before


def test_release_and_revert_refresh_the_report_a_publish_wrote(staged: Path) -> None:
    """STORAGE/report.* (the BitBake task writes it after each publish) shows the released
    version and every device's download to it: a release and a revert change both."""
    import json

    from swupd_repo.report import collect, to_html, write_report_files

    st = Storage(staged)
    html, data = write_report_files(st)
    assert json.loads(data.read_text())["released"] == 10
    done = swupd_repo("release", "20", "--storage", staged)
    assert done.returncode == 0, done.stderr
    report = json.loads(data.read_text())
    assert report["released"] == 20
    assert [(u["from_version"], u["to_version"]) for u in report["updates"]] == [(10, 20)]
    assert f"report: {html}" in done.stderr
    done = swupd_repo("revert", "--to", "20", "--storage", staged, "--stage")
    assert done.returncode == 0, done.stderr
    report = json.loads(data.read_text())
    assert [v["version"] for v in report["versions"]] == [10, 20, 30]
    assert (report["latest"], report["released"]) == (30, 20)
    assert html.read_text() == to_html(collect(st))  # the page too, not only the JSON


def test_release_writes_no_report_where_none_was_asked_for(staged: Path) -> None:
    assert swupd_repo("release", "20", "--storage", staged).returncode == 0
    assert not (staged / "report.json").exists() and not (staged / "report.html").exists()


def test_revert_publishes_the_old_tree_as_a_new_version(
        tmp_path: Path, rootfs_trees: dict[int, Path], tree30: Path) -> None:
    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    build(storage, rootfs_trees[20], 20)
    build(storage, tree30, 30)
    st = Storage(storage)
    root, state = tmp_path / "root", tmp_path / "state"
    with serve_in_thread(st.www_dir) as url:
        install(url, root, 30, state_dir=state)  # a device on N-10
        done = swupd_repo("revert", "--to", "20", "--storage", storage, "--check")
        assert done.returncode == 0, done.stderr
        assert "published version 40 with the content of version 20" in done.stdout
        assert st.latest_www_marker.read_text() == "40\n" and st.released() == 40
        assert read_version_id(st.os_core(40)) == (40, st.os_core(40) / "usr/lib/os-release")
        # the stored tree equals 20's apart from os-release
        assert compare_trees(st.os_core(40), st.os_core(20), is_os_release) == []
        assert compare_trees(st.os_core(40), st.os_core(20), lambda p: False) != []
        stats = update(url, root, state_dir=state)
    assert stats.from_version == 30 and stats.to_version == 40 and stats.deleted == 1
    assert read_version_id(root)[0] == 40
    assert compare_trees(root, rootfs_trees[20],
                         lambda p: p.startswith("/etc/") or is_os_release(p)) == []
    # every update path (install, 10, 20 and 30 -> 40) passes the simulation on its own too
    report = check_repository(st, 40)
    assert [(s.from_version, s.to_version) for s in report.simulations] == [
        (0, 40), (10, 40), (20, 40), (30, 40)]


def test_revert_to_a_missing_version_is_refused(tmp_path: Path,
                                                rootfs_trees: dict[int, Path]) -> None:
    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    before = snapshot(storage)
    done = swupd_repo("revert", "--to", "20", "--storage", storage)
    assert done.returncode == 2 and "version 20 is not published" in done.stderr
    assert snapshot(storage) == before


def test_release_gate_refuses_a_broken_staged_version(staged: Path) -> None:
    st = Storage(staged)
    fullfile = next((st.www(20) / "files").iterdir())
    fullfile.unlink()
    done = swupd_repo("release", "20", "--storage", staged, "--check")
    assert done.returncode == 2 and str(fullfile) in done.stderr
    assert st.latest_www_marker.read_text() == "10\n"


def test_revert_the_format_cannot_express_loses_nothing(tmp_path: Path,
                                                        rootfs_trees: dict[int, Path]) -> None:
    """The vectors' 20 turns a file of 10 into a directory: going back is refused by the
    generator (format 3 cannot turn a directory into a file) and version 30 never appears."""
    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    build(storage, rootfs_trees[20], 20)
    before = snapshot(storage)
    done = swupd_repo("revert", "--to", "10", "--storage", storage)
    assert done.returncode == 2, done.stdout
    assert "turns a directory into a file" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(storage) == before


def test_devices_on_the_released_version_keep_a_delta_pack(staged: Path, tree30: Path,
                                                           tmp_path: Path) -> None:
    """10 released, 20 and 30 staged: 40's delta packs reach back two change points (20, 30)
    and also to 10, where devices are."""
    st = Storage(staged)
    build(staged, tree30, 30, "--stage")
    tree40 = copy_tree(tree30, tmp_path / "tree40")
    (tree40 / "usr/share/added-in-40").write_text("new in 40\n")
    stamp_version_id(tree40, 40)
    build(staged, tree40, 40, "--stage")
    assert sorted(p.name for p in st.www(40).glob("pack-*")) == [
        "pack-os-core-from-0.tar", "pack-os-core-from-10.tar", "pack-os-core-from-20.tar",
        "pack-os-core-from-30.tar"]
    assert swupd_repo("release", "40", "--storage", staged, "--check").returncode == 0
    root = tmp_path / "root"
    with serve_in_thread(st.www_dir) as url:
        install(url, root, 10, state_dir=tmp_path / "state")
        stats = update(url, root, state_dir=tmp_path / "state")
    assert stats.to_version == 40 and stats.packs == ["40/pack-os-core-from-10.tar"]
    assert stats.from_fullfile == 0
    assert compare_trees(root, tree40, lambda p: p.startswith("/etc/")) == []


def test_revert_of_a_recorded_tree_keeps_its_metadata(
        tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    """A tree stored with a metadata record (every extraction since issue 11) says nothing true
    about owners and xattrs on disk: revert must copy the record with it, or version 30 would
    be published with the build user's owners and no xattrs."""
    from swupd_repo.swupd.manifest import parse_manifest
    from swupd_repo.treemeta import record_path, write_from_disk

    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    build(storage, rootfs_trees[20], 20)
    st = Storage(storage)
    write_from_disk(st.os_core(20))  # the record of what root sees: the true metadata
    disown(st.os_core(20))
    done = swupd_repo("revert", "--to", "20", "--storage", storage)
    assert done.returncode == 0, done.stderr
    assert record_path(st.os_core(30)).read_bytes() == record_path(st.os_core(20)).read_bytes()

    def entries(version: int) -> dict[str, tuple[str, str]]:
        manifest = parse_manifest((st.www(version) / "Manifest.os-core").read_bytes())
        return {e.path: (e.flags, e.hash) for e in manifest.entries}

    old, new = entries(20), entries(30)
    assert {p for p in new if new[p] != old.get(p)} == {"/usr/lib/os-release"}


def test_revert_of_a_recorded_tree_without_usr_lib_os_release(
        tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    """An image with only etc/os-release: the revert's stamp creates usr/lib/os-release,
    which must enter the copy's record, or the copy and its record disagree and the revert
    is refused."""
    from swupd_repo.swupd.manifest import parse_manifest
    from swupd_repo.treemeta import read_record, record_path, write_from_disk

    storage = tmp_path / "storage"
    tree20 = copy_tree(rootfs_trees[20], tmp_path / "20")
    (tree20 / "usr/lib/os-release").unlink()
    build(storage, rootfs_trees[10], 10)
    build(storage, tree20, 20)
    st = Storage(storage)
    write_from_disk(st.os_core(20))
    disown(st.os_core(20))
    done = swupd_repo("revert", "--to", "20", "--storage", storage)
    assert done.returncode == 0, done.stderr
    assert read_version_id(st.os_core(30)) == (30, st.os_core(30) / "usr/lib/os-release")
    old, new = (read_record(record_path(st.os_core(v))) for v in (20, 30))
    assert set(new) - set(old) == {"/usr/lib/os-release"}
    assert all(new[p] == old[p] for p in old)
    manifest = parse_manifest((st.www(30) / "Manifest.os-core").read_bytes())
    # (the stateless format leaves /etc out)
    assert {e.path for e in manifest.entries if e.last_change == 30} == {"/usr/lib/os-release"}


def test_revert_of_a_tree_without_a_record_as_a_user_is_refused(
        tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    """A tree stored before records keeps its metadata on disk (root's owners, xattrs): a
    user's ``cp -a`` makes every copied file its own, so version 30 would be published with
    other owners. The revert is refused with one line and the fix, and changes nothing."""
    import shutil
    import subprocess
    import tempfile

    from helpers_users import as_nobody
    from swupd_repo.progress import NullReporter
    from swupd_repo.release import revert
    from swupd_repo.settings import load_settings

    base = Path(tempfile.mkdtemp(prefix="swupd-repo-nobody-"))  # pytest's tmp is root's 0700
    try:
        storage = base / "storage"
        build(storage, rootfs_trees[10], 10)
        build(storage, rootfs_trees[20], 20)
        st = Storage(storage)
        # the storage is the user's; the stored trees keep the owners root gave them
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        for version in (10, 20):
            shutil.rmtree(st.os_core(version))
            copy_tree(rootfs_trees[version], st.os_core(version))
        # readable by all, so the user's copy would not fail: it would drop owners silently
        subprocess.run(["chmod", "-R", "a+rX", str(st.os_core(10)), str(st.os_core(20))],
                       check=True)
        assert {path.lstat().st_uid for path in st.os_core(20).rglob("*")} != {65534}
        before = snapshot(storage)
        settings = load_settings(None, {"storage_dir": storage})
        _import_what_a_build_imports()  # the child cannot read /root, where Python lives
        outcome = as_nobody(lambda: revert(settings, 20, NullReporter()))
        after = snapshot(storage)
    finally:
        shutil.rmtree(base)
    assert outcome.startswith("StorageError: "), outcome
    assert "has no metadata record" in outcome and "swupd-repo record" in outcome
    assert "\n" not in outcome
    assert after == before


def _import_what_a_build_imports() -> None:
    """Modules a revert imports lazily, loaded before the child drops to 65534 (it cannot
    read the interpreter's tree under /root). With them, the unrefused revert of that test
    runs through as 65534, as it did before the refusal existed ("ok", owners dropped)."""
    import multiprocessing.popen_fork
    import multiprocessing.synchronize  # noqa: F401
    from importlib import import_module

    for module in ("backends.native", "swupd.publish", "swupd.builder", "swupd.packs",
                   "swupd.delta", "swupd.fullfiles", "swupd.scan", "dedup", "prune"):
        import_module(f"swupd_repo.{module}")


def test_prune_keeps_the_released_and_staged_trees(staged: Path, tree30: Path) -> None:
    """With 10 released and 20, 30 staged, a prune that only counts the delta window of
    latest (one change point: 20) would drop 10: the tree devices run, the one `release
    --check` and `revert --to 10` read, and the next build's extra delta pack starts from."""
    build(staged, tree30, 30, "--stage")
    done = swupd_repo("prune", "--storage", staged, "--keep", "1", "--deltapack-versions", "1")
    assert done.returncode == 0, done.stderr
    st = Storage(staged)
    assert sorted(int(p.name) for p in st.image_dir.iterdir() if p.name.isdigit()) == \
        [10, 20, 30]
    assert f"kept {st.image(10)}: released" in done.stdout
    assert f"kept {st.image(20)}: staged" in done.stdout
