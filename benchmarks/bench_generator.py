#!/usr/bin/env python3
"""Native generator speed and memory against a floor measured in the same run (issue 2).

Makes a realistic tree from this machine's ``/usr`` (thousands of files, hundreds of MB),
publishes it as version 10, then an incremental version 20 (about 5% of the files changed, a
few added and deleted), each with ``swupd-repo build`` in a child process whose whole process
tree's RSS is sampled. Prints, per version::

    build time / floor, and peak memory

Floor = reading and SHA-256 hashing every file + ``xz -6`` of the bytes that must be
compressed (all file bytes for the first version, the changed and added ones after), spread
over all cores with a process pool: the least any generator must do.

Usage (as root, so owners can be copied): ``python3 benchmarks/bench_generator.py
[--size-mb 300] [--source /usr] [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_CHUNK = 1 << 20


def collect(source: Path, limit_bytes: int, max_file: int = 32 << 20, seed: int = 1
            ) -> list[Path]:
    """A deterministic random sample of ``source``'s regular files and symlinks until
    ``limit_bytes`` of data: spread over the whole tree, like a real rootfs (thousands of
    small files beside a few big ones), not just the first directories of a sorted walk."""
    candidates: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.is_symlink() or (p.is_file() and st.st_size <= max_file
                                  and os.access(p, os.R_OK)):
                candidates.append(p)
    random.Random(seed).shuffle(candidates)
    picked: list[Path] = []
    total = 0
    for p in candidates:
        if total >= limit_bytes:
            break
        picked.append(p)
        total += 0 if p.is_symlink() else p.lstat().st_size
    return sorted(picked)


def make_tree(files: list[Path], source: Path, dest: Path) -> None:
    for src in files:
        rel = src.relative_to(source.parent)
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    (dest / "usr/lib").mkdir(parents=True, exist_ok=True)


def write_os_release(tree: Path, version: int) -> None:
    p = tree / "usr/lib/os-release"
    if p.is_symlink():
        p.unlink()
    p.write_text(f'NAME="bench"\nVERSION_ID={version}\n')


def mutate(tree: Path, fraction: float, seed: int = 7) -> list[Path]:
    """Change ``fraction`` of the regular files, delete a few, add a few; returns the files
    whose bytes must be compressed (changed + added)."""
    rng = random.Random(seed)
    regular = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    changed = rng.sample(regular, max(1, int(len(regular) * fraction)))
    for p in changed:
        data = bytearray(p.read_bytes())
        for _ in range(4):  # a few small edits, like a rebuilt binary
            if data:
                i = rng.randrange(len(data))
                data[i:i + 8] = os.urandom(8)
        data += b"bench-change"
        p.write_bytes(bytes(data))
    changed_set = set(changed)
    survivors = [p for p in regular if p not in changed_set]
    for p in rng.sample(survivors, 5):
        p.unlink()
    added = []
    for i in range(5):
        p = tree / "usr/share/bench-added" / f"new-{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.choice(regular).read_bytes() if rng.random() < 0.5
                      else os.urandom(100_000))
        added.append(p)
    return changed + added


# --- the floor ------------------------------------------------------------------------------

def _sha(path: str) -> int:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return 0


def _xz(path: str) -> int:
    c = lzma.LZMACompressor(preset=6)
    out = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            out += len(c.compress(chunk))
    return out + len(c.flush())


def floor_seconds(tree: Path, to_compress: list[Path], workers: int) -> float:
    regular = [str(p) for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_sha, p) for p in regular]
        jobs += [pool.submit(_xz, str(p)) for p in sorted(to_compress, key=lambda p:
                                                          -p.stat().st_size)]
        for j in jobs:
            j.result()
    return time.perf_counter() - start


# --- the build, with the process tree's RSS sampled -----------------------------------------

def _tree_rss(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * page
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed_build(storage: Path, version: int) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "swupd_repo.cli", "build", "--storage", str(storage),
           "--version", str(version)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"build {version} failed:\n{err}")
    return elapsed, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=Path("/usr"))
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the storage directory")
    args = ap.parse_args()
    workers = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="swupd-bench-", dir=args.workdir))
    storage = work / "storage"
    try:
        files = collect(args.source, args.size_mb << 20)
        tree10 = storage / "image/10/os-core"
        make_tree(files, args.source, tree10)
        write_os_release(tree10, 10)
        regular10 = [p for p in tree10.rglob("*") if p.is_file() and not p.is_symlink()]
        size10 = sum(p.stat().st_size for p in regular10)
        print(f"tree: {len(files)} paths, {len(regular10)} files, {size10 / 2**20:.0f} MiB; "
              f"{workers} cores")

        floor10 = floor_seconds(tree10, regular10, workers)
        time10, peak10 = timed_build(storage, 10)

        tree20 = storage / "image/20/os-core"
        tree20.parent.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(tree10), str(tree20)], check=True)
        write_os_release(tree20, 20)
        to_compress = mutate(tree20, 0.05)
        floor20 = floor_seconds(tree20, to_compress, workers)
        time20, peak20 = timed_build(storage, 20)
        changed_mb = sum(p.stat().st_size for p in to_compress) / 2**20

        print(f"first version      : build {time10:7.1f} s  floor {floor10:7.1f} s  "
              f"ratio {time10 / floor10:5.2f} (target 2.5)  peak {peak10 / 2**20:6.0f} MiB")
        print(f"incremental (~5%,  : build {time20:7.1f} s  floor {floor20:7.1f} s  "
              f"ratio {time20 / floor20:5.2f} (target 3.0)  peak {peak20 / 2**20:6.0f} MiB")
        print(f"  {len(to_compress)} files / {changed_mb:.0f} MiB changed or added)")
        www = storage / "www"
        for v in (10, 20):
            size = sum(p.stat().st_size for p in (www / str(v)).rglob("*") if p.is_file())
            print(f"www/{v}: {size / 2**20:.0f} MiB")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
