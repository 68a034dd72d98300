"""``swupd-repo record``: give trees stored before metadata records existed their record.

Such a tree has its owners, device nodes and xattrs on disk (extracted as root) or only in
the pseudo database of the recipe that extracted it (``[fakeroot]`` ``do_swupd_repo``). It is
still readable where that metadata is visible, but nowhere else. Run this once where it is
visible (as root; or, for a BitBake-made tree, under that recipe's pseudo:
``PSEUDO_LOCALSTATEDIR=<WORKDIR>/pseudo pseudo swupd-repo record --storage DIR``); from then
on any user, recipe or container reads the tree through its record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import StorageError
from ..progress import TqdmReporter
from ..storage import Storage
from .options import add_wait_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="write the metadata record of stored trees lacking one",
                       description="Write STORAGE/image/<V>/os-core.meta for every stored tree "
                       "without one (or only --version V), from the owners, modes, devices "
                       "and xattrs this process sees: run as root, or under the pseudo that "
                       "extracted the tree. Existing records are left alone.")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--version", type=int, help="only this version")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..dedup import stored_trees
    from ..pipeline import locked_run
    from ..treemeta import record_path, write_from_disk

    storage = Storage(args.storage)
    with TqdmReporter() as reporter, locked_run(storage, reporter, wait=args.wait):
        versions = [args.version] if args.version else stored_trees(storage)
        done = 0
        for version in versions:
            tree = storage.os_core(version)
            if not tree.is_dir():
                if args.version:
                    raise StorageError(f"{tree} does not exist",
                                       hint="name a version whose tree is stored")
                continue
            if record_path(tree).exists():
                continue
            count = write_from_disk(tree)
            print(f"recorded {count} paths of {tree} in {record_path(tree)}")
            done += 1
    print(f"{done} tree(s) recorded" if done else "every stored tree has its record")
    return 0
