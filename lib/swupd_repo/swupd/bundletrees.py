"""The trees 2.53 would be given for each bundle, and its ``subtract_manifests`` (format3 §2.6).

The container's layout is one tree per bundle, ``image/<V>/<bundle>``; we store the whole
image once (``image/<V>/os-core``) and beside it the split (:mod:`...bundles.assignment`):
which paths belong to which non-core bundle. The trees the real server would read are derived
from that, as a tree on disk has to be:

* os-core's tree: every path no bundle lists, plus the directories above them (a file of
  os-core needs its directory, even one a bundle lists);
* a bundle's tree: the paths it lists, plus the directories above them (``/usr/bin`` for
  ``/usr/bin/gdb``), like the bundle trees meta-swupd staged (bundle content only, not a
  copy of os-core).

The server then removes from each non-core bundle what os-core has in the same state
(:func:`subtract`), so the directories above a bundle's paths drop out where os-core has them
and a bundle manifest lists what the bundle adds. Paths the split lists but the scan did not
find (names the server refuses, §9.5) are ignored: the scan already warned about them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .manifest import Entry


def parents(path: str) -> Iterable[str]:
    """``/a/b`` and ``/a`` for ``/a/b/c``, nearest first (never ``/``)."""
    at = path.rfind("/")
    while at > 0:
        yield path[:at]
        at = path.rfind("/", 0, at)


def with_ancestors(paths: Iterable[str]) -> set[str]:
    """``paths`` and every directory above them but ``/`` (``/usr/bin/x`` -> ``/usr/bin``,
    ``/usr``)."""
    found: set[str] = set()
    for path in paths:
        while path and path not in found:
            found.add(path)
            path = path.rpartition("/")[0]
    return found


def with_parents(paths: Iterable[str], present: Mapping[str, object]) -> set[str]:
    """``paths`` (those in ``present``) and every directory above them."""
    out: set[str] = set()
    for path in paths:
        if path not in present or path in out:
            continue
        out.add(path)
        for parent in parents(path):
            if parent in out:
                break  # added before, with everything above it
            if parent in present:
                out.add(parent)
    return out


def bundle_trees(present: Mapping[str, object], bundles: Mapping[str, Iterable[str]],
                 core: str = "os-core") -> dict[str, set[str]]:
    """Bundle name -> the manifest paths of its tree; ``core`` first, then ``bundles`` in
    name order (groups.ini order). ``present``: the scanned tree (path -> record)."""
    claimed: set[str] = set()
    for paths in bundles.values():
        claimed.update(paths)
    trees = {core: with_parents((p for p in present if p not in claimed), present)}
    for name in sorted(bundles):
        trees[name] = with_parents(bundles[name], present)
    return trees


def _name_key(entry: Entry) -> tuple[bytes, bool]:
    """The server's ``file_sort_filename``: strcmp of the path, then not-deleted first."""
    return entry.path.encode("utf-8", "surrogateescape"), entry.deleted


def subtract(entries: Iterable[Entry], core: Iterable[Entry]) -> list[Entry]:
    """2.53's ``subtract_manifests(m1, m2)``: ``entries`` without those ``core`` has with the
    same deleted state and the same "is a regular file" state.

    A merge walk over both lists sorted by name; reproduced step for step because of its quirk
    (§9.10): when a name matches but the states differ, the core side advances twice, so the
    core entry after it cannot remove its counterpart, which then stays in the bundle.
    """
    a = sorted(entries, key=_name_key)
    b = sorted(core, key=_name_key)
    out: list[Entry] = []
    i = j = 0
    while i < len(a) and j < len(b):
        x, y = a[i], b[j]
        kx, ky = _name_key(x)[0], _name_key(y)[0]
        if kx == ky:
            i += 1
            j += 1
            if x.deleted == y.deleted and (x.type == "F") == (y.type == "F"):
                continue
            out.append(x)
            j += 1  # the quirk: falls through to the core side's advance
        elif kx < ky:
            out.append(x)
            i += 1
        else:
            j += 1
    out.extend(a[i:])
    return out
