"""Bundle manifests, ``Manifest.full`` and the MoM of one version (format3 §2.6-§2.8).

The full tree is ``image/<V>/os-core`` (the whole image); its split into bundles is stored
beside it (:mod:`...bundles.assignment`) and turned into the trees the container's server
would read by :mod:`.bundletrees`. Then, as 2.53's ``swupd_create_update`` does, in
groups.ini order (os-core first, then the other bundles by name):

* os-core is matched against its previous manifest (the previous MoM's ``os-core`` line);
* each other bundle, both its new entries and its previous manifest with os-core's (new,
  resp. previous) entries subtracted, is matched against its own previous manifest and gets
  a new ``Manifest.<b>`` iff an entry changed in V; otherwise its MoM line keeps the old
  version and hash. A bundle of the previous MoM that is no longer defined is not listed;
* ``Manifest.full`` is matched against the previous version's and each entry's last_change
  raised to the newest any bundle gives the path.

Everything here is pure (records and old manifests in, manifests out); :func:`load_previous`
is the one reader of the published history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError, ManifestError, StorageError
from ..storage import Storage
from .bundletrees import bundle_trees, subtract
from .heuristics import modifier, prune
from .manifest import Entry, Manifest, bundle_line, deleted_entry, manifest_hash, parse_manifest
from .names import CORE, tracking_path
from .scan import Record

#: Bundles whose size does not count towards the MoM's contentsize (§2.2).
_NOT_COUNTED = frozenset(("esp",))
#: Type changes the server accepts (old type, new type); any other change aborts (§2.7).
ALLOWED_TYPE_CHANGES = frozenset((("F", "L"), ("F", "D"), ("L", "F"), ("L", "D")))
_TYPE_NAMES = {"F": "file", "D": "directory", "L": "symlink"}


@dataclass
class Previous:
    """What the last published version left: the manifests its MoM points at."""

    version: int = 0  # 0: first build
    bundles: dict[str, Manifest] = field(default_factory=dict)  # name -> Manifest.<b>@bv
    full: Manifest | None = None
    #: name -> the MoM hash of ``www/<bv>/Manifest.<b>`` as it is on disk (see hash_of)
    hashes: dict[str, str] = field(default_factory=dict)

    def hash_of(self, name: str) -> str:
        """The ``M`` hash of an unchanged bundle's manifest: recomputed from the file, as the
        server does when it writes a MoM (§2.8); from the parsed manifest when it was given
        in memory (its bytes are what :meth:`Manifest.to_bytes` writes)."""
        if name in self.hashes:
            return self.hashes[name]
        return manifest_hash(self.bundles[name].to_bytes())


@dataclass
class Built:
    """The manifests of version V, ready to write."""

    version: int
    mom: Manifest
    full: Manifest
    bundles: dict[str, Manifest]  # only the bundles that changed in V (written in this run)
    mom_bytes: bytes = b""
    full_bytes: bytes = b""
    bundle_bytes: dict[str, bytes] = field(default_factory=dict)


def read_manifest(path: Path) -> Manifest:
    return parse_manifest(read_manifest_bytes(path), str(path))


def read_manifest_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{path} is missing but the published history refers to it",
                           hint="restore it from a backup, or start a new storage "
                           "directory") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc


def previous_version(storage: Storage, version: int) -> int:
    """The version V is built on: ``latest`` when it is older than V, else (a forced rebuild
    of V or older) the newest published version below V."""
    latest = storage.latest()
    if 0 < latest < version:
        if not (storage.www(latest) / "Manifest.MoM").is_file():
            raise StorageError(
                f"the latest markers say version {latest}, but {storage.www(latest)}"
                "/Manifest.MoM does not exist",
                hint="restore www/<latest> or fix image/latest.version and "
                "www/version/format3/latest")
        return latest
    older = [v for v in storage.published_versions() if v < version]
    return max(older, default=0)


def load_previous(storage: Storage, version: int) -> Previous:
    """Previous MoM, every bundle manifest it names (with its ``M`` hash), and Manifest.full
    (empty on the first build)."""
    prev = previous_version(storage, version)
    if prev == 0:
        return Previous()
    mom = read_manifest(storage.www(prev) / "Manifest.MoM")
    bundles: dict[str, Manifest] = {}
    hashes: dict[str, str] = {}
    for line in mom.entries:
        if line.type != "M":
            raise ManifestError(f"{storage.www(prev)}/Manifest.MoM has a non-M line "
                                f"{line.flags} {line.path}")
        path = storage.www(line.last_change) / f"Manifest.{line.path}"
        data = read_manifest_bytes(path)
        bundles[line.path] = parse_manifest(data, str(path))
        hashes[line.path] = manifest_hash(data)
    full_path = storage.www(prev) / "Manifest.full"
    full = read_manifest(full_path) if full_path.exists() else None
    return Previous(prev, bundles, full, hashes)


def entries_from_records(records: Iterable[Record], version: int) -> list[Entry]:
    """Fresh entries (last_change = V) with the path heuristics' flags."""
    return [Entry(r.type, r.hash, version, r.path, modifier=modifier(r.path)) for r in records]


