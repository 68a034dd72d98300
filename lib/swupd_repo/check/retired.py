"""A simulated device on a retired version (``prune --www-before``): how to lay one down.

A retired ``www/<X>`` keeps its manifests but not its fullfiles nor its zero pack, so X can
no longer be installed from the repository; yet devices that ran X before the retirement
still update, and ``check`` proves that they do. The device is installed by the same client,
from a private *seed* repository in the scratch directory that holds what ``www/<X>`` held
for an install: X's manifest files (copied from ``www``) and the fullfiles of every live
entry of X's bundle manifests, each taken from the first of

* a fullfile with the same hash still published in ``www`` (a hash names the content and
  the metadata, so any version's ``<H>.tar`` is the same object), or
* X's stored tree ``image/<X>/os-core`` with its metadata record, written as a fullfile the
  way the generator writes them.

The client checks every hash it installs, so a seed that is not X fails the install and is
reported. When neither source has some entry (the tree was pruned too), X cannot be laid
down: the simulation says so and leaves X out instead of failing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..client.manifests import read_manifest_tar
from ..progress import NullReporter
from ..storage import Storage
from ..swupd.manifest import Entry, Manifest, parse_manifest
from ..swupd.names import fullfile_relpath
from ..swupd.packs import _read_mom
from ..swupd.rebase import zero_packs_gone


class Unseedable(Exception):
    """X's content is stored nowhere any more: it cannot be laid down."""


def needs_seed(storage: Storage, version: int) -> bool:
    """Whether a device on ``version`` must be laid down from a seed: its content was
    retired (a zero pack its MoM names is gone from ``www``)."""
    return zero_packs_gone(storage.www_dir, version)


def make_seed(storage: Storage, version: int, seed: Path) -> None:
    """Write the seed repository of ``version`` into ``seed`` (see the module docstring);
    :class:`Unseedable` names what is stored nowhere."""
    mom = _read_mom(storage.www_dir, version)
    assert mom is not None
    for directory in {version, *(line.last_change for line in mom.entries)}:
        _copy_manifests(storage.www(directory), seed / str(directory))
    wanted: dict[tuple[int, str], Entry] = {}
    for line in mom.entries:
        for entry in _bundle(storage, line.path, line.last_change).entries:
            if not entry.deleted:
                wanted.setdefault((entry.last_change, entry.hash), entry)
    published = _published_fullfiles(storage)
    missing: list[Entry] = []
    for (last_change, digest), entry in wanted.items():
        target = seed / fullfile_relpath(last_change, digest)
        source = published.get(digest)
        if source is None:
            missing.append(entry)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, target)
    if missing:
        _from_tree(storage, version, missing, seed)


def _copy_manifests(source: Path, target: Path) -> None:
    from ..retire import is_kept

    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and is_kept(path.name):
            shutil.copyfile(path, target / path.name)


def _bundle(storage: Storage, name: str, version: int) -> Manifest:
    tar = storage.www(version) / f"Manifest.{name}.tar"
    plain, _ = read_manifest_tar(tar.read_bytes(), name, str(tar))
    return parse_manifest(plain, str(tar))


def _published_fullfiles(storage: Storage) -> dict[str, Path]:
    """Every fullfile still in ``www``, by hash."""
    found: dict[str, Path] = {}
    for version in storage.published_versions():
        files = storage.www(version) / "files"
        try:
            names = os.listdir(files)
        except FileNotFoundError:
            continue
        for name in names:
            if name.endswith(".tar"):
                found.setdefault(name[:-4], files / name)
    return found


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _from_tree(storage: Storage, version: int, entries: Iterable[Entry], seed: Path) -> None:
    """The fullfiles of ``entries`` from ``image/<version>/os-core`` and its record."""
    from ..swupd.fullfiles import write_fullfiles
    from ..swupd.scan import scan_tree

    entries = list(entries)
    tree = storage.os_core(version)
    if not tree.is_dir():
        first = entries[0]
        raise Unseedable(f"{len(entries)} of its objects (e.g. {first.path} of version "
                         f"{first.last_change}) are in no published fullfile, and "
                         f"{tree} was pruned")
    records = scan_tree(tree, NullReporter()).records
    by_change: dict[int, list] = {}
    for entry in entries:
        record = records.get(entry.path)
        if record is None or record.hash != entry.hash:
            raise Unseedable(f"{entry.path} of {tree} is not what its manifest says "
                             f"(hash {entry.hash})")
        by_change.setdefault(entry.last_change, []).append(record)
    for last_change, recs in by_change.items():
        write_fullfiles(recs, seed / str(last_change) / "files", "gzip", NullReporter())
