"""``swupd-repo status``: versions, their sizes on disk, shared bytes, what prune would free."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import Settings
from ..storage import Storage
from .options import settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="versions, sizes on disk, shared bytes, what prune frees",
                       description="Per stored version: its image tree's bytes on disk, the "
                       "bytes it shares with other trees (hard links of unchanged files), the "
                       "bytes only it holds, its www/<V> bytes; then what `prune` would free.")
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--storage", dest="storage_dir", type=Path, required=True,
                   help="storage directory")
    p.add_argument("--keep", type=int, default=1, help="--keep of the prune estimated (1)")
    p.set_defaults(func=run)


def storage_status(storage: Storage, settings: Settings, keep: int) -> list[str]:
    """The report's lines (read-only: no lock is taken, numbers are a snapshot)."""
    from ..prune import inodes, plan

    versions = sorted({int(p.name) for top in (storage.image_dir, storage.www_dir)
                       if top.is_dir() for p in top.iterdir() if p.name.isdigit()})
    trees = {v: storage.image(v) for v in versions if storage.image(v).is_dir()}
    nodes = inodes(trees.values())
    lines = [f"storage {storage.root}: latest {storage.latest()}",
             f"{'version':>8} {'image MB':>10} {'shared MB':>10} {'own MB':>10} {'www MB':>10}"]
    total_apparent = 0
    for version in versions:
        tree = trees.get(version)
        size = shared = 0
        for node in nodes.values():
            links = node.links.get(tree, 0) if tree is not None else 0
            if links:
                size += node.size
                if links < node.nlink:
                    shared += node.size
        total_apparent += size
        www = sum(n.size for n in inodes([storage.www(version)]).values())
        lines.append(f"{version:>8} {size / 1e6:>10.1f} {shared / 1e6:>10.1f} "
                     f"{(size - shared) / 1e6:>10.1f} {www / 1e6:>10.1f}")
    actual = sum(n.size for n in nodes.values())
    lines.append(f"image/ trees: {actual / 1e6:.1f} MB on disk for {total_apparent / 1e6:.1f} "
                 f"MB of trees ({(total_apparent - actual) / 1e6:.1f} MB saved by sharing)")
    estimate = plan(storage, keep=keep, deltapack_versions=settings.deltapack_versions)
    gone = ", ".join(map(str, estimate.remove)) or "nothing"
    lines.append(f"prune --keep {keep} would remove {gone}: "
                 f"{estimate.freed_bytes / 1e6:.1f} MB ({estimate.freed_bytes} bytes)")
    return lines


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    assert settings.storage_dir is not None
    for line in storage_status(Storage(settings.storage_dir), settings, args.keep):
        print(line)
    return 0
