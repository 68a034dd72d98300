#!/usr/bin/env python3
"""Native generator speed, memory and pack bytes against floors measured in the same run.

Scenarios (issue 16), each ``swupd-repo build --jobs 0`` in a child process whose whole
process tree's RSS and CPU time are measured:

1. a small history (versions 10-30, ~60 files on paths the big tree also has, other content),
   then a 220 MB tree sampled from this machine's ``/usr`` (version 40): target <= 1.5x floor;
2. only ``usr/lib/os-release`` changed (50): <= 10 s and <= 3x floor;
3. 5 % of the files changed, a few added and deleted (60): <= 2x floor; then another 5 % (70),
   where the pack spans the first change split are reused piece by piece;
3b. only os-release changed, published the way BitBake does it: ``.dsk`` images made with
   ``mkfs.ext4 -d`` from 70's tree, extracted and built by ``swupd-repo publish``, first 80
   (after a tree stored without a record: nothing to share with), then 90 (the extraction
   links every unchanged file to 80's inode instead of writing it, and hashes it on the way,
   so the build reads none again). The runs include the extraction, the floor does not;
4. pack bytes against ``xz -6`` of the same tar as one stream (<= 1.05x), for the packs of 40,
   60 and 70, and the CPU use of every build (first publish: both cores busy), both as CPU
   time over wall time and as runnable threads of the build's process tree (the cores it
   could use: on a shared machine the first figure measures the other load as well);
5. with ``--large``: a 2 GB / 60,000-file tree synthesised from ``/usr`` (copies with a few
   bytes changed each), first and 5 %-changed ratios, peak memory < 1 GiB.

Floor = read + SHA-256 of every file of the version + ``xz -6`` of only the bytes that are new
to the storage (content never seen in an earlier version), spread over all cores with a
process pool: the least any generator must do. ``check`` runs on the outputs (consistency only
unless ``--simulate``).

Usage (as root, so owners can be copied): ``python3 benchmarks/bench_generator.py
[--size-mb 220] [--compression gzip|xz|smallest] [--large] [--simulate] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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

def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _xz(path: str) -> int:
    c = lzma.LZMACompressor(preset=6)
    out = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            out += len(c.compress(chunk))
    return out + len(c.flush())


def regular_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def _cpu_children() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def floor_seconds(tree: Path, seen: set[str], workers: int) -> tuple[float, int, float]:
    """Read + SHA-256 of every file of ``tree``, then ``xz -6`` of the files whose content is
    new to the storage (not in ``seen``, which is updated), on all cores. Returns the time,
    the new bytes and the CPU seconds."""
    regular = [str(p) for p in regular_files(tree)]
    cpu = _cpu_children()
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        digests = list(pool.map(_sha, regular, chunksize=16))
        new = {d: p for p, d in zip(regular, digests, strict=True) if d not in seen}
        todo = sorted(new.values(), key=lambda p: -os.path.getsize(p))
        list(pool.map(_xz, todo, chunksize=1))
    elapsed = time.perf_counter() - start
    seen.update(digests)
    return elapsed, sum(os.path.getsize(p) for p in new.values()), _cpu_children() - cpu


# --- the build, with the process tree's RSS sampled -----------------------------------------

def _tree_sample(root_pid: int) -> tuple[int, int]:
    """(RSS bytes, runnable threads) of ``root_pid``'s process tree. A thread waiting for a
    core is runnable too (state R), so the count says how many cores the build could use
    now, whatever else the machine runs: CPU use measured against wall time cannot, on a
    shared machine."""
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
    total = runnable = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    runnable += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                pass
    return total, runnable


@dataclass
class Run:
    seconds: float
    peak: int  # bytes, the whole process tree
    cpu: float  # user + system seconds of the build and its workers
    runnable: float = 0.0  # mean runnable threads of the tree (cores it could use)
    busy: float = 0.0  # share of the samples with at least as many runnable as cores
    log: str = ""  # what the command printed on stderr


def timed_build(storage: Path, version: int, compression: str,
                command: tuple[str, ...] = ("build",)) -> Run:
    cmd = [sys.executable, "-m", "swupd_repo.cli", *command, "--storage", str(storage),
           "--version", str(version), "--jobs", "0", "--compression", compression]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    counts: list[int] = []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            rss, runnable = _tree_sample(proc.pid)
            peak = max(peak, rss)
            counts.append(runnable)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"build {version} failed:\n{err}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cores = len(os.sched_getaffinity(0))
    return Run(elapsed, peak, cpu,
               runnable=sum(min(c, cores) for c in counts) / max(1, len(counts)),
               busy=sum(c >= cores for c in counts) / max(1, len(counts)), log=err)


def check(storage: Path, version: int, simulate: bool) -> str:
    cmd = [sys.executable, "-m", "swupd_repo.cli", "check", "--storage", str(storage),
           "--version", str(version)]
    if not simulate:
        cmd.append("--no-simulate")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"check of {version} failed:\n{res.stderr}{res.stdout}")
    return "check ok" + ("" if simulate else " (no simulation)")


# --- pack bytes against one solid stream ----------------------------------------------------

def _solid(pack: str) -> tuple[int, int]:
    """(pack bytes, bytes of the same tar as one ``xz -6`` stream)."""
    with open(pack, "rb") as f:
        data = lzma.decompress(f.read())
    return os.path.getsize(pack), len(lzma.compress(data, preset=6))


def pack_ratios(packs: list[Path], workers: int) -> list[tuple[str, int, int]]:
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_solid, [str(p) for p in packs]))
    return [(f"{p.parent.name}/{p.name}", a, b) for p, (a, b) in zip(packs, sizes, strict=True)]


# --- scenarios --------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    version: int
    run: Run
    floor: float
    new_bytes: int
    floor_cpu: float
    target: float
    limit_s: float | None = None
    note: str = ""
    load: float = 0.0  # 1-minute load average after the build (other work on the machine)


def small_history(storage: Path, files: list[Path], source: Path, seed: int = 3
                  ) -> list[int]:
    """Versions 10, 20, 30: ~60 files each, on paths the big tree also has but with other
    (random or shuffled) content, as when a minimal image grows into a real one."""
    rng = random.Random(seed)
    regular = [p for p in files if not p.is_symlink()]
    picked = rng.sample(regular, min(60, len(regular)))
    versions = []
    for n, version in enumerate((10, 20, 30)):
        tree = storage / f"image/{version}/os-core"
        for i, src in enumerate(picked):
            out = tree / src.relative_to(source.parent)
            out.parent.mkdir(parents=True, exist_ok=True)
            size = min(src.stat().st_size, 256 << 10)
            out.write_bytes(os.urandom(size) if i % 2 else
                            rng.choice(regular).read_bytes()[:size] + bytes([n]))
        write_os_release(tree, version)
        versions.append(version)
    return versions


def copy_version(storage: Path, old: int, new: int) -> Path:
    tree = storage / f"image/{new}/os-core"
    tree.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(storage / f"image/{old}/os-core"), str(tree)], check=True)
    write_os_release(tree, new)
    return tree


def measure(storage: Path, name: str, version: int, seen: set[str], workers: int,
            target: float, compression: str, limit_s: float | None = None) -> Scenario:
    floor, new_bytes, floor_cpu = floor_seconds(storage / f"image/{version}/os-core", seen,
                                                workers)
    run = timed_build(storage, version, compression)
    return Scenario(name, version, run, floor, new_bytes, floor_cpu, target, limit_s,
                    load=os.getloadavg()[0])


def publish_from_dsk(storage: Path, work: Path, base: int, versions: tuple[int, ...],
                     seen: set[str], workers: int, compression: str) -> list[Scenario]:
    """``base``'s tree with only os-release changed, as one ``.dsk`` per version (not
    timed), then ``swupd-repo publish`` of each in turn (timed): extraction, sharing with the
    previous tree and build in one process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from dsk import make_dsk

    source = work / "dsk-tree"
    subprocess.run(["cp", "-a", str(storage / f"image/{base}/os-core"), str(source)],
                   check=True)
    used = sum(p.lstat().st_size for p in source.rglob("*"))
    paths = sum(1 for _ in source.rglob("*"))
    images = {}
    for version in versions:
        write_os_release(source, version)
        images[version] = make_dsk(source, work / "dsk", f"v{version}",
                                   rootfs_mb=used * 13 // 10 // 2**20 + paths // 64 + 64)
    out = []
    for n, version in enumerate(versions):
        write_os_release(source, version)
        floor, new_bytes, floor_cpu = floor_seconds(source, seen, workers)
        dsk, layout = images[version]
        run = timed_build(storage, version, compression,
                          ("publish", "--dsk", str(dsk), "--layout", str(layout)))
        dsk.unlink()
        name = "os-release only, .dsk, " + ("first" if n == 0 else "after a .dsk")
        scenario = Scenario(name, version, run, floor, new_bytes, floor_cpu, 3.0,
                            limit_s=10.0)
        scenario.note = "; ".join(line for line in run.log.splitlines()
                                  if "files hashed" in line or "extracted" in line)
        out.append(scenario)
    shutil.rmtree(source)
    return out


def report(s: Scenario, workers: int) -> str:
    ratio = s.run.seconds / s.floor
    ok = ratio <= s.target and (s.limit_s is None or s.run.seconds <= s.limit_s)
    limit = f", <= {s.limit_s:.0f} s" if s.limit_s else ""
    return (f"{s.name:<34} v{s.version:<4} build {s.run.seconds:7.1f} s  floor {s.floor:6.1f} s "
            f"({s.new_bytes / 2**20:6.1f} MiB new)  ratio {ratio:5.2f} (target <= {s.target}"
            f"{limit}) {'ok' if ok else 'MISSED'}  peak {s.run.peak / 2**20:5.0f} MiB  "
            f"cpu {s.run.cpu / s.run.seconds / workers:4.0%} of {workers} cores, "
            f"runnable {s.run.runnable:.2f} of {workers} ({s.run.busy:.0%} of the time all)  "
            f"cpu time {s.run.cpu:6.1f} s / floor's {s.floor_cpu:6.1f} s = "
            f"{s.run.cpu / s.floor_cpu:5.2f}  {machine_load()}"
            + (f"\n    {s.note}" if s.note else ""))


def synthesise_large(source: Path, dest: Path, total: int, count: int, seed: int = 11) -> None:
    """About ``total`` bytes in ``count`` files from ``source`` with variations: each source
    file appears several times under other names, with a few bytes changed per copy, so the
    content is all distinct (no free deduplication) but compresses like real binaries."""
    files = [p for p in collect(source, total) if not p.is_symlink()]
    rng = random.Random(seed)
    made = size = 0
    while made < count and size < total:
        src = files[made % len(files)]
        data = bytearray(src.read_bytes())
        for _ in range(4):
            if data:
                i = rng.randrange(len(data))
                data[i:i + 8] = rng.randbytes(8)
        out = dest / f"usr/lib/synth{made % 97:02d}/{made // len(files)}" / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(data) + made.to_bytes(4, "little"))
        made += 1
        size += len(data)
    (dest / "usr/lib").mkdir(parents=True, exist_ok=True)


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f})"


