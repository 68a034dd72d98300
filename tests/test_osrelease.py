"""os-release: read like the swupd client (usr/lib first, quotes stripped), set for the rootfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from swupd_repo.errors import ExtractError, VersionError
from swupd_repo.osrelease import (
    parse_version_id,
    read_version_id,
    set_version_id,
    stamp_version_id,
)
from swupd_repo.pipeline import check_os_release


@pytest.mark.parametrize("text, expected", [
    ('NAME=Ostro\nVERSION_ID="20"\n', 20),
    ("VERSION_ID='30'\n", 30),
    ("VERSION_ID=40\nVERSION_ID=50\n", 40),
    ("NAME=x\n", None),
    ("VERSION_ID=abc\n", None),
])
def test_parse(text: str, expected: int | None) -> None:
    assert parse_version_id(text) == expected


def test_set_version_id_replaces_or_adds() -> None:
    assert set_version_id("NAME=a\nVERSION_ID=1\nID=b\n", 20) == "NAME=a\nVERSION_ID=20\nID=b\n"
    assert set_version_id("NAME=a", 20) == "NAME=a\nVERSION_ID=20\n"


def test_usr_lib_first_then_etc_symlink(tmp_path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text("VERSION_ID=10\n")
    assert read_version_id(tmp_path) == (10, tmp_path / "etc/os-release")
    (tmp_path / "usr/lib/os-release").write_text("VERSION_ID=20\n")
    assert read_version_id(tmp_path)[0] == 20
    (tmp_path / "usr/lib/os-release").unlink()
    (tmp_path / "etc/os-release").unlink()
    (tmp_path / "usr/share").mkdir()
    (tmp_path / "usr/share/os-release").write_text("VERSION_ID=30\n")
    os.symlink("/usr/share/os-release", tmp_path / "etc/os-release")
    assert read_version_id(tmp_path)[0] == 30


def test_check_os_release_messages(tmp_path) -> None:
    with pytest.raises(ExtractError, match="no VERSION_ID"):
        check_os_release(tmp_path, 10)
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("VERSION_ID=10\n")
    check_os_release(tmp_path, 10)
    with pytest.raises(VersionError, match="OS_VERSION"):
        check_os_release(tmp_path, 20)


def test_stamp_keeps_a_stored_trees_record_in_step(tmp_path) -> None:
    """A stored tree's record names exactly its paths: the usr/lib/os-release (and the
    directories) the stamp creates must be added to it, owned by root like the rootfs hook
    makes them, and every path recorded before keeps its line."""
    from swupd_repo import treemeta

    tree = tmp_path / "os-core"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("NAME=x\nVERSION_ID=20\n")
    os.chown(tree / "etc/os-release", 1000, 1001)
    treemeta.write_from_disk(tree)
    before = treemeta.read_record(treemeta.record_path(tree))
    stamp_version_id(tree, 30)
    assert read_version_id(tree) == (30, tree / "usr/lib/os-release")
    assert (tree / "etc/os-release").read_text() == "NAME=x\nVERSION_ID=30\n"
    meta = treemeta.load(tree)  # checks the record against the tree on disk
    assert meta is not None
    assert {p: m for p, m in meta.entries.items() if p in before} == before
    assert {p: m for p, m in meta.entries.items() if p not in before} == {
        "/usr": treemeta.Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}),
        "/usr/lib": treemeta.Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}),
        "/usr/lib/os-release": treemeta.Meta(stat.S_IFREG | 0o644, 0, 0, 0, {})}


def test_stamp_of_a_tree_without_a_record_writes_none(tmp_path) -> None:
    """A rootfs (the bbclass hook) or a tree stored before records: nothing beside it."""
    from swupd_repo import treemeta

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("VERSION_ID=1\n")
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").symlink_to("../../etc/os-release")
    stamp_version_id(tmp_path, 40)
    assert read_version_id(tmp_path)[0] == 40
    assert (tmp_path / "usr/lib/os-release").is_symlink()
    assert not treemeta.record_path(tmp_path).exists()


def test_stamp_rewrites_a_read_only_file_of_a_users_copy(tmp_path) -> None:
    """An etc/os-release equal to the previous version's shares its inode, read-only on disk
    (dedup), and a user's ``cp -a`` for revert copies that mode: the stamp must still write it
    (as that user, who owns the copy) and leave the mode as it was."""
    import shutil
    import tempfile

    from helpers_users import as_nobody

    base = Path(tempfile.mkdtemp(prefix="swupd-repo-nobody-"))  # pytest's tmp is root's 0700
    try:
        (base / "etc").mkdir()
        (base / "usr/lib").mkdir(parents=True)
        for rel in ("etc/os-release", "usr/lib/os-release"):
            (base / rel).write_text("VERSION_ID=20\n")
        os.chmod(base / "etc/os-release", 0o444)
        for path in (base, *base.rglob("*")):
            os.chown(path, 65534, 65534)
        outcome = as_nobody(lambda: stamp_version_id(base, 30))
        texts = [(base / rel).read_text() for rel in ("etc/os-release", "usr/lib/os-release")]
        mode = stat.S_IMODE((base / "etc/os-release").stat().st_mode)
    finally:
        shutil.rmtree(base)
    assert outcome == "ok", outcome
    assert texts == ["VERSION_ID=30\n", "VERSION_ID=30\n"] and mode == 0o444
