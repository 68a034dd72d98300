"""``swupd-repo extract``: the old ``extract_rootfs.sh`` without losetup, mount or rsync.

Finds the rootfs partition through the disk-layout JSON and the GPT, then writes it to
``STORAGE/image/<V>/os-core`` (no publishing; ``swupd-repo build`` does that later).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..errors import ExtractError
from ..progress import TqdmReporter
from ..settings import Settings, load_settings
from ..storage import Storage, remove_tree
from .options import add_bundle_options, add_wait_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract the rootfs of a .dsk into image/<V>/os-core",
                       description="Read the rootfs partition of a .dsk image directly (no "
                       "mount, loop device or root) and write it to STORAGE/image/<V>/os-core "
                       "(content, links, times) with owners, modes, devices and xattrs in its "
                       "metadata record STORAGE/image/<V>/os-core.meta; with bundles defined, "
                       "their tracking files and STORAGE/image/<V>/os-core.bundles (which "
                       "paths each bundle owns).")
    p.add_argument("--dsk", type=Path, required=True, help="the .dsk image")
    p.add_argument("--layout", type=Path, required=True, help="disk-layout JSON of the image")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--version", type=int, required=True, help="version to extract as (V)")
    p.add_argument("--partition", help="rootfs partition number or name (overrides the JSON)")
    p.add_argument("--force", action="store_true", help="replace an existing image/<V>/os-core")
    p.add_argument("--max-file-size", type=int, default=Settings.max_file_size,
                   help="largest file of the rootfs in bytes, holes included (4 GiB)")
    p.add_argument("--config", type=Path,
                   help="settings YAML whose bundles: are resolved (defaults: "
                        "conf/swupd-repo.yaml)")
    add_bundle_options(p)
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundles.definitions import from_cli
    from ..bundles.tracking import store_split
    from ..dedup import previous_tree_path, share_with_previous
    from ..extract import extract_rootfs
    from ..gpt import find_partition
    from ..layout import load_layout
    from ..pipeline import locked_run, remove_leftovers

    if args.version <= 0:
        raise ExtractError(f"version {args.version} is invalid", hint="pass --version N, N > 0")
    if args.max_file_size < 1:
        raise ExtractError(f"--max-file-size {args.max_file_size} is invalid",
                           hint="pass a size in bytes, at least 1")
    part = load_layout(args.layout).rootfs(args.partition)  # bad input: nothing created
    bundles = load_settings(args.config, {"bundles": from_cli(args.bundle_packages,
                                                              args.bundle_globs)}).bundles
    storage = Storage(args.storage)
    with TqdmReporter() as reporter, locked_run(storage, reporter, wait=args.wait) as run:
        remove_leftovers(storage, run)
        dest = storage.os_core(args.version)
        if dest.exists():
            if args.version in storage.published_versions():
                # Its tree is the history later versions' deltas and checks are made from.
                raise ExtractError(f"{dest} belongs to published version {args.version}",
                                   hint="extract into a new version, or rebuild this one "
                                   "with swupd-repo publish --version V --force")
            if not args.force:
                raise ExtractError(f"{dest} already exists",
                                   hint="pass --force to replace it")
            _discard(dest)
        extent = find_partition(args.dsk, part, run)
        run.info(f"partition {extent.number} ({extent.name or part.key}) of "
                 f"{args.dsk}: {extent.size} bytes at {extent.offset}")
        stats = extract_rootfs(args.dsk, extent.offset, extent.size, dest, run,
                               max_file_size=args.max_file_size,
                               share_with=previous_tree_path(storage, args.version))
        try:
            store_split(dest, bundles, run)
        except BaseException:  # definitions that do not fit the image: store nothing
            _discard(dest)
            with contextlib.suppress(OSError):
                dest.parent.rmdir()  # image/<V>, when nothing else is there
            raise
        share_with_previous(storage, args.version, run)
    print(f"extracted {stats.files} files, {stats.directories} directories, "
          f"{stats.symlinks} symlinks, {stats.hardlinks} hard links into {dest}")
    return 0


def _discard(tree: Path) -> None:
    """``tree`` and what is stored beside it: its record, bundle split and side file of
    hashes."""
    from ..bundles.assignment import assignment_path
    from ..swupd.hashcache import cache_path
    from ..treemeta import record_path

    remove_tree(tree)
    for path in (record_path(tree), assignment_path(tree), cache_path(tree)):
        path.unlink(missing_ok=True)
