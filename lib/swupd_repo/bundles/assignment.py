"""The bundle split of one stored tree: ``image/<V>/os-core.bundles``.

The whole image is extracted once to ``image/<V>/os-core`` (the container's layout); bundle
definitions (packages, globs) are resolved against that tree when it is stored, and the result
is written here. Everything downstream (the generator, ``check``, the Docker backend, a forced
rebuild of V) reads this file and never re-resolves, so a version is always built from the
split it was published with, even after the definitions changed.

Format (JSON, written atomically, sorted for stable diffs)::

    {"format": 1,
     "bundles": {"<name>": ["/path", ...], ...}}

Only non-core bundles are listed; os-core is every path of the tree that no bundle lists.
Paths are written as manifests name them (``/usr/bin/gdb``, no trailing slash). A tree without
this file (every tree stored before bundles existed, and every image without definitions) is
os-core alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StorageError
from ..storage import atomic_write_bytes
from ..swupd.names import CORE

FORMAT = 1
SUFFIX = ".bundles"


def assignment_path(tree: Path) -> Path:
    """``image/<V>/os-core.bundles`` for the tree ``image/<V>/os-core``."""
    return tree.with_name(tree.name + SUFFIX)


@dataclass(frozen=True)
class Assignment:
    """Non-core bundle name -> the paths it owns (os-core owns the rest)."""

    bundles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """os-core first, then the other bundles in name order (groups.ini order)."""
        return [CORE, *sorted(self.bundles)]

    def to_bytes(self) -> bytes:
        data = {"format": FORMAT,
                "bundles": {n: sorted(p) for n, p in sorted(self.bundles.items())}}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def write_assignment(tree: Path, assignment: Assignment) -> Path:
    """Write (atomically) the split of ``tree``; no file when there are no bundles."""
    path = assignment_path(tree)
    if not assignment.bundles:
        path.unlink(missing_ok=True)
        return path
    atomic_write_bytes(path, assignment.to_bytes())
    return path


def read_assignment(tree: Path) -> Assignment:
    """The split stored beside ``tree``; os-core alone when there is none."""
    path = assignment_path(tree)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Assignment()
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        bundles = {str(n): frozenset(str(p) for p in paths)
                   for n, paths in data["bundles"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{path} is damaged ({exc})",
                           hint="re-publish the version with --force, which stores the "
                           "split again from the bundle definitions") from None
    if CORE in bundles:
        raise StorageError(f"{path} lists os-core, which owns what no bundle lists")
    return Assignment(bundles)
