"""``swupd-repo check``: repository consistency and update simulation (the release gate)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import StorageError
from ..progress import Reporter, TqdmReporter
from ..storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a repository and simulate every update to a version",
                       description="Check that every published manifest, fullfile and pack is "
                       "consistent, then install each earlier version into a scratch root "
                       "(under TMPDIR), update it over HTTP and compare the result with "
                       "image/<V>/os-core. Holds the storage lock, so it waits for a running "
                       "publish.")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--version", dest="target_version", type=int,
                   help="version to check (default: latest); may be built but not yet latest")
    p.add_argument("--from", dest="from_versions", type=int, nargs="+", action="extend",
                   metavar="V", help="simulate updates from these versions (--from 10 20, "
                   "repeatable; default: every earlier version still in www that devices can "
                   "update from)")
    p.add_argument("--cert", type=Path, help="PEM certificate(s): signatures must verify")
    p.add_argument("--no-check-time", dest="check_time", action="store_false",
                   help="accept expired certificates")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="consistency checks only")
    p.add_argument("--full", dest="trust_stamps", action="store_false",
                   help="verify every fullfile and pack again, even those unchanged since "
                   "their last check")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="fail instead of waiting when another run holds the storage")
    p.set_defaults(func=run)


@contextlib.contextmanager
def locked(storage: Storage, wait: bool, reporter: Reporter) -> Iterator[None]:
    """The storage lock: a backend writing www/<V> while it is read would give false results."""
    if not storage.root.is_dir():
        raise StorageError(f"storage directory {storage.root} does not exist",
                           hint="pass the --storage that holds image/ and www/")
    with storage.lock(wait=wait, notify=reporter.info):  # says whom it waits for
        yield


def run(args: argparse.Namespace) -> int:
    from ..check import check_repository

    certs = [args.cert] if args.cert is not None else None  # signing.verify reads the file
    storage = Storage(args.storage)
    with TqdmReporter() as reporter, locked(storage, args.wait, reporter):
        report = check_repository(storage, args.target_version,
                                  from_versions=args.from_versions, reporter=reporter,
                                  trusted_certs=certs, check_time=args.check_time,
                                  simulate=args.simulate, trust_stamps=args.trust_stamps,
                                  context="standalone")
    for sim in report.simulations:
        print(f"{sim.from_version or 'install'} -> {sim.to_version}: {sim.summary}")
    print(f"check passed: {report.summary()}")
    return 0
