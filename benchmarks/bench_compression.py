#!/usr/bin/env python3
"""Fullfile compression policies compared on a realistic tree (issue 2: choose the default).

Copies a random sample of this machine's ``/usr`` (thousands of files, ~200 MB by default),
scans it once, then writes every fullfile with each policy (``gzip``, ``xz``, ``smallest``)
through the generator's own code and process pool, and prints per policy: wall time, its
ratio to gzip's time, total fullfile bytes (what devices download for a first install from
fullfiles) and its ratio to the tree's size.

Usage: ``python3 benchmarks/bench_compression.py [--size-mb 200] [--source /usr]``
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from swupd_repo.progress import NullReporter
from swupd_repo.swupd.fullfiles import POLICIES, write_fullfiles
from swupd_repo.swupd.publish import make_executor
from swupd_repo.swupd.scan import scan_tree


def sample_tree(source: Path, dest: Path, limit: int, seed: int = 1) -> tuple[int, int]:
    """Copy a random sample of regular files (<= 32 MiB) up to ``limit`` bytes."""
    files = []
    for dirpath, _dirs, names in os.walk(source):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= 32 << 20:
                files.append(p)
    random.Random(seed).shuffle(files)
    total = count = 0
    for src in files:
        if total >= limit:
            break
        out = dest / src.relative_to(source.parent)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(src, out)
        except OSError:
            continue
        total += out.stat().st_size
        count += 1
    return count, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path("/usr"))
    ap.add_argument("--size-mb", type=int, default=200)
    args = ap.parse_args()
    workers = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        tree = Path(tmp) / "tree"
        count, total = sample_tree(args.source, tree, args.size_mb << 20)
        executor = make_executor(workers)
        try:
            scan = scan_tree(tree, NullReporter(), executor=executor)
            records = [r for r in scan.records.values() if r.type in "FLD"]
            print(f"tree: {count} files, {total / 2**20:.0f} MiB; {workers} workers")
            results = {}
            for policy in ("gzip", *[p for p in POLICIES if p != "gzip"]):
                out = Path(tmp) / policy
                start = time.perf_counter()
                write_fullfiles(records, out, policy, NullReporter(), executor=executor)
                elapsed = time.perf_counter() - start
                size = sum(f.stat().st_size for f in out.iterdir())
                results[policy] = (elapsed, size)
                shutil.rmtree(out)
        finally:
            if executor is not None:
                executor.shutdown()
    base_time = results["gzip"][0]
    print(f"{'policy':<10}{'time':>9}{'x gzip':>9}{'fullfiles':>12}{'of tree':>9}")
    for policy, (elapsed, size) in results.items():
        print(f"{policy:<10}{elapsed:>8.1f}s{elapsed / base_time:>9.2f}"
              f"{size / 2**20:>10.1f}Mi{size / total:>9.1%}")


if __name__ == "__main__":
    main()
