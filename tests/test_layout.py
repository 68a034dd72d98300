"""The disk-layout JSON: both generations, numbering, rootfs choice and every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsk import ROOTFS_PARTUUID, make_layout
from helpers_cli import swupd_repo
from swupd_repo.errors import LayoutError
from swupd_repo.layout import load_layout, parse_layout


def test_old_generation_rootfs_is_partition_5(tmp_path: Path) -> None:
    path = tmp_path / "disk-layout-intel-corei7-64.json"
    path.write_text(json.dumps(make_layout(1800, "old"), indent=4))
    layout = load_layout(path)
    part = layout.rootfs()
    assert (part.number, part.name, part.key, part.filesystem, part.uuid) == (
        5, "rootfs", "partition_05_rootfs", "ext4", ROOTFS_PARTUUID)
    assert [p.number for p in layout.partitions] == [1, 2, 3, 4, 5, 6, 7]
    assert layout.initial_offset_mb == 1 and part.size_mb == 1800


def test_new_generation_from_dsk_image_layout_variable() -> None:
    text = json.dumps(make_layout(900, "new", partuuid=ROOTFS_PARTUUID.upper()))
    part = parse_layout(text, "DSK_IMAGE_LAYOUT").rootfs()
    assert (part.number, part.key, part.uuid) == (3, "partition_03_rootfs", ROOTFS_PARTUUID)


def test_numbers_follow_sorted_keys_and_name_rootfs_counts() -> None:
    """Keys without NN (the oldest class's example) are numbered by sorted order."""
    text = json.dumps({
        "gpt_initial_offset_mb": 3,
        "z_system": {"name": "rootfs", "filesystem": "ext4", "uuid": 0, "size_mb": 9},
        "a_boot": {"name": "primary_uefi", "filesystem": "vfat", "uuid": 0, "size_mb": 1},
    })
    part = parse_layout(text, "x.json").rootfs()
    assert (part.number, part.key, part.uuid) == (2, "z_system", None)


def test_override_by_number_and_name() -> None:
    layout = parse_layout(json.dumps(make_layout(10)), "l.json")
    assert layout.rootfs("6").name == "mutable"
    assert layout.rootfs("rootfs").number == 5
    assert layout.rootfs(" 9 ").number == 9 and layout.rootfs("9").name == ""
    with pytest.raises(LayoutError, match="no partition named 'nope'"):
        layout.rootfs("nope")
    with pytest.raises(LayoutError, match="filesystem 'vfat'"):
        layout.rootfs("primary_uefi")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"missing\.json does not exist") as info:
        load_layout(tmp_path / "missing.json")
    assert "SWUPD_REPO_DISK_LAYOUT" in str(info.value)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "partition_01_rootfs": {\n    "name": "rootfs",,\n  }\n}\n')
    with pytest.raises(LayoutError, match=r"bad\.json is not valid JSON: .* line 3 column 22"):
        load_layout(path)


@pytest.mark.parametrize(("layout", "message"), [
    ({"partition_01_boot": {"name": "boot", "filesystem": "vfat"}}, "no rootfs partition"),
    ({"partition_01_rootfs": {"name": "rootfs", "filesystem": "ext4"},
      "partition_02_rootfs": {"name": "rootfs2", "filesystem": "ext4"}},
     "several rootfs partitions"),
    ({"partition_01_boot": {"name": "boot", "filesystem": "vfat"},
      "partition_03_rootfs": {"name": "rootfs", "filesystem": "ext4"}},
     "says partition 3, but it is partition 2"),
    ({"partition_01_rootfs": {"name": "rootfs", "filesystem": "btrfs"}},
     "filesystem 'btrfs'; only ext4"),
    ({"partition_01_rootfs": {"name": "rootfs", "filesystem": "ext4",
                              "uuid": "${ROOTFS_PARTUUID}"}}, "is not a UUID"),
    ({"gpt_initial_offset_mb": 3}, "lists no partitions"),
    ([1, 2], "must hold a JSON object"),
])
def test_layout_errors(layout: object, message: str) -> None:
    with pytest.raises(LayoutError, match=message) as info:
        parse_layout(json.dumps(layout), "DSK_IMAGE_LAYOUT").rootfs()
    assert "DSK_IMAGE_LAYOUT" in str(info.value) and info.value.hint


def test_deeply_nested_json_is_one_line(tmp_path: Path) -> None:
    """100,000 levels raised RecursionError from the json module: now a LayoutError, and the
    CLI's one line with exit status 2."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LayoutError, match="nests JSON arrays or objects too deeply"):
        load_layout(deep)
    nested = '{"partition_01_rootfs": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001
    with pytest.raises(LayoutError, match="DSK_IMAGE_LAYOUT nests"):
        parse_layout(nested, "DSK_IMAGE_LAYOUT")
    done = swupd_repo("publish", "--dsk", tmp_path / "x.dsk", "--layout", deep,
                      "--storage", tmp_path / "storage")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"swupd-repo: error: {deep} nests"), lines
