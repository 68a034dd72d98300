"""Partition tables of a ``.dsk`` file: protective MBR + GPT (checked), or a plain MBR.

Only reads; the image is never modified. The GPT header and its entry array are both covered
by CRC32s: a damaged primary falls back to the backup at the end of the disk with a warning, and
damage to both is an error. The partition's byte range must lie inside the file, which is how a
truncated copy of an image shows up.
"""

from __future__ import annotations

import os
import stat
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskImageError
from .layout import LayoutPartition
from .progress import Reporter

_SECTOR_SIZES = (512, 4096)
_GPT_SIGNATURE = b"EFI PART"
_MAX_ENTRY_BYTES = 4 << 20
_EXTENDED_TYPES = (0x05, 0x0F, 0x85)
_MAX_LOGICAL = 128


@dataclass(frozen=True)
class PartitionEntry:
    """One used partition-table entry, with byte offsets."""

    number: int
    name: str
    offset: int
    size: int
    partuuid: str | None
    type: str


@dataclass(frozen=True)
class PartitionTable:
    kind: str  # "gpt" or "mbr"
    sector_size: int
    entries: tuple[PartitionEntry, ...]


def find_partition(dsk: Path, part: LayoutPartition, reporter: Reporter) -> PartitionEntry:
    """The byte range of ``part`` in ``dsk``, cross-checked against the table's name/PARTUUID."""
    table = read_partition_table(dsk, reporter)
    entry = next((e for e in table.entries if e.number == part.number), None)
    if entry is None:
        used = ", ".join(str(e.number) for e in table.entries) or "none"
        raise DiskImageError(
            f"{dsk} has no partition {part.number} ({part.key}); used entries: {used}",
            hint="check that the layout belongs to this image, or pass --partition",
        )
    if table.kind == "gpt" and part.name and entry.name != part.name:
        raise DiskImageError(
            f"partition {part.number} of {dsk} is named {entry.name!r} in the GPT, but the "
            f"layout ({part.key}) calls it {part.name!r}",
            hint="the layout does not belong to this image: pass the matching "
                 "disk-layout JSON, or --partition",
        )
    if part.uuid and entry.partuuid and entry.partuuid != part.uuid:
        raise DiskImageError(
            f"partition {part.number} of {dsk} has PARTUUID {entry.partuuid}, but the layout "
            f"({part.key}) says {part.uuid}",
            hint="the layout does not belong to this image: pass the matching "
                 "disk-layout JSON",
        )
    if table.kind == "mbr":
        reporter.warning(f"{dsk} has a plain MBR partition table: partition {part.number} "
                         "is taken by number only (MBR has no partition names)")
    return entry