def carry_over(old: Iterable[Entry], new: list[Entry], version: int,
               minversion: int = 0) -> tuple[list[Entry], list[str]]:
    """``match_manifests`` (§2.7) before pruning: unchanged entries keep their old
    last_change, vanished ones become deleted entries (already-deleted ones are carried as
    they are, forever). Returns the entries and the type changes the server refuses."""
    old_by_path = {e.path: e for e in old}
    out: list[Entry] = []
    refused: list[str] = []
    for e in new:
        o = old_by_path.pop(e.path, None)
        if o is None or o.deleted:
            out.append(e)
            continue
        if o.type != e.type and (o.type, e.type) not in ALLOWED_TYPE_CHANGES:
            refused.append(f"{e.path} ({_TYPE_NAMES.get(o.type, o.type)} in version "
                           f"{o.last_change} -> {_TYPE_NAMES.get(e.type, e.type)})")
        same = (o.hash == e.hash and o.type == e.type and o.modifier == e.modifier
                and o.last_change >= minversion)
        out.append(e.with_(last_change=o.last_change) if same else e)
    for o in old_by_path.values():
        out.append(o if o.deleted else deleted_entry(o.path, version, o.modifier))
    return out, refused


def content_size(entries: Iterable[Entry], version: int, sizes: Mapping[str, int]) -> int:
    """§2.2: st_size per changed live F, 1024 per changed live L and D."""
    total = 0
    for e in entries:
        if e.deleted or e.last_change != version:
            continue
        total += sizes.get(e.path, 0) if e.type == "F" else 1024
    return total


def _type_change_error(paths: list[str], version: int, bundle: str = CORE) -> BuildError:
    listing = "; ".join(paths)
    where = "" if bundle == CORE else f" (bundle {bundle})"
    return BuildError(
        f"version {version}{where} turns a directory into a file or symlink, which swupd format 3 "
        f"cannot express (the real server aborts too): {listing}",
        hint="keep a directory at each of these paths (move the new file elsewhere), or "
        "delete the directory in one version and add the file in a later one")


