"""What each version costs, as pure functions over parsed manifests and file sizes.

Nothing here reads the disk: :mod:`.collect` hands in parsed manifests and a ``size(relpath)``
lookup over ``www``. The update cost follows our client's data path step by step
(:func:`swupd_repo.client.update`, format3 §7.4), with the client's own consolidation and
update-list rules, so the prediction can be checked against the bytes a real update fetches:

1. ``version/format3/latest``; the MoM tars of both versions; the bundle manifest tars the
   device subscribes to (every bundle of its version's MoM), old and new;
2. with packs, ``<T>/pack-<b>-from-<F>.tar`` for every bundle that changed (a request even
   when it is missing: the client asks and gets a 404). A pack carries every object of the
   update (new paths and paths changed after F, as a delta or a staged object), so nothing
   more is fetched for that bundle;
3. a fullfile ``<L>/files/<H>.tar`` per distinct hash of the update list not yet covered, in
   the client's order (sorted by path; the first entry of a hash decides its ``L``).

The device is assumed to start with an empty state directory (a cache kept from earlier runs
can only save more).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..client.consolidate import consolidate, update_list
from ..client.manifests import bundle_lines
from ..swupd.manifest import Entry, Manifest
from ..swupd.names import fullfile_relpath, pack_name

#: ``size(path relative to www)``: bytes of the file, or None when it is not published.
SizeOf = Callable[[str], "int | None"]

LATEST_PATH = "version/format3/latest"


@dataclass(frozen=True)
class VersionFigures:
    """One published version: what it holds, what changed in it, what its deltas saved."""

    version: int
    timestamp: int            # the MoM's timestamp: header (the build's time)
    staged: bool              # built after the released version: devices do not see it yet
    files: int                # live entries of Manifest.full (files, directories, links)
    www_files: int            # files in www/<V>
    www_bytes: int            # their bytes (a hard-linked file once)
    changed: int              # paths whose content changed in V
    added: int                # paths new in V
    deleted: int              # paths deleted in V
    deltas: int               # file deltas in www/<V>/delta that delta packs carry
    delta_bytes: int          # their bytes
    delta_saved: int          # fullfile bytes those deltas replace, minus their own bytes
    delta_pack_bytes: int     # bytes of www/<V>/pack-*-from-<N>.tar, N > 0 (not links of
                              # a zero pack: a rebase's)


@dataclass(frozen=True)
class UpdateCost:
    """What a device on ``from_version`` downloads to reach ``to_version``."""

    from_version: int
    to_version: int
    bytes_with_packs: int
    requests_with_packs: int
    bytes_without_packs: int
    requests_without_packs: int
    manifest_bytes: int       # latest marker and manifest tars, part of both totals
    packs: tuple[str, ...]    # packs found (paths relative to www)
    missing: tuple[str, ...]  # files the client would ask for that are not published


@dataclass
class RepositoryReport:
    """Every version and every supported update path to the released version."""

    storage: str
    latest: int               # last built version (image/latest.version)
    released: int             # what devices are told (www/version/format3/latest)
    generated: int            # Unix time the report was made
    versions: list[VersionFigures] = field(default_factory=list)
    updates: list[UpdateCost] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def change_counts(previous: Manifest | None, current: Manifest) -> tuple[int, int, int]:
    """(changed, added, deleted) paths of ``current`` against the version before it."""
    before = ({e.path for e in previous.entries if not e.deleted}
              if previous is not None else set())
    changed = added = deleted = 0
    for e in current.entries:
        if e.last_change != current.version:
            continue
        if e.deleted:
            deleted += 1
        elif e.path in before:
            changed += 1
        else:
            added += 1
    return changed, added, deleted


def live_count(manifest: Manifest) -> int:
    return sum(1 for e in manifest.entries if not e.deleted)


@dataclass(frozen=True)
class DeltaFile:
    """``www/<T>/delta/<F>-<T>-<H>`` and the size of the fullfile it stands in for."""

    size: int
    fullfile_size: int | None


def delta_figures(deltas: Sequence[DeltaFile], keep_factor: float,
                  min_size: int) -> tuple[int, int, int]:
    """(count, bytes, saved) of the deltas a delta pack carries instead of the fullfile: the
    generator's keep rule (larger than ``min_size`` and ``keep_factor`` x the size below
    the fullfile's)."""
    count = size = saved = 0
    for d in deltas:
        if d.fullfile_size is None or d.size <= min_size \
                or not keep_factor * d.size < d.fullfile_size:
            continue
        count += 1
        size += d.size
        saved += d.fullfile_size - d.size
    return count, size, saved


