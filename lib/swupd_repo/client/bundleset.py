"""Set arithmetic over bundles: what adding, removing or losing a bundle means for the files.

Pure functions over manifests (which bundles a target has: :mod:`.tracking`; fetching:
:mod:`.manifests`). The rules follow the format-3 client (c42f8a3a ``bundle.c``):

* a bundle brings the bundles its manifest ``includes:`` (recursively), and os-core always;
* adding installs the live entries of the new bundles that the target does not have yet;
* removing deletes exactly the paths of the removed bundles that no remaining bundle lists,
  and is refused for os-core and for a bundle a remaining bundle includes;
* a bundle the new MoM no longer lists is removed by the update the same way (c42f8a3a left
  its files behind, still tracked, never updated again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ..swupd.bundletrees import with_ancestors
from ..swupd.manifest import Entry, Manifest, deleted_entry
from .consolidate import is_config, is_state
from .tracking import CORE


def closure(names: Iterable[str], includes_of: Callable[[str], Sequence[str]]) -> list[str]:
    """``names``, os-core and every bundle they include, recursively; os-core first, then in
    the order found. ``includes_of`` may fetch (it is called once per bundle)."""
    found: list[str] = []
    todo = [CORE, *names]
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found.append(name)
        todo.extend(includes_of(name))
    return found


def includers(name: str, manifests: Mapping[str, Manifest]) -> list[str]:
    """The bundles among ``manifests`` whose ``includes:`` name ``name``."""
    return sorted(b for b, m in manifests.items() if b != name and name in m.includes)


def live_paths(manifests: Iterable[Manifest]) -> set[str]:
    """Every path some manifest lists as present."""
    return {e.path for m in manifests for e in m.entries if not e.deleted}


def add_list(merged: Mapping[str, Entry], added: Iterable[Manifest],
             have: Mapping[str, Entry]) -> list[Entry]:
    """What adding bundles installs: each live path of the ``added`` manifests, as the
    consolidation of the whole new set has it (``merged``; a conflict dropped it), unless the
    target's current set (``have``) already lists it live with the same hash; never config.
    Sorted parents first."""
    chosen: dict[str, Entry] = {}
    for path in live_paths(added):
        entry = merged.get(path)
        if entry is None or entry.deleted or is_config(entry):
            continue
        before = have.get(path)
        if before is not None and not before.deleted and before.hash == entry.hash:
            continue
        chosen[path] = entry
    return sorted(chosen.values(), key=lambda e: e.path)


def removal_list(removed: Iterable[Manifest], kept: Iterable[Manifest]) -> list[Entry]:
    """The live entries of the ``removed`` bundles that no ``kept`` manifest lists live, nor
    lists anything below (a directory another bundle still fills stays); never config.
    Sorted parents first (remove them in reverse)."""
    keep = with_ancestors(live_paths(kept))
    chosen: dict[str, Entry] = {}
    for manifest in removed:
        for entry in manifest.entries:
            if not entry.deleted and not is_config(entry) and entry.path not in keep:
                chosen.setdefault(entry.path, entry)
    return sorted(chosen.values(), key=lambda e: e.path)


def dropped_deletions(dropped: Iterable[Manifest], kept: Iterable[Manifest],
                      version: int) -> list[Entry]:
    """Deleted entries (as of ``version``) for what bundles the new MoM no longer lists leave
    behind: their live paths that no remaining manifest lists (:func:`removal_list`), except
    state, which an update never touches."""
    return [deleted_entry(e.path, version, e.modifier)
            for e in removal_list(dropped, kept) if not is_state(e)]
