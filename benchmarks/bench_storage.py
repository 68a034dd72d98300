"""``image/`` growth per version against the bytes that changed, and against full copies.

Publishes ``--builds`` versions (real .dsk images, the real pipeline, native backend) of a
tree of ``--files`` incompressible files of ``--size`` bytes in a few directories, where
``--change`` (2 %) of the files get new content in each version. After each publish it
measures ``image/`` on disk (every inode once, ``st_blocks``) and prints:

* growth: how much ``image/`` grew with this version;
* changed: the on-disk bytes of the files that changed (what a version must cost);
* ratio growth/changed (target ~1; the rest is the version's own directories, its metadata
  record and hash cache, which every version has);
* full copy: what the version's tree costs stored on its own (today's cost before sharing,
  measured on the same tree in the same run), and the ratio growth/full copy.

With ``--rebase-at K`` build K is a rebase version (``--rebase``); after the builds it prints
each version's ``www/`` on disk, retires the versions before the rebase (``prune
--www-before``) and prints what that freed (reported and measured) against ``www/`` before.

Run as root or any user: ``python benchmarks/bench_storage.py [--keep DIR] [--rebase-at K]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "lib"))

from dsk import make_dsk  # noqa: E402
from swupd_repo.pipeline import publish  # noqa: E402
from swupd_repo.progress import NullReporter  # noqa: E402
from swupd_repo.prune import inodes  # noqa: E402
from swupd_repo.settings import make_settings  # noqa: E402

MTIME = 1_600_000_000


def write_tree(root: Path, version: int, files: int, size: int,
               last: dict[int, int]) -> None:
    """The tree of ``version``: file i holds the content of its last change ``last[i]``."""
    if root.exists():
        shutil.rmtree(root)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(f"NAME=Bench\nVERSION_ID={version}\n")
    for index in range(files):
        path = root / f"usr/share/d{index % 16:02}/f{index:05}"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = random.Random(index * 1_000_003 + last[index]).randbytes(size)
        path.write_bytes(data)
        os.utime(path, (MTIME + last[index], MTIME + last[index]))


def disk_bytes(paths: list[Path]) -> int:
    return sum(n.size for n in inodes(paths).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=10)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64 << 10, help="bytes per file")
    parser.add_argument("--change", type=float, default=0.02, help="fraction changed")
    parser.add_argument("--rebase-at", type=int, default=0,
                        help="make build K (1-based) a rebase and retire www/ before it")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: temporary)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="swupd-repo-bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "storage"
    rootfs_mb = max(32, int(args.files * args.size * 1.5 / 2**20) + 16)
    last = dict.fromkeys(range(args.files), 10)
    rng = random.Random(42)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    try:
        print(f"{args.builds} builds of {args.files} files x {args.size} bytes "
              f"({args.files * args.size / 1e6:.0f} MB), {args.change:.0%} changed per build")
        print(f"{'version':>8} {'growth MB':>10} {'changed MB':>11} {'ratio':>6} "
              f"{'full copy MB':>13} {'growth/full':>12} {'publish s':>10}")
        before = 0
        ratios, fulls = [], []
        for build in range(args.builds):
            version = 10 * (build + 1)
            changed: list[int] = []
            if build:
                changed = rng.sample(range(args.files), max(1, int(args.files * args.change)))
                for index in changed:
                    last[index] = version
            tree = work / "tree"
            write_tree(tree, version, args.files, args.size, last)
            dsk, layout = make_dsk(tree, work, "bench", rootfs_mb=rootfs_mb)
            settings = make_settings({"storage_dir": storage, "disk_image": dsk,
                                      "disk_layout": layout, "os_version": version,
                                      "jobs": 2, "rebase": build + 1 == args.rebase_at})
            start = time.perf_counter()
            publish(settings, NullReporter())
            seconds = time.perf_counter() - start
            image = storage / "image"
            after = disk_bytes([image])
            growth = after - before
            before = after
            changed_bytes = sum(
                os.lstat(storage / f"image/{version}/os-core/usr/share/d{i % 16:02}/f{i:05}")
                .st_blocks * 512 for i in changed)
            full = disk_bytes([image / str(version)])
            if build:
                ratios.append(growth / changed_bytes)
                fulls.append(growth / full)
                print(f"{version:>8} {growth / 1e6:>10.2f} {changed_bytes / 1e6:>11.2f} "
                      f"{growth / changed_bytes:>6.2f} {full / 1e6:>13.2f} "
                      f"{growth / full:>12.3f} {seconds:>10.1f}")
            else:
                print(f"{version:>8} {growth / 1e6:>10.2f} {'(first)':>11} {'':>6} "
                      f"{full / 1e6:>13.2f} {'':>12} {seconds:>10.1f}")
        print(f"mean growth/changed over builds 2..{args.builds}: "
              f"{sum(ratios) / len(ratios):.2f} (target ~1)")
        print(f"mean growth/full copy: {sum(fulls) / len(fulls):.3f} "
              f"(a full copy per version is 1.0)")
        trees = [p for p in (storage / "image").iterdir() if p.name.isdigit()]
        print(f"image/ on disk: {disk_bytes([storage / 'image']) / 1e6:.1f} MB; as full "
              f"copies: {sum(disk_bytes([p]) for p in trees) / 1e6:.1f} MB")
        if args.rebase_at:
            retire_figures(storage, 10 * args.rebase_at)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def retire_figures(storage: Path, rebase: int) -> None:
    """``www/`` per version, then what retiring the versions before ``rebase`` frees."""
    from swupd_repo.retire import retire
    from swupd_repo.storage import Storage

    st = Storage(storage)
    sizes = {v: disk_bytes([st.www(v)]) for v in st.published_versions()}
    print("www/ on disk per version (MB): " +
          ", ".join(f"{v}{'*' if v == rebase else ''} {b / 1e6:.2f}" for v, b in sizes.items())
          + "  (* the rebase)")
    before = disk_bytes([st.www_dir])
    result = retire(st, rebase, dry_run=False, reporter=NullReporter())
    after = disk_bytes([st.www_dir])
    kept = disk_bytes([st.www(v) for v in result.versions])
    print(f"prune --www-before {rebase}: retired {len(result.versions)} versions, reported "
          f"{result.freed_bytes / 1e6:.2f} MB freed, measured {(before - after) / 1e6:.2f} MB; "
          f"www/ {before / 1e6:.1f} -> {after / 1e6:.1f} MB; the retired versions keep "
          f"{kept / 1e3:.0f} KB of manifests")


if __name__ == "__main__":
    main()
