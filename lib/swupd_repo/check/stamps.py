"""Verification stamps: fullfiles and packs already proven good are not read again while they
are unchanged.

The release gate checks every published version on every publish; without stamps that means
reading and hashing every fullfile and pack ever published, each time. A stamp records, per
``www/<V>``, each file verified with its (size, mtime_ns, ctime_ns, inode) and what it was
verified against (a fullfile's manifest path, a pack's manifest hash). Writing to a file
changes its mtime and ctime (ctime cannot be set back from user space) and replacing it gives
a new inode, so a changed file is verified again; a stamp only ever saves work. Stamps are
written only when the whole check passes, so a refused publish leaves the storage as it was.

Stamps live outside ``www`` (``STORAGE/.swupd-repo-checked/<V>.json``): devices never see them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..storage import Storage, atomic_write_text

STAMP_DIR = ".swupd-repo-checked"
_FORMAT = 1

#: (size, mtime_ns, ctime_ns, inode)
Signature = tuple[int, int, int, int]


def signature(path: Path) -> Signature | None:
    """The stat fields a stamp compares; None when the file is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class Stamps:
    """Stamps of one storage: :meth:`unchanged` to skip, :meth:`record` after a clean
    verification, :meth:`save` at the end (only versions that gained entries are rewritten)."""

    def __init__(self, storage: Storage, *, trust: bool = True) -> None:
        self.dir = storage.root / STAMP_DIR
        self.trust = trust  # False: verify everything, but still record
        self.www = storage.www_dir
        self._stamps: dict[int, dict[str, list[object]]] = {}
        self._dirty: set[int] = set()

    def _where(self, path: Path) -> tuple[int, str] | None:
        try:
            rel = path.relative_to(self.www)
        except ValueError:
            return None
        if len(rel.parts) < 2 or not rel.parts[0].isdigit():
            return None
        return int(rel.parts[0]), "/".join(rel.parts[1:])

    def _load(self, version: int) -> dict[str, list[object]]:
        if version not in self._stamps:
            entries: dict[str, list[object]] = {}
            try:
                data = json.loads((self.dir / f"{version}.json").read_text())
                if data.get("format") == _FORMAT and isinstance(data.get("files"), dict):
                    entries = data["files"]
            except (OSError, ValueError, AttributeError):
                pass  # no stamp, or an unreadable one: verify everything
            self._stamps[version] = entries
        return self._stamps[version]

    def unchanged(self, path: Path, sig: Signature | None, context: str) -> bool:
        """Whether ``path`` was verified against ``context`` and has not changed since."""
        where = self._where(path)
        if not self.trust or where is None or sig is None:
            return False
        return self._load(where[0]).get(where[1]) == [*sig, context]

    def record(self, path: Path, sig: Signature | None, context: str) -> None:
        """``path`` (with the signature taken before it was read) verified clean."""
        where = self._where(path)
        if where is None or sig is None:
            return
        entries = self._load(where[0])
        value: list[object] = [*sig, context]
        if entries.get(where[1]) != value:
            entries[where[1]] = value
            self._dirty.add(where[0])

    def save(self) -> None:
        """Write the stamps that gained entries; raises OSError (the caller only warns)."""
        for version in sorted(self._dirty):
            if not (self.www / str(version)).is_dir():
                continue  # removed meanwhile (a refused build): nothing to remember
            self.dir.mkdir(exist_ok=True)
            text = json.dumps({"format": _FORMAT, "files": self._stamps[version]},
                              sort_keys=True, separators=(",", ":"))
            atomic_write_text(self.dir / f"{version}.json", text + "\n")
        self._dirty.clear()
