"""Partition tables of real sgdisk-made images, damaged copies, and a hand-made plain MBR."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from dsk import ROOTFS_PARTUUID
from helpers_cli import swupd_repo
from swupd_repo.errors import DiskImageError
from swupd_repo.gpt import find_partition, read_partition_table
from swupd_repo.layout import LayoutPartition, load_layout
from swupd_repo.progress import RecordingReporter


def part(number: int, name: str = "", uuid: str | None = None) -> LayoutPartition:
    return LayoutPartition(number=number, name=name, key=f"partition_{number:02d}_{name}",
                           filesystem="ext4", uuid=uuid)


@pytest.fixture
def image(ext4_image_copy: tuple[Path, Path]) -> tuple[Path, Path]:
    return ext4_image_copy


def test_entries_agree_with_sgdisk(image: tuple[Path, Path]) -> None:
    dsk, _ = image
    table = read_partition_table(dsk, RecordingReporter())
    assert table.kind == "gpt" and [e.number for e in table.entries] == list(range(1, 8))
    for entry in table.entries:
        info = subprocess.run(["sgdisk", "-i", str(entry.number), str(dsk)], check=True,
                              capture_output=True, text=True).stdout
        first = int(re.search(r"First sector: (\d+)", info).group(1))
        last = int(re.search(r"Last sector: (\d+)", info).group(1))
        guid = re.search(r"Partition unique GUID: (\S+)", info).group(1).lower()
        name = re.search(r"Partition name: '(.*)'", info).group(1)
        assert (entry.offset, entry.size, entry.partuuid, entry.name) == (
            first * 512, (last - first + 1) * 512, guid, name)


def test_rootfs_cross_checked_by_name_and_partuuid(image: tuple[Path, Path]) -> None:
    dsk, layout = image
    reporter = RecordingReporter()
    extent = find_partition(dsk, load_layout(layout).rootfs(), reporter)
    assert (extent.number, extent.name, extent.partuuid) == (5, "rootfs", ROOTFS_PARTUUID)
    assert extent.offset == 5 << 20 and extent.size == 32 << 20
    assert reporter.warnings == []
    with pytest.raises(DiskImageError, match="named 'rootfs' in the GPT, but the layout"):
        find_partition(dsk, part(5, "system"), reporter)
    with pytest.raises(DiskImageError, match=f"has PARTUUID {ROOTFS_PARTUUID}, but"):
        find_partition(dsk, part(5, "rootfs", "00000000-0000-4000-8000-000000000000"),
                       reporter)
    with pytest.raises(DiskImageError, match="has no partition 9"):
        find_partition(dsk, part(9), reporter)


def test_damaged_primary_falls_back_to_backup_with_warning(image: tuple[Path, Path]) -> None:
    dsk, layout = image
    with open(dsk, "r+b") as f:
        f.seek(2 * 512 + 4 * 128 + 60)  # a byte of entry 5's name in the primary array
        f.write(b"X")
    reporter = RecordingReporter()
    extent = find_partition(dsk, load_layout(layout).rootfs(), reporter)
    assert (extent.number, extent.name, extent.offset) == (5, "rootfs", 5 << 20)
    assert len(reporter.warnings) == 1
    assert "primary GPT" in reporter.warnings[0] and "entry array CRC32" in reporter.warnings[0]


def test_not_a_disk_image(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match="does not exist"):
        read_partition_table(tmp_path / "nope.dsk", RecordingReporter())
    small = tmp_path / "small.dsk"
    small.write_bytes(b"x" * 100)
    with pytest.raises(DiskImageError, match="too small"):
        read_partition_table(small, RecordingReporter())
    zeros = tmp_path / "zeros.dsk"
    zeros.write_bytes(bytes(4096))
    with pytest.raises(DiskImageError, match="no valid MBR"):
        read_partition_table(zeros, RecordingReporter())


def test_a_directory_or_fifo_is_not_a_disk_image(tmp_path: Path) -> None:
    """IsADirectoryError was a traceback; a FIFO would block the open waiting for a writer."""
    with pytest.raises(DiskImageError, match=r"disk image .* is a directory \(set "):
        read_partition_table(tmp_path, RecordingReporter())
    os.mkfifo(tmp_path / "fifo.dsk")
    with pytest.raises(DiskImageError, match="is not a regular file"):
        read_partition_table(tmp_path / "fifo.dsk", RecordingReporter())


def test_cli_dsk_naming_a_directory_is_one_line(image: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    done = swupd_repo("publish", "--dsk", tmp_path, "--layout", image[1],
                      "--storage", tmp_path / "storage")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"swupd-repo: error: disk image {tmp_path} is a directory (set SWUPD_REPO_DISK_IMAGE "
        "/ --dsk to the built .dsk file)"]


def _mbr_record(ptype: int, start: int, count: int) -> bytes:
    return struct.pack("<B3sB3sII", 0, b"\0\0\0", ptype, b"\0\0\0", start, count)


def test_plain_mbr_with_logical_partitions(tmp_path: Path) -> None:
    """Primaries keep their slot number; logical partitions are 5, 6, ... along the chain."""
    dsk = tmp_path / "mbr.dsk"
    sectors = 8192
    data = bytearray(sectors * 512)
    mbr = _mbr_record(0x0C, 64, 1000) + _mbr_record(0x05, 2048, 4096) + bytes(32)
    data[440:444] = struct.pack("<I", 0xDEADBEEF)
    data[446:510] = mbr
    data[510:512] = b"\x55\xaa"
    # first EBR at 2048: logical at +64, next EBR at extended+2048
    ebr1 = _mbr_record(0x83, 64, 1000) + _mbr_record(0x05, 2048, 1200) + bytes(32)
    data[2048 * 512 + 446:2048 * 512 + 510] = ebr1
    data[2048 * 512 + 510:2048 * 512 + 512] = b"\x55\xaa"
    ebr2 = _mbr_record(0x83, 32, 1000) + bytes(48)
    data[4096 * 512 + 446:4096 * 512 + 510] = ebr2
    data[4096 * 512 + 510:4096 * 512 + 512] = b"\x55\xaa"
    dsk.write_bytes(bytes(data))
    table = read_partition_table(dsk, RecordingReporter())
    assert table.kind == "mbr"
    assert [(e.number, e.offset // 512, e.size // 512, e.partuuid) for e in table.entries] == [
        (1, 64, 1000, "deadbeef-01"), (5, 2112, 1000, "deadbeef-05"),
        (6, 4128, 1000, "deadbeef-06")]
    reporter = RecordingReporter()
    extent = find_partition(dsk, part(6, "rootfs"), reporter)
    assert extent.offset == 4128 * 512 and "plain MBR" in reporter.warnings[0]
