"""Comparing a target root with consolidated manifest entries (``swupd verify``, format3 §7.5).

Each entry's swupd hash is recomputed on the target with xattrs, as ``verify_file`` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import ClientError
from ..swupd.hashing import hash_path
from ..swupd.manifest import Entry
from .report import Mismatch, VerifyReport
from .targetpath import target_path


def verify_entries(root: Path, version: int, entries: Iterable[Entry],
                   deleted: Iterable[Entry] = ()) -> VerifyReport:
    """Hash every entry under ``root``; deleted entries still present become ``leftovers``."""
    report = VerifyReport(version)
    for entry in entries:
        report.checked += 1
        try:
            path = target_path(root, entry.path)
            actual: str | None = hash_path(path, entry.path)
        except (FileNotFoundError, NotADirectoryError, ClientError):
            actual = None
        if actual != entry.hash:
            report.mismatches.append(Mismatch(entry.path, entry.hash, actual))
    for entry in deleted:
        try:
            if os.path.lexists(target_path(root, entry.path)):
                report.leftovers.append(entry.path)
        except ClientError:
            pass
    return report
