"""``swupd-repo prune``: remove the stored trees (``image/<V>``) no future build reads.

See :mod:`swupd_repo.prune` for what is kept and why the delta packs stay the same. With
``--www-before V`` it retires old versions from ``www/`` instead (:mod:`swupd_repo.retire`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SettingsError, StorageError
from ..progress import TqdmReporter
from ..settings import Settings
from ..storage import Storage
from .options import add_wait_option, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="remove stored image trees no future build needs",
                       description="Remove STORAGE/image/<V> trees that no future build reads: "
                       "latest, the change points delta packs start from and trees not yet "
                       "published are always kept. Under the storage lock; an interrupted "
                       "prune leaves whole trees (leftovers are removed by the next run).")
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--storage", dest="storage_dir", type=Path, required=True,
                   help="storage directory")
    p.add_argument("--keep", type=int,
                   help="also keep this many newest trees (default: keep_trees, at least 1)")
    p.add_argument("--deltapack-versions", dest="deltapack_versions", type=int,
                   help="delta packs per bundle the next builds make (default: the settings')")
    p.add_argument("--www-before", dest="www_before", type=int, metavar="V",
                   help="instead of trees, retire www/<X> for every X < V: its files, deltas "
                   "and packs go, its manifests stay (devices on X still update); refused "
                   "unless a released rebase version >= V exists")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would go and the bytes it would free; change nothing")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..prune import prune

    settings = settings_from_args(args)
    if args.www_before is not None and args.keep is not None:
        raise SettingsError("--keep applies to the trees and --www-before to www/: one prune "
                            "does one of them",
                            hint="run prune --keep N and prune --www-before V separately")
    keep = args.keep if args.keep is not None else max(settings.keep_trees, 1)
    if keep < 1:
        raise SettingsError(f"--keep {keep} would not keep the latest tree",
                            hint="pass --keep 1 or more")
    assert settings.storage_dir is not None
    storage = Storage(settings.storage_dir)
    if not storage.root.is_dir():  # a mistyped path: not made into an empty storage
        raise StorageError(f"storage directory {storage.root} does not exist",
                           hint="pass the --storage that holds image/ and www/")
    if args.www_before is not None:
        return _retire(storage, args, settings)
    with TqdmReporter() as reporter:
        result = prune(storage, keep=keep, deltapack_versions=settings.deltapack_versions,
                       dry_run=args.dry_run, reporter=reporter, wait=args.wait)
    verb = "would remove" if args.dry_run else "removed"
    for version in result.remove:
        print(f"{verb} {storage.image(version)}")
    for version, why in sorted(result.keep.items()):
        print(f"kept {storage.image(version)}: {why}")
    print(f"{verb} {len(result.remove)} tree(s), {result.freed_bytes} bytes")
    return 0


def _retire(storage: Storage, args: argparse.Namespace, settings: Settings) -> int:
    from ..retire import retire

    if args.www_before < 1:
        raise SettingsError(f"--www-before {args.www_before} is not a version",
                            hint="pass the rebase version (or one before it)")
    with TqdmReporter() as reporter:
        result = retire(storage, args.www_before, dry_run=args.dry_run, reporter=reporter,
                        wait=args.wait, report=settings.report)
    verb = "would retire" if args.dry_run else "retired"
    for version in result.versions:
        names = ", ".join(p.name for p in result.content[version])
        print(f"{verb} {storage.www(version)}: {names} (its manifests stay)")
    print(f"{verb} {len(result.versions)} version(s) before {result.before} from www/ "
          f"(rebase version {result.rebase}), {result.freed_bytes} bytes")
    return 0
