#!/usr/bin/env python3
"""Resolving bundle definitions on an image-sized tree (issue 15).

Makes a merged-``/usr`` tree of ``--files`` files in ``--packages`` dpkg packages (their lists
name half of the files the pre-merge way, ``/lib/...``, so every one is mapped through the
``/lib -> usr/lib`` symlink), then times :func:`~swupd_repo.bundles.resolve.resolve` for one
bundle of half the packages and one bundle of globs, against the baseline of one walk of the
same tree (``treemeta.tree_kinds``, what every reader of a stored tree pays), and prints both
and their ratio.

Usage: ``python3 benchmarks/bench_bundles.py [--files 60000] [--packages 600]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from swupd_repo.bundles.definitions import BundleDef
from swupd_repo.bundles.resolve import resolve
from swupd_repo.treemeta import tree_kinds


def make_tree(root: Path, files: int, packages: int) -> list[str]:
    os.makedirs(root / "usr/lib")
    os.makedirs(root / "usr/share/doc")
    os.symlink("usr/lib", root / "lib")
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    status = []
    names = []
    per = max(1, files // packages)
    for p in range(packages):
        name = f"pkg{p}"
        names.append(name)
        listed = ["/.", "/lib", f"/lib/{name}", "/usr", "/usr/share", "/usr/share/doc",
                  f"/usr/share/doc/{name}"]
        (root / f"usr/lib/{name}").mkdir()
        (root / f"usr/share/doc/{name}").mkdir()
        for i in range(per):
            half = "lib" if i % 2 else "share/doc"
            (root / f"usr/{half}/{name}/f{i}").write_bytes(b"x")
            listed.append(f"/{'lib' if half == 'lib' else 'usr/share/doc'}/{name}/f{i}")
        (info / f"{name}.list").write_text("\n".join(listed) + "\n")
        status.append(f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\n")
    (root / "var/lib/dpkg/status").write_text("\n".join(status))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60000)
    parser.add_argument("--packages", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        names = make_tree(tree, args.files, args.packages)
        start = time.perf_counter()
        count = sum(1 for _ in tree_kinds(tree))
        walk = time.perf_counter() - start
        bundles = [BundleDef("apps", packages=tuple(names[::2])),
                   BundleDef("docs", globs=tuple(f"/usr/share/doc/{n}/**" for n in names[1::2]))]
        start = time.perf_counter()
        result = resolve(tree, bundles, tracking={})
        took = time.perf_counter() - start
    owned = sum(len(p) for p in result.bundles.values())
    print(f"tree: {count} paths; bundles own {owned}")
    print(f"walk (baseline): {walk:.3f} s")
    print(f"resolve:         {took:.3f} s  ({took / walk:.1f}x the walk)")


if __name__ == "__main__":
    main()