def read_partition_table(dsk: Path, reporter: Reporter) -> PartitionTable:
    """Parse the MBR and, when it is protective, the GPT of ``dsk``."""
    try:
        # O_NONBLOCK: a FIFO named as the image must be refused below, not wait for a writer
        fd = os.open(dsk, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DiskImageError(f"disk image {dsk} does not exist",
                             hint="set SWUPD_REPO_DISK_IMAGE / --dsk to the built .dsk") from None
    except OSError as exc:
        raise DiskImageError(f"cannot open disk image {dsk}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise DiskImageError(f"disk image {dsk} is {what}",
                                 hint="set SWUPD_REPO_DISK_IMAGE / --dsk to the built .dsk file")
        file_size = info.st_size
        table = _Reader(fd, file_size, dsk, reporter).table()
    finally:
        os.close(fd)
    for entry in table.entries:
        if entry.offset + entry.size > file_size:
            raise DiskImageError(
                f"partition {entry.number} of {dsk} ends at byte {entry.offset + entry.size}, "
                f"but the file has only {file_size} bytes",
                hint="the image is truncated (an incomplete copy or download?): copy it again",
            )
    return table


class _Reader:
    def __init__(self, fd: int, file_size: int, dsk: Path, reporter: Reporter) -> None:
        self.fd, self.file_size, self.dsk, self.reporter = fd, file_size, dsk, reporter

    def read(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as exc:
            raise DiskImageError(f"cannot read disk image {self.dsk}: {exc.strerror}") from exc
        if len(data) != size:
            raise DiskImageError(f"{self.dsk} ends at byte {self.file_size}, inside its "
                                 "partition table", hint="the image is truncated: copy it again")
        return data

    def table(self) -> PartitionTable:
        if self.file_size < 512:
            raise DiskImageError(f"{self.dsk} is {self.file_size} bytes, too small to be a disk "
                                 "image", hint="set SWUPD_REPO_DISK_IMAGE / --dsk to the .dsk")
        mbr = self.read(0, 512)
        if mbr[510:512] != b"\x55\xaa":
            raise DiskImageError(
                f"{self.dsk} has no valid MBR (boot signature 55 AA missing at byte 510)",
                hint="this is not a partitioned disk image, or its first sector is damaged",
            )
        records = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
        if any(r[1] == 0xEE for r in records):
            return self.gpt()
        return self.mbr(mbr, records)

    # --- GPT -------------------------------------------------------------------------------

    def gpt(self) -> PartitionTable:
        problems = []
        for sector in _SECTOR_SIZES:
            if self.file_size < 2 * sector:
                continue
            try:
                return self._gpt_at(sector)
            except _Damaged as exc:
                problems.append(str(exc))
                if exc.primary_signature:
                    break
        raise DiskImageError(
            f"{self.dsk}: GPT unreadable: {'; '.join(problems) or 'no GPT header'}",
            hint="both GPT headers are damaged; repair the image with gdisk (r, b/c) or "
                 "rebuild it",
        )

    def _gpt_at(self, sector: int) -> PartitionTable:
        last_lba = self.file_size // sector - 1
        try:
            header = self._header(sector, 1)
            return self._entries(sector, header)
        except _Damaged as primary:
            backup_lba = last_lba
            if primary.alternate_lba and primary.alternate_lba <= last_lba:
                backup_lba = primary.alternate_lba
            try:
                header = self._header(sector, backup_lba)
                table = self._entries(sector, header)
            except _Damaged as backup:
                raise _Damaged(f"primary header: {primary}; backup header at LBA "
                               f"{backup_lba}: {backup}",
                               primary_signature=primary.primary_signature) from None
            self.reporter.warning(
                f"the primary GPT of {self.dsk} is damaged ({primary}); using the backup "
                f"header at LBA {backup_lba} (repair the image with `sgdisk -e` or gdisk)"
            )
            return table

    def _header(self, sector: int, lba: int) -> _Header:
        raw = self.read(lba * sector, sector)
        if raw[:8] != _GPT_SIGNATURE:
            raise _Damaged("no 'EFI PART' signature")
        (hsize, hcrc, my_lba, alt_lba, first_usable, last_usable, entries_lba, count,
         entry_size, entries_crc) = struct.unpack_from("<12xII4xQQQQ16xQIII", raw)
        if not 92 <= hsize <= sector:
            raise _Damaged(f"header size {hsize} is invalid", primary_signature=True)
        check = bytearray(raw[:hsize])
        check[16:20] = b"\0\0\0\0"
        if zlib.crc32(check) != hcrc:
            raise _Damaged("header CRC32 mismatch", alternate_lba=alt_lba,
                           primary_signature=True)
        if my_lba != lba:
            raise _Damaged(f"header says it is at LBA {my_lba}", alternate_lba=alt_lba,
                           primary_signature=True)
        if entry_size < 128 or entry_size % 8 or count * entry_size > _MAX_ENTRY_BYTES:
            raise _Damaged(f"entry array of {count} x {entry_size} bytes is invalid",
                           alternate_lba=alt_lba, primary_signature=True)
        return _Header(entries_lba, count, entry_size, entries_crc, first_usable, last_usable,
                       alt_lba)

    def _entries(self, sector: int, header: _Header) -> PartitionTable:
        size = header.count * header.entry_size
        start = header.entries_lba * sector
        if start + size > self.file_size:
            raise _Damaged("entry array lies past the end of the file",
                           alternate_lba=header.alternate_lba, primary_signature=True)
        raw = self.read(start, size)
        if zlib.crc32(raw) != header.entries_crc:
            raise _Damaged("partition entry array CRC32 mismatch",
                           alternate_lba=header.alternate_lba, primary_signature=True)
        entries = []
        for index in range(header.count):
            base = index * header.entry_size
            type_guid = raw[base:base + 16]
            if type_guid == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", raw, base + 32)
            name = raw[base + 56:base + 128].decode("utf-16-le", "replace").split("\0", 1)[0]
            number = index + 1
            if last < first:
                raise DiskImageError(f"partition {number} of {self.dsk} ends (LBA {last}) before "
                                     f"it starts (LBA {first})", hint="repair or rebuild the image")
            entries.append(PartitionEntry(
                number=number, name=name, offset=first * sector, size=(last - first + 1) * sector,
                partuuid=str(uuid.UUID(bytes_le=raw[base + 16:base + 32])),
                type=str(uuid.UUID(bytes_le=type_guid)).upper(),
            ))
        return PartitionTable("gpt", sector, tuple(entries))

    # --- plain MBR ---------------------------------------------------------------------------

    def mbr(self, mbr: bytes, records: list[tuple[int, int, int, int]]) -> PartitionTable:
        (signature,) = struct.unpack_from("<I", mbr, 440)
        entries: list[PartitionEntry] = []
        extended = None
        for index, (_status, ptype, start, count) in enumerate(records, start=1):
            if ptype == 0 or count == 0:
                continue
            if ptype in _EXTENDED_TYPES:
                extended = start
                continue
            entries.append(self._mbr_entry(index, ptype, start, count, signature))
        if extended is not None:
            entries.extend(self._logical(extended, signature))
        return PartitionTable("mbr", 512, tuple(entries))

    def _logical(self, extended: int, signature: int) -> list[PartitionEntry]:
        found: list[PartitionEntry] = []
        ebr_lba = extended
        seen: set[int] = set()
        while ebr_lba and len(found) < _MAX_LOGICAL:
            if ebr_lba in seen or ebr_lba * 512 + 512 > self.file_size:
                raise DiskImageError(f"{self.dsk}: the chain of logical partitions is broken at "
                                     f"LBA {ebr_lba}", hint="repair the partition table")
            seen.add(ebr_lba)
            ebr = self.read(ebr_lba * 512, 512)
            if ebr[510:512] != b"\x55\xaa":
                raise DiskImageError(f"{self.dsk}: extended boot record at LBA {ebr_lba} has no "
                                     "55 AA signature", hint="repair the partition table")
            _s, ptype, start, count = struct.unpack_from("<B3xB3xII", ebr, 446)
            _s, ntype, nstart, _n = struct.unpack_from("<B3xB3xII", ebr, 462)
            if ptype and count:
                found.append(self._mbr_entry(5 + len(found), ptype, ebr_lba + start, count,
                                             signature))
            ebr_lba = extended + nstart if ntype in _EXTENDED_TYPES and nstart else 0
        return found

    @staticmethod
    def _mbr_entry(number: int, ptype: int, start: int, count: int,
                   signature: int) -> PartitionEntry:
        return PartitionEntry(number=number, name="", offset=start * 512, size=count * 512,
                              partuuid=f"{signature:08x}-{number:02x}" if signature else None,
                              type=f"{ptype:02x}")


@dataclass(frozen=True)
class _Header:
    entries_lba: int
    count: int
    entry_size: int
    entries_crc: int
    first_usable: int
    last_usable: int
    alternate_lba: int


class _Damaged(Exception):
    """A GPT header or entry array that fails a check (try the other copy)."""

    def __init__(self, message: str, *, alternate_lba: int = 0,
                 primary_signature: bool = False) -> None:
        super().__init__(message)
        self.alternate_lba = alternate_lba
        self.primary_signature = primary_signature
