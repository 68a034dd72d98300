"""os-release: read like the swupd client (usr/lib first, quotes stripped), set for the rootfs."""

from __future__ import annotations

import os

import pytest

from swupd_repo.errors import ExtractError, VersionError
from swupd_repo.osrelease import parse_version_id, read_version_id, set_version_id
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
