"""``swupd-repo check``: repository consistency and update simulation (the release gate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import TqdmReporter
from ..storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a repository and simulate every update to a version",
                       description="Check that every published manifest, fullfile and pack is "
                       "consistent, then install each earlier version into a scratch root, "
                       "update it over HTTP and compare the result with image/<V>/os-core.")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--version", dest="target_version", type=int,
                   help="version to check (default: latest); may be built but not yet latest")
    p.add_argument("--from", dest="from_versions", type=int, action="append",
                   help="simulate updates from this version (repeatable; default: every "
                   "earlier version still in www)")
    p.add_argument("--cert", type=Path, help="PEM certificate(s): signatures must verify")
    p.add_argument("--no-check-time", dest="check_time", action="store_false",
                   help="accept expired certificates")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="consistency checks only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..check import check_repository

    certs = [args.cert] if args.cert is not None else None  # signing.verify reads the file
    reporter = TqdmReporter()
    try:
        report = check_repository(Storage(args.storage), args.target_version,
                                  from_versions=args.from_versions, reporter=reporter,
                                  trusted_certs=certs, check_time=args.check_time,
                                  simulate=args.simulate)
    finally:
        reporter.close()
    for sim in report.simulations:
        print(f"{sim.from_version or 'install'} -> {sim.to_version}: {sim.summary}")
    print(f"check passed: {report.summary()}")
    return 0
