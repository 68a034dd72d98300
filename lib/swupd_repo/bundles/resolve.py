"""Resolve bundle definitions against one extracted tree into an :class:`Assignment`.

The rules (the README's "Bundles" section says the same for users):

* A bundle **claims** the paths of its packages (each package's list from the image's package
  database, :mod:`.packages`, mapped through the tree's symlinks, so ``/lib/x`` of a dpkg list
  is ``/usr/lib/x`` in a merged-``/usr`` tree; a path that is not in the tree, such as a file
  a rootfs post-process removed, is skipped) and the paths its globs match. Globs match
  manifest paths: ``*``, ``?`` and ``[...]`` within one component, ``**`` across components;
  ``DIR/**`` matches ``DIR`` itself and everything below it. A claimed path also claims its
  parent directories (dpkg lists them; opkg lists only files).
* A **non-directory** path (file, symlink, device ...) claimed by one bundle belongs to it;
  claimed by two, it is an error naming both bundles and the path.
* A **directory** belongs to a bundle only when that bundle alone claims it and everything
  under it belongs to the same bundle; otherwise os-core keeps it. So every parent directory
  a bundle's content needs is os-core's or the bundle's own, and installing os-core alone
  never leaves a half directory of a bundle.
* os-core is everything else: what no bundle claims, ``/`` and the shared directories.
* Each bundle's tracking file ``/usr/share/clear/bundles/<name>`` is its own, os-core's
  ``/usr/share/clear/bundles/os-core`` os-core's, whatever the definitions say.
* os-release (``/usr/lib/os-release``, ``/etc/os-release``) is os-core's whatever the
  definitions say: the client reads the version a device runs from it, so a device with
  os-core alone needs it, and it is the change every version makes in os-core.
* A bundle that ends up with nothing but its tracking file is published (a device can still
  add it) with a warning naming it: its packages ship only shared directories, or its globs
  match nothing.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from wcmatch import glob as wcglob

from ..errors import BundleError
from ..osrelease import OS_RELEASE_FILES
from ..progress import Reporter
from ..swupd.bundletrees import parents, with_ancestors
from ..treemeta import tree_kinds
from .assignment import CORE, Assignment
from .definitions import BundleDef
from .packages import PackageDatabase, find_databases, package_files

_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.FORCEUNIX
_MAX_LINKS = 40  # like the kernel's ELOOP limit


class TreeLinks:
    """Maps a path as a package lists it to the path it is in the tree, through symlinks.

    Resolution happens inside the tree, as on the device (``/`` is the tree's root, ``..``
    stops there), so a symlink can never lead outside the tree.
    """

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self._dirs: dict[str, str | None] = {"/": "/"}

    def resolve(self, path: str, *, follow_last: bool) -> str | None:
        """The tree path ``path`` names, or None when it does not exist in the tree.

        The last component is followed only with ``follow_last`` (a package's own symlink
        is the symlink, a directory a package lists is where its files are).
        """
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name or name in (".", ".."):
            return self._walk(path, follow_last=True)
        base = self._directory(parent or "/")
        if base is None:
            return None
        return self._walk(f"{base.rstrip('/')}/{name}", follow_last=follow_last, resolved=True)

    def _directory(self, path: str) -> str | None:
        if path not in self._dirs:
            self._dirs[path] = self._walk(path, follow_last=True)
        return self._dirs[path]

    def _walk(self, path: str, *, follow_last: bool, resolved: bool = False) -> str | None:
        parts = [p for p in path.split("/") if p and p != "."]
        done: list[str] = []
        if resolved:  # every component but the last is already a real directory
            done, parts = parts[:-1], parts[-1:]
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            disk = os.path.join(self.tree, *done, name)
            try:
                mode = os.lstat(disk).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return None
            if (parts or follow_last) and stat.S_ISLNK(mode):
                hops += 1
                if hops > _MAX_LINKS:
                    return None
                target = os.readlink(disk)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            done.append(name)
        return "/" + "/".join(done)


_MAGIC = re.compile(r"[*?\[]")


class GlobMatcher:
    """The globs of one bundle, each tried only on paths under its literal leading directory
    (``/usr/share/doc`` for ``/usr/share/doc/*/copyright``), so a bundle of hundreds of
    globs costs a few dictionary look-ups per path, not hundreds of regular expressions."""

    def __init__(self, globs: Iterable[str]) -> None:
        self._by_prefix: dict[str, list[re.Pattern[str]]] = {}
        for glob in globs:
            patterns = list(wcglob.translate(glob, flags=_GLOB_FLAGS)[0])
            if glob.endswith("/**") and len(glob) > 3:  # DIR/** claims DIR too
                patterns.extend(wcglob.translate(glob[:-3], flags=_GLOB_FLAGS)[0])
            literal = []
            for part in glob.split("/")[1:]:
                if _MAGIC.search(part):
                    break
                literal.append(part)
            prefix = "/" + "/".join(literal[:-1] if len(literal) == glob.count("/") else literal)
            self._by_prefix.setdefault(prefix, []).extend(re.compile(p) for p in patterns)

    def __bool__(self) -> bool:
        return bool(self._by_prefix)

    def matches(self, path: str) -> bool:
        for prefix in (path, *parents(path), "/"):
            for pattern in self._by_prefix.get(prefix, ()):
                if pattern.fullmatch(path):
                    return True
        return False


def package_claims(tree: Path, bundle: BundleDef, kinds: Mapping[str, bool],
                   links: TreeLinks, databases: list[PackageDatabase]) -> set[str]:
    """Tree paths the packages of ``bundle`` installed."""
    claimed: set[str] = set()
    for package in bundle.packages:
        listed = [p.rstrip("/") or "/" for p in package_files(tree, databases, bundle.name,
                                                                package)]
        containers = {parent for p in listed for parent in parents(p)}
        for entry in listed:
            if entry in ("/", "/."):
                continue
            path = links.resolve(entry, follow_last=entry in containers)
            if path is not None and path in kinds:
                claimed.add(path)
    return claimed


def resolve(tree: Path, bundles: Iterable[BundleDef], *, tracking: Mapping[str, str],
            reporter: Reporter | None = None) -> Assignment:
    """The split of ``tree`` that ``bundles`` define (see the module docstring).

    ``tracking`` maps each tracking file (``/usr/share/clear/bundles/<b>``) to its bundle,
    os-core's included; those paths must already be in the tree.
    """
    bundles = list(bundles)
    kinds = dict(tree_kinds(tree))  # path -> "directory", "file", "symlink", "other"
    links = TreeLinks(tree)
    databases = find_databases(tree) if any(b.packages for b in bundles) else []
    claims: dict[str, set[str]] = {}
    for bundle in bundles:
        claimed = package_claims(tree, bundle, kinds, links, databases)
        matcher = GlobMatcher(bundle.globs)
        if matcher:
            claimed.update(p for p in kinds if p != "/" and matcher.matches(p))
        claimed.difference_update(tracking)
        claimed.difference_update(_CORE_ONLY)
        claimed.update(p for p, b in tracking.items() if b == bundle.name)
        claims[bundle.name] = with_ancestors(claimed)

    claimers: dict[str, list[str]] = {}
    for name in sorted(claims):
        for path in claims[name]:
            claimers.setdefault(path, []).append(name)
    for path in sorted(claimers):
        names = claimers[path]
        if len(names) > 1 and kinds[path] != "directory":
            raise BundleError(f"{path} is claimed by the bundles {names[0]} and {names[1]}",
                              hint="a path can belong to one bundle only: change the packages "
                                   "or globs of one of them (SWUPD_REPO_BUNDLE_PACKAGES/"
                                   "SWUPD_REPO_BUNDLE_GLOBS)")

    owner = _owners(kinds, claimers)
    assignment: dict[str, set[str]] = {b.name: set() for b in bundles}
    for path, name in owner.items():
        if name != CORE:
            assignment[name].add(path)
    for bundle in bundles:
        content = assignment[bundle.name] - set(tracking)
        if not content and reporter is not None:
            reporter.warning(f"bundle {bundle.name} has no content of its own in {tree} "
                             "(its packages install only directories os-core keeps, or its "
                             "globs match nothing); it is published with its tracking file "
                             "alone")
    return Assignment({n: frozenset(p) for n, p in assignment.items()})


#: Paths os-core keeps whatever a bundle claims (see the module docstring).
_CORE_ONLY = frozenset("/" + rel for rel in OS_RELEASE_FILES)


def _owners(kinds: Mapping[str, str], claimers: Mapping[str, list[str]]) -> dict[str, str]:
    """Owner of every path: children are decided before their directory (deepest first)."""
    children: dict[str, set[str]] = {}
    for path in kinds:
        if path != "/":
            children.setdefault(path.rpartition("/")[0] or "/", set()).add(path)
    owner: dict[str, str] = {}
    for path in sorted(kinds, key=lambda p: p.count("/"), reverse=True):
        names = claimers.get(path, [])
        if path == "/" or len(names) != 1:
            owner[path] = CORE
        elif kinds[path] != "directory":
            owner[path] = names[0]
        else:
            below = {owner[c] for c in children.get(path, ())}
            owner[path] = names[0] if below <= {names[0]} else CORE
    return owner