def run_main(args: argparse.Namespace, work: Path) -> None:
    workers = len(os.sched_getaffinity(0))
    storage = work / "storage"
    seen: set[str] = set()
    files = collect(args.source, args.size_mb << 20)
    history = small_history(storage, files, args.source)
    for v in history:
        floor_seconds(storage / f"image/{v}/os-core", seen, workers)
        timed_build(storage, v, args.compression)
    big = 40
    tree = storage / f"image/{big}/os-core"
    make_tree(files, args.source, tree)
    write_os_release(tree, big)
    regular = regular_files(tree)
    print(f"tree: {len(files)} paths, {len(regular)} files, "
          f"{sum(p.stat().st_size for p in regular) / 2**20:.0f} MiB; {workers} cores; "
          f"fullfiles {args.compression}; history {history}")
    results = [measure(storage, "small history, then the big tree", big, seen, workers, 1.5,
                       args.compression)]
    print(report(results[-1], workers), flush=True)
    print(check(storage, big, args.simulate), flush=True)
    if args.first_only:
        pack = storage / f"www/{big}/pack-os-core-from-0.tar"
        for name, ours, solid in pack_ratios([pack], workers):
            print(f"{name:<34} {ours / 2**20:7.1f} MiB vs one xz -6 stream "
                  f"{solid / 2**20:7.1f} MiB  ratio {ours / solid:5.3f} (target <= 1.05)")
        return
    copy_version(storage, big, big + 10)
    results.append(measure(storage, "only os-release changed", big + 10, seen, workers, 3.0,
                           args.compression, limit_s=10.0))
    print(report(results[-1], workers), flush=True)
    tree = copy_version(storage, big + 10, big + 20)
    mutate(tree, 0.05)
    results.append(measure(storage, "5% of files changed", big + 20, seen, workers, 2.0,
                           args.compression))
    print(report(results[-1], workers), flush=True)
    print(check(storage, big + 20, args.simulate), flush=True)
    tree = copy_version(storage, big + 20, big + 30)
    mutate(tree, 0.05, seed=8)
    results.append(measure(storage, "another 5% changed", big + 30, seen, workers, 2.0,
                           args.compression))
    print(report(results[-1], workers), flush=True)
    for scenario in publish_from_dsk(storage, work, big + 30, (big + 40, big + 50), seen,
                                     workers, args.compression):
        results.append(scenario)
        print(report(scenario, workers), flush=True)
    print(check(storage, big + 50, args.simulate), flush=True)
    www = storage / "www"
    packs = [www / f"{big}/pack-os-core-from-0.tar", www / f"{big}/pack-os-core-from-30.tar",
             www / f"{big + 20}/pack-os-core-from-{big + 10}.tar",
             www / f"{big + 20}/pack-os-core-from-0.tar",
             www / f"{big + 30}/pack-os-core-from-0.tar"]
    for name, ours, solid in pack_ratios(packs, workers):
        print(f"{name:<34} {ours / 2**20:7.1f} MiB vs one xz -6 stream {solid / 2**20:7.1f} MiB"
              f"  ratio {ours / solid:5.3f} (target <= 1.05)")
    for v in (big, big + 10, big + 20, big + 30):
        size = sum(p.stat().st_size for p in (www / str(v)).rglob("*") if p.is_file())
        print(f"www/{v}: {size / 2**20:.1f} MiB")
    store = storage / ".swupd-repo-cache"
    stored = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    print(f"stream store: {stored / 2**20:.0f} MiB")


