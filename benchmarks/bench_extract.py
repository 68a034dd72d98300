"""Extraction speed and memory against ``debugfs rdump`` on the same image, in the same run.

Builds a ~200 MB / ~5,000-file rootfs from files under /usr (mkfs.ext4 -b 4096 -d, inside an
Ostro-style GPT .dsk made with sgdisk), then times

    debugfs -R 'rdump / OUT' 'IMG?offset=N'
    swupd_repo.extract.extract_rootfs(IMG, N, SIZE, OUT)     (in a child: clean peak RSS)

best of ``--rounds`` each, and prints our time as a ratio of debugfs's plus our peak memory.
Target: ratio <= 1.2, peak < 200 MiB. Run as root (owners, devices): ``sudo python
benchmarks/bench_extract.py [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from dsk import make_dsk, make_layout, rootfs_offset  # noqa: E402

TARGET_FILES = 5000
TARGET_BYTES = 200 << 20


def build_source(dest: Path, files: int = TARGET_FILES,
                 size: int = TARGET_BYTES) -> tuple[int, int]:
    """Copy files from /usr (metadata kept) until both targets are met."""
    count = total = 0
    big: list[Path] = []
    for dirpath, dirnames, filenames in os.walk("/usr"):
        dirnames.sort()
        for name in sorted(filenames):
            src = Path(dirpath, name)
            try:
                st = src.lstat()
            except OSError:
                continue
            if not (src.is_symlink() or src.is_file()):
                continue
            if st.st_size > 1 << 20:
                big.append(src)
                continue
            if count < files:
                target = dest / src.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target, follow_symlinks=False)
                count += 1
                total += 0 if src.is_symlink() else st.st_size
    for src in sorted(big, key=lambda p: p.lstat().st_size):
        if total >= size:
            break
        if src.is_symlink():
            continue
        target = dest / "big" / src.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
        total += src.stat().st_size
    return count, total


CHILD = """
import resource, sys, time
from pathlib import Path
from swupd_repo.extract import extract_rootfs
from swupd_repo.progress import NullReporter
start = time.perf_counter()
extract_rootfs(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]),
               NullReporter())
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def time_ours(dsk: Path, offset: int, size: int, out: Path) -> tuple[float, float, int]:
    """(whole process as timed from here, like debugfs; extraction alone; max RSS KiB)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(dsk), str(offset), str(size),
                           str(out)], check=True, capture_output=True, text=True)
    whole = time.perf_counter() - start
    seconds, rss_kib = done.stdout.split()
    return whole, float(seconds), int(rss_kib)


def time_debugfs(dsk: Path, offset: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    start = time.perf_counter()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", f"{dsk}?offset={offset}"], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: temporary)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="swupd-repo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "src"
        if not src.exists():
            count, total = build_source(src)
            print(f"source: {count} files, {total / 1e6:.0f} MB from /usr")
        rootfs_mb = 400
        dsk, _layout = make_dsk(src, work, "bench", rootfs_mb=rootfs_mb)
        offset = rootfs_offset(make_layout(rootfs_mb))
        size = rootfs_mb << 20
        ours, inner, theirs, peak = [], [], [], 0
        for _ in range(args.rounds):
            theirs.append(time_debugfs(dsk, offset, work / "debugfs-out"))
            whole, seconds, rss = time_ours(dsk, offset, size, work / "ours-out" / "os-core")
            ours.append(whole)
            inner.append(seconds)
            peak = max(peak, rss)
        print(f"debugfs rdump: {min(theirs):.2f} s (rounds: "
              f"{', '.join(f'{t:.2f}' for t in theirs)})")
        print(f"swupd-repo extract: {min(ours):.2f} s, process start included like debugfs's "
              f"(rounds: {', '.join(f'{t:.2f}' for t in ours)}); extraction alone "
              f"{min(inner):.2f} s")
        print(f"ratio ours/debugfs: {min(ours) / min(theirs):.2f} (target <= 1.2)")
        print(f"peak memory (max RSS of the extracting process): {peak / 1024:.1f} MiB "
              f"(target < 200 MiB)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
