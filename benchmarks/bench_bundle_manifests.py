"""What splitting a tree into bundles costs the manifest builder, as ratios in one process.

Builds the manifests of two versions of a synthetic tree of ``--paths`` paths (records made
in memory: the scan and hashing are the same with or without bundles, so they are left out)
three ways and prints each time against the first:

* os-core alone (no split): the baseline;
* ``--bundles`` bundles of ``--share`` of the files each (whole directories), os-core the rest;
* the same split with 1 % of every bundle's files changed at 20 and one directory moved from
  a bundle into os-core.

Target: a split costs at most 1.5x os-core alone (the bundle trees, the subtraction and one
match per bundle over the same entries). Usage: ``python3 benchmarks/bench_bundle_manifests.py
[--paths 100000] [--bundles 4] [--share 0.1]``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from swupd_repo.swupd import builder  # noqa: E402
from swupd_repo.swupd.scan import Record  # noqa: E402


def tree(paths: int, version: int, changed: set[str]) -> dict[str, Record]:
    """``paths`` paths in directories of 50 files under /usr/lib/pkgNNNN; os-release says
    ``version``; files in ``changed`` get other content."""
    out: dict[str, Record] = {}

    def add(path: str, kind: str, salt: str = "") -> None:
        digest = hashlib.sha256(f"{path}{salt}".encode()).hexdigest()
        out[path] = Record(path, path, kind, 0o100644 if kind == "F" else 0o40755, 0, 0, 0,
                           100, 0, hash=digest)

    for d in ("/usr", "/usr/lib"):
        add(d, "D")
    add("/usr/lib/os-release", "F", str(version))
    n = 0
    while len(out) < paths:
        directory = f"/usr/lib/pkg{n // 50:05d}"
        if n % 50 == 0:
            add(directory, "D")
        path = f"{directory}/f{n % 50:02d}"
        add(path, "F", str(version) if path in changed else "")
        n += 1
    return out


def split(records: dict[str, Record], bundles: int, share: float) -> dict[str, set[str]]:
    dirs = sorted(p for p, r in records.items() if r.type == "D" and "/pkg" in p)
    per = int(len(dirs) * share)
    out: dict[str, set[str]] = {}
    for b in range(bundles):
        owned = dirs[b * per:(b + 1) * per]
        out[f"bundle{b}"] = {p for d in owned for p in records if p == d or
                             p.startswith(d + "/")}
    return out


def timed(records10: dict, records20: dict, split10: dict | None, split20: dict | None
          ) -> float:
    start = time.perf_counter()
    b10 = builder.build_manifests(records10, 10, builder.Previous(), timestamp=1,
                                  bundles=split10)
    prev = builder.Previous(10, dict(b10.bundles), b10.full)
    builder.build_manifests(records20, 20, prev, timestamp=1, bundles=split20)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--bundles", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.1)
    args = ap.parse_args()
    r10 = tree(args.paths, 10, set())
    s10 = split(r10, args.bundles, args.share)
    changed = {p for paths in s10.values() for p in sorted(paths)[::100]}
    r20 = tree(args.paths, 20, changed)
    s20 = {name: set(paths) for name, paths in s10.items()}
    moved = min(p for p in s20["bundle0"] if r10[p].type == "D")
    s20["bundle0"] = {p for p in s20["bundle0"] if not p.startswith(moved)}
    base = timed(r10, r20, None, None)
    same = timed(r10, r20, s10, s10)
    moving = timed(r10, r20, s10, s20)
    print(f"{args.paths} paths, {args.bundles} bundles of {args.share:.0%} each")
    print(f"os-core alone         {base:6.2f} s  1.00x")
    print(f"split, nothing moves  {same:6.2f} s  {same / base:.2f}x")
    print(f"split, changes+move   {moving:6.2f} s  {moving / base:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