def run_large(args: argparse.Namespace, work: Path) -> None:
    workers = len(os.sched_getaffinity(0))
    storage = work / "large"
    seen: set[str] = set()
    tree = storage / "image/10/os-core"
    synthesise_large(args.source, tree, args.large_mb << 20, args.large_files)
    write_os_release(tree, 10)
    regular = regular_files(tree)
    print(f"large tree: {len(regular)} files, "
          f"{sum(p.stat().st_size for p in regular) / 2**20:.0f} MiB", flush=True)
    first = measure(storage, "large: first version", 10, seen, workers, 1.5, args.compression)
    print(report(first, workers), flush=True)
    tree = copy_version(storage, 10, 20)
    mutate(tree, 0.05)
    second = measure(storage, "large: 5% of files changed", 20, seen, workers, 2.0,
                     args.compression)
    print(report(second, workers), flush=True)
    peak = max(first.run.peak, second.run.peak)
    print(f"large: peak memory {peak / 2**20:.0f} MiB (target < 1024 MiB) "
          f"{'ok' if peak < 1 << 30 else 'MISSED'}")
    print(check(storage, 20, False), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=Path("/usr"))
    ap.add_argument("--size-mb", type=int, default=220)
    ap.add_argument("--compression", default="gzip", choices=("gzip", "xz", "smallest"),
                    help="fullfile compression of every build")
    ap.add_argument("--large", action="store_true",
                    help="also the 2 GB / 60,000-file tree (slow: tens of minutes)")
    ap.add_argument("--large-mb", type=int, default=2048)
    ap.add_argument("--large-files", type=int, default=60_000)
    ap.add_argument("--simulate", action="store_true",
                    help="check with update simulation (slow), not only consistency")
    ap.add_argument("--first-only", action="store_true",
                    help="stop after the first publish of the big tree")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the storage directories")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="swupd-bench-", dir=args.workdir))
    try:
        run_main(args, work)
        if args.large:
            run_large(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