def build_manifests(records: Mapping[str, Record], version: int, previous: Previous,
                    *, timestamp: int | None = None, minversion: int = 0,
                    bundles: Mapping[str, Iterable[str]] | None = None) -> Built:
    """All manifests of ``version`` from the scanned tree and the previous state.

    ``bundles``: the split of the tree (non-core bundle -> the paths it owns, see
    :mod:`.bundletrees`); None or empty: os-core alone. ``minversion`` applies to every
    bundle and to ``Manifest.full`` (§8).

    Raises :class:`BuildError` for a refused type change, when os-core did not change, and
    when a new bundle has nothing to publish.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    sizes = {p: r.size for p, r in records.items()}
    trees = bundle_trees(records, bundles or {}, CORE)

    old_core = previous.bundles.get(CORE)
    core_fresh = entries_from_records((records[p] for p in trees.pop(CORE)), version)
    merged, refused = carry_over(old_core.entries if old_core else [], core_fresh, version,
                                 minversion)
    if refused:
        raise _type_change_error(refused, version)
    core_entries = prune(merged)
    if not any(e.last_change == version for e in core_entries):
        # The server aborts here too: an os-core without change cannot be published.
        raise BuildError(
            f"os-core of version {version} has no change against version "
            f"{old_core.version if old_core else 0} outside /etc (swupd never lists or "
            "updates /etc, nor deleted boot files)",
            hint="if the image is the published one there is nothing to publish; otherwise "
            "ship the change outside /etc, e.g. VERSION_ID in /usr/lib/os-release (build "
            "the image with OS_VERSION set to this version)")
    core = Manifest(version=version, previous=old_core.version if old_core else 0,
                    timestamp=ts, contentsize=content_size(core_entries, version, sizes),
                    entries=core_entries)
    written = {CORE: core}  # os-core is new in every version
    lines = {CORE: version}  # name -> the version of its manifest in the new MoM
    # What each bundle contributes to Manifest.full's last_change (§2.7): its manifest as the
    # server holds it in memory, written or not.
    in_memory = [core_entries]

    for name, paths in trees.items():
        old = previous.bundles.get(name)
        fresh = subtract(entries_from_records((records[p] for p in paths), version),
                         core_entries)
        old_entries = (subtract(old.entries, old_core.entries if old_core else [])
                       if old is not None else [])
        merged, refused = carry_over(old_entries, fresh, version, minversion)
        if refused:
            raise _type_change_error(refused, version, name)
        changed = any(e.last_change == version for e in merged)
        entries = prune(merged) if changed else merged
        in_memory.append(entries)
        if any(e.last_change == version for e in entries):
            written[name] = Manifest(version=version, previous=old.version if old else 0,
                                     timestamp=ts,
                                     contentsize=content_size(entries, version, sizes),
                                     entries=entries)
            lines[name] = version
        elif old is not None:
            lines[name] = old.version
        else:
            # 2.53 would list the bundle at version 0 and then fail hashing www/0/Manifest.<b>
            raise BuildError(
                f"bundle {name} of version {version} has nothing swupd can publish (it owns "
                "no path of the tree, or only paths under /etc)",
                hint="give the bundle content outside /etc (at least its tracking file "
                f"{tracking_path(name)}), or drop it from the bundle definitions")

    old_full = previous.full.entries if previous.full else []
    fresh_full = entries_from_records(records.values(), version)
    full_merged, _ = carry_over(old_full, fresh_full, version, minversion)
    # 2.53: a path's last_change in full is at least the newest any bundle of the new MoM
    # gives it, deleted entries included (a file that moved between bundles gets a fullfile).
    latest_of: dict[str, int] = {}
    for entries in in_memory:
        for e in entries:
            if e.last_change > latest_of.get(e.path, 0):
                latest_of[e.path] = e.last_change
    full_entries = [e.with_(last_change=latest_of[e.path])
                    if latest_of.get(e.path, 0) > e.last_change else e
                    for e in prune(full_merged)]
    full = Manifest(version=version, previous=0, timestamp=ts,
                    contentsize=content_size(full_entries, version, sizes),
                    entries=full_entries)

    bundle_bytes = {name: m.to_bytes() for name, m in written.items()}
    mom_lines = []
    for name, bv in lines.items():
        digest = (manifest_hash(bundle_bytes[name]) if name in bundle_bytes
                  else previous.hash_of(name))
        mom_lines.append(bundle_line(name, digest, bv))
    mom = Manifest(version=version, previous=previous.version, timestamp=ts,
                   contentsize=sum(m.contentsize for n, m in written.items()
                                   if n not in _NOT_COUNTED),
                   entries=mom_lines)
    return Built(version, mom, full, written, mom.to_bytes(), full.to_bytes(), bundle_bytes)


def fullfile_records(built: Built, records: Mapping[str, Record]) -> list[Record]:
    """Records needing a fullfile in ``www/<V>/files``: live full entries changed in V (§4)."""
    return [records[e.path] for e in built.full.entries
            if not e.deleted and e.last_change == built.version and e.path in records]
