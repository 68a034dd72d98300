"""Consolidation: bundle manifests to one entry per path (format3 §7.4), and the lists of
entries an install, an update or a verify works on.

Pure functions over :class:`Entry` values (which bundles a target has: :mod:`.tracking`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ..swupd.manifest import Entry, Manifest


def is_config(entry: Entry) -> bool:
    """Config files belong to the device (and 2.53 never lists them anyway)."""
    return entry.modifier == "C" or entry.path.startswith("/etc/")


def is_state(entry: Entry) -> bool:
    return entry.modifier == "s"


def is_boot(entry: Entry) -> bool:
    return entry.modifier == "b"


@dataclass
class Consolidated:
    """One entry per path, and the paths dropped because two bundles disagreed."""

    entries: dict[str, Entry] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)


def consolidate(manifests: Iterable[Manifest]) -> Consolidated:
    """Merge bundle manifests like the client: live beats deleted; two live ones with different
    hashes are a conflict and both are dropped; among equals the later last_change is kept."""
    result = Consolidated()
    conflicted: set[str] = set()
    for manifest in manifests:
        for entry in manifest.entries:
            if entry.path in conflicted:
                continue
            old = result.entries.get(entry.path)
            if old is None:
                result.entries[entry.path] = entry
            elif old.deleted != entry.deleted:
                result.entries[entry.path] = old if not old.deleted else entry
            elif not entry.deleted and old.hash != entry.hash:
                del result.entries[entry.path]
                conflicted.add(entry.path)
            elif entry.last_change > old.last_change:
                result.entries[entry.path] = entry
    result.conflicts = sorted(conflicted)
    return result


#: What a fullfile's tar adds to the object it holds: headers, pax xattrs, 10 KiB records.
FULLFILE_SLACK = 1 << 20


def fullfile_bounds(manifests: Iterable[Manifest]) -> dict[str, int]:
    """The most each path's fullfile may hold, where a manifest tells: an entry changed in
    its manifest's own version counts towards that manifest's ``contentsize`` (§2.2), so its
    fullfile is at most that plus tar overhead. Entries from older versions (their manifest
    was not fetched) and manifests without a contentsize get no bound here."""
    bounds: dict[str, int] = {}
    for manifest in manifests:
        if manifest.contentsize <= 0:
            continue
        bound = manifest.contentsize + FULLFILE_SLACK
        for entry in manifest.entries:
            if not entry.deleted and entry.last_change == manifest.version:
                bounds[entry.path] = max(bounds.get(entry.path, 0), bound)
    return bounds


def install_list(entries: dict[str, Entry]) -> list[Entry]:
    """What a fresh install lays down: every live entry except config, parents first."""
    return sorted((e for e in entries.values() if not e.deleted and not is_config(e)),
                  key=lambda e: e.path)


def update_list(entries: dict[str, Entry], current: int,
                new_paths: Collection[str] = ()) -> list[Entry]:
    """What an update from ``current`` touches: entries changed after it, except config and
    state, and except deleted boot entries (§7.4 step 6); plus, installed like a fresh install,
    the live ``new_paths`` (those of bundles the device gains in this update, whose entries
    may be older than ``current``); sorted parents first."""
    chosen = [e for e in entries.values()
              if (e.last_change > current and not is_config(e) and not is_state(e)
                  and not (e.deleted and is_boot(e)))
              or (e.path in new_paths and not e.deleted and not is_config(e))]
    return sorted(chosen, key=lambda e: e.path)


def verify_list(entries: dict[str, Entry]) -> list[Entry]:
    """What ``verify`` compares: live entries that are not config, state or boot (§7.5)."""
    return sorted((e for e in entries.values()
                   if not e.deleted and not is_config(e) and not is_state(e) and not is_boot(e)),
                  key=lambda e: e.path)
