"""The disk-layout JSON of an Ostro-style ``.dsk`` image: which partition is the rootfs.

Two generations exist and share one shape. Early Ostro kept ``disk-layout-<MACHINE>.json``
(rootfs at ``partition_05_rootfs`` in a seven-partition layout); later Ostro builds the disk from
the BitBake variable ``DSK_IMAGE_LAYOUT`` (rootfs at ``partition_03_rootfs``, its ``uuid`` set to
the rootfs PARTUUID) and deploys the expanded JSON as ``<IMAGE_LINK_NAME>-disk-layout.json``.

The image class creates the partitions with ``sgdisk -n 0:...`` while walking the *sorted*
dict-valued keys, so partition N is the N-th of those keys; the ``NN`` in ``partition_NN_*`` keys
must agree with that position. The rootfs is the key ending in ``_rootfs`` (the old
``extract_rootfs.sh`` rule) or the entry whose ``name`` is ``rootfs``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import LayoutError

_NUMBERED_KEY = re.compile(r"partition_(\d+)_")
_HINT = ("pass the disk-layout JSON that was deployed with the image "
         "(SWUPD_REPO_DISK_LAYOUT / --layout)")


@dataclass(frozen=True)
class LayoutPartition:
    """One partition of the layout; ``number`` is its 1-based GPT entry number."""

    number: int
    name: str
    key: str
    filesystem: str
    uuid: str | None
    type: str | None = None
    size_mb: int | None = None


@dataclass(frozen=True)
class DiskLayout:
    """All partitions of one layout, in GPT order, and where the layout came from."""

    source: str
    partitions: tuple[LayoutPartition, ...]
    initial_offset_mb: int | None = None
    tail_padding_mb: int | None = None

    def rootfs(self, override: str | int | None = None) -> LayoutPartition:
        """The partition to extract: ``override`` (a number or a name) or the layout's rootfs.

        A number that the layout does not list is accepted (the override exists for layouts
        that are wrong or missing); it then carries no name or PARTUUID to cross-check.
        """
        if override is not None and str(override).strip():
            return self._by_override(str(override).strip())
        found = [p for p in self.partitions if p.key.endswith("_rootfs") or p.name == "rootfs"]
        if not found:
            raise LayoutError(
                f"{self.source} has no rootfs partition (no key ending in _rootfs and no "
                "entry named rootfs)",
                hint=f"{_HINT}, or name the partition with SWUPD_REPO_PARTITION / --partition",
            )
        if len(found) > 1:
            keys = ", ".join(p.key for p in found)
            raise LayoutError(
                f"{self.source} has several rootfs partitions ({keys})",
                hint="choose one with SWUPD_REPO_PARTITION / --partition (number or name)",
            )
        return _ext4_only(found[0], self.source)

    def _by_override(self, text: str) -> LayoutPartition:
        if text.isdigit():
            number = int(text)
            if number < 1:
                raise LayoutError(f"partition number {number} is invalid (GPT numbers start "
                                  "at 1)", hint="set SWUPD_REPO_PARTITION / --partition to N >= 1")
            for part in self.partitions:
                if part.number == number:
                    return _ext4_only(part, self.source)
            return LayoutPartition(number=number, name="", key=f"--partition {number}",
                                   filesystem="ext4", uuid=None)
        found = [p for p in self.partitions if text in (p.name, p.key)]
        if not found:
            names = ", ".join(p.name for p in self.partitions) or "none"
            raise LayoutError(f"{self.source} has no partition named {text!r} (names: {names})",
                              hint="set SWUPD_REPO_PARTITION / --partition to a listed name "
                                   "or a partition number")
        if len(found) > 1:
            raise LayoutError(f"{self.source} has several partitions named {text!r}",
                              hint="set SWUPD_REPO_PARTITION / --partition to a number instead")
        return _ext4_only(found[0], self.source)


def _ext4_only(part: LayoutPartition, source: str) -> LayoutPartition:
    if part.filesystem != "ext4":
        raise LayoutError(
            f"partition {part.number} ({part.key}) in {source} has filesystem "
            f"{part.filesystem!r}; only ext4 rootfs partitions can be extracted",
            hint="build the rootfs as ext4, or choose another partition with --partition",
        )
    return part


def load_layout(path: Path) -> DiskLayout:
    """Read and check a disk-layout JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LayoutError(f"disk layout {path} does not exist", hint=_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise LayoutError(f"cannot read disk layout {path}: {reason}", hint=_HINT) from exc
    return parse_layout(text, str(path))


def parse_layout(text: str, source: str) -> DiskLayout:
    """Parse layout JSON; ``source`` names where it came from (a path or ``DSK_IMAGE_LAYOUT``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}", hint="fix the JSON syntax") from None
    except RecursionError:
        # A disk layout is two levels deep; Python's parser gives up near 1,000 levels.
        raise LayoutError(f"{source} nests JSON arrays or objects too deeply to be a disk "
                          "layout", hint=_HINT) from None
    if not isinstance(data, dict):
        raise LayoutError(f"{source} must hold a JSON object of partitions, not "
                          f"{type(data).__name__}", hint=_HINT)
    keys = sorted(k for k, v in data.items() if isinstance(v, dict))
    if not keys:
        raise LayoutError(f"{source} lists no partitions (no object-valued keys)", hint=_HINT)
    parts = []
    for number, key in enumerate(keys, start=1):
        match = _NUMBERED_KEY.match(key)
        if match and int(match.group(1)) != number:
            raise LayoutError(
                f"{source}: key {key} says partition {int(match.group(1))}, but it is "
                f"partition {number} in the sorted order the image class creates them in",
                hint="number the partition_NN_* keys 01, 02, ... without gaps",
            )
        parts.append(_partition(number, key, data[key], source))
    return DiskLayout(source=source, partitions=tuple(parts),
                      initial_offset_mb=_opt_int(data.get("gpt_initial_offset_mb")),
                      tail_padding_mb=_opt_int(data.get("gpt_tail_padding_mb")))


def _partition(number: int, key: str, entry: dict, source: str) -> LayoutPartition:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{source}: {key} has no \"name\"", hint="give every partition a name")
    filesystem = entry.get("filesystem", "")
    if not isinstance(filesystem, str):
        raise LayoutError(f"{source}: {key} has a non-string \"filesystem\"", hint=_HINT)
    return LayoutPartition(number=number, name=name, key=key, filesystem=filesystem,
                           uuid=_partuuid(entry.get("uuid"), key, source),
                           type=str(entry["type"]) if "type" in entry else None,
                           size_mb=_opt_int(entry.get("size_mb")))


def _partuuid(value: object, key: str, source: str) -> str | None:
    """``0`` / missing means "random at build time": nothing to cross-check."""
    if value is None or str(value).strip() in ("", "0"):
        return None
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise LayoutError(f"{source}: {key} has uuid {value!r}, which is not a UUID",
                          hint="use the expanded layout (the deployed *-disk-layout.json), or "
                               "set uuid to 0") from None


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