class _Tally:
    def __init__(self, size: SizeOf) -> None:
        self.size = size
        self.bytes = 0
        self.requests = 0
        self.missing: list[str] = []

    def get(self, path: str) -> bool:
        """One GET: counts the request and, when published, the bytes."""
        self.requests += 1
        found = self.size(path)
        if found is None:
            self.missing.append(path)
            return False
        self.bytes += found
        return True


def update_cost(from_version: int, old_mom: Manifest, new_mom: Manifest,
                bundles: Mapping[tuple[str, int], Manifest], size: SizeOf) -> UpdateCost:
    """The bytes and requests of our client's update from ``old_mom``'s version to
    ``new_mom``'s, with packs and without (see the module docstring).

    ``bundles`` maps (name, last_change) to the bundle manifests both MoMs name.
    """
    old_lines, new_lines = bundle_lines(old_mom), bundle_lines(new_mom)
    names = sorted(old_lines)
    head = _Tally(size)
    head.get(LATEST_PATH)
    head.get(f"{old_mom.version}/Manifest.MoM.tar")
    head.get(f"{new_mom.version}/Manifest.MoM.tar")
    for lines in (old_lines, new_lines):
        for name in names:
            if name in lines:
                head.get(f"{lines[name].last_change}/Manifest.{name}.tar")
    new = {n: bundles[(n, new_lines[n].last_change)] for n in names if n in new_lines}
    entries = [e for e in update_list(consolidate(new.values()).entries, from_version)
               if not e.deleted]

    with_packs, covered, packs = _Tally(size), set(), []
    for name, manifest in new.items():
        was = old_lines[name].last_change
        now = new_lines[name].last_change
        if now == was:
            continue
        path = f"{now}/{pack_name(name, was)}"
        if with_packs.get(path):
            packs.append(path)
            covered |= _pack_hashes(bundles[(name, was)], manifest, was)
    without = _Tally(size)
    _fullfiles(with_packs, entries, covered)
    _fullfiles(without, entries, set())
    missing = [p for p in head.missing + with_packs.missing + without.missing
               if "/pack-" not in p]
    return UpdateCost(
        from_version=from_version, to_version=new_mom.version,
        bytes_with_packs=head.bytes + with_packs.bytes,
        requests_with_packs=head.requests + with_packs.requests,
        bytes_without_packs=head.bytes + without.bytes,
        requests_without_packs=head.requests + without.requests,
        manifest_bytes=head.bytes, packs=tuple(packs), missing=tuple(dict.fromkeys(missing)))


def _pack_hashes(old: Manifest, new: Manifest, source: int) -> set[str]:
    """Hashes a delta pack from ``source`` brings (staged or by delta): new paths and paths
    changed after ``source``."""
    before = {e.path for e in old.entries if not e.deleted}
    return {e.hash for e in new.entries
            if not e.deleted and (e.path not in before or e.last_change > source)}


def _fullfiles(tally: _Tally, entries: list[Entry], covered: set[str]) -> None:
    seen = set(covered)
    for e in entries:  # update_list sorts by path, as the client stages them
        if e.hash in seen:
            continue
        seen.add(e.hash)
        tally.get(fullfile_relpath(e.last_change, e.hash))
