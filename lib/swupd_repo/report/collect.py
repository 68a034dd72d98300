"""Reading a storage directory into a :class:`RepositoryReport` (the I/O edge of the report).

Reads the plain manifests in ``www/<V>`` and file sizes, nothing else: no image trees, no
decompression, so it stays quick on a large history. Takes no lock: it only reads complete
``www/<V>`` trees (a version being built lives under a temporary name until it is renamed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import StorageError
from ..storage import Storage
from ..swupd.builder import read_manifest
from ..swupd.manifest import Manifest
from ..swupd.packs import _MIN_DELTA, DELTA_KEEP_FACTOR
from ..versions import is_update_source
from .figures import (
    DeltaFile,
    RepositoryReport,
    VersionFigures,
    change_counts,
    delta_figures,
    live_count,
    update_cost,
)


class _Manifests:
    """Parsed plain manifests of ``www``, each read once."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._cache: dict[tuple[str, int], Manifest] = {}

    def get(self, name: str, version: int) -> Manifest:
        key = (name, version)
        if key not in self._cache:
            self._cache[key] = read_manifest(self.storage.www(version) / f"Manifest.{name}")
        return self._cache[key]

    def full(self, version: int) -> Manifest | None:
        try:
            return self.get("full", version)
        except StorageError:
            return None  # a server older than 2.53 may not write it

    def bundles_of(self, mom: Manifest) -> dict[tuple[str, int], Manifest]:
        return {(e.path, e.last_change): self.get(e.path, e.last_change)
                for e in mom.entries if e.type == "M"}


def collect(storage: Storage) -> RepositoryReport:
    """The report of ``storage``: every published version, every update path to latest."""
    if not storage.www_dir.is_dir():
        raise StorageError(f"{storage.www_dir} does not exist",
                           hint="pass the --storage that holds image/ and www/")
    released = storage.released()
    report = RepositoryReport(storage=str(storage.root), latest=storage.latest(),
                              released=released, generated=int(time.time()))
    manifests = _Manifests(storage)
    previous: Manifest | None = None
    for version in storage.published_versions():
        report.versions.append(_version(storage, manifests, version, previous, released))
        previous = manifests.full(version)
    if released and (storage.www(released) / "Manifest.MoM").is_file():
        new_mom = manifests.get("MoM", released)
        for version in storage.published_versions():
            if version >= released or not is_update_source(version):
                continue
            old_mom = manifests.get("MoM", version)
            bundles = {**manifests.bundles_of(old_mom), **manifests.bundles_of(new_mom)}
            report.updates.append(update_cost(version, old_mom, new_mom, bundles,
                                              lambda rel: _size(storage.www_dir / rel)))
    return report


def _version(storage: Storage, manifests: _Manifests, version: int,
             previous: Manifest | None, released: int) -> VersionFigures:
    www = storage.www(version)
    mom = manifests.get("MoM", version)
    full = manifests.full(version)
    if full is not None:
        changed, added, deleted = change_counts(previous, full)
        files = live_count(full)
    else:
        changed = added = deleted = files = 0
    www_files, www_bytes = _tree_size(www)
    deltas = []
    delta_dir = www / "delta"
    if delta_dir.is_dir():
        for entry in os.scandir(delta_dir):
            parts = entry.name.split("-")
            if len(parts) != 3 or not entry.is_file(follow_symlinks=False):
                continue
            fullfile = _size(www / "files" / f"{parts[2]}.tar")
            deltas.append(DeltaFile(entry.stat(follow_symlinks=False).st_size, fullfile))
    count, delta_bytes, saved = delta_figures(deltas, DELTA_KEEP_FACTOR, _MIN_DELTA)
    # a rebase's packs are hard links of its zero pack (swupd.publish._link_zero_pack):
    # they cost no bytes beyond it
    packs = {p.name: p.stat() for p in www.glob("pack-*-from-*.tar")}
    zero = {(st.st_dev, st.st_ino) for name, st in packs.items() if name.endswith("-from-0.tar")}
    pack_bytes = sum({(st.st_dev, st.st_ino): st.st_size for st in packs.values()
                      if (st.st_dev, st.st_ino) not in zero}.values())
    return VersionFigures(version=version, timestamp=mom.timestamp,
                          staged=version > released, files=files, www_files=www_files,
                          www_bytes=www_bytes, changed=changed, added=added, deleted=deleted,
                          deltas=count, delta_bytes=delta_bytes, delta_saved=saved,
                          delta_pack_bytes=pack_bytes)


def _size(path: Path) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size


def _tree_size(root: Path) -> tuple[int, int]:
    """Files below ``root`` and their bytes, each hard-linked inode counted once (a rebase's
    packs are links of its zero pack)."""
    files = 0
    sizes: dict[tuple[int, int], int] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            sizes[(st.st_dev, st.st_ino)] = st.st_size
            files += 1
    return files, sum(sizes.values())
