"""``swupd-repo revert --to V``: publish version V's tree again, as the next version."""

from __future__ import annotations

import argparse

from ..progress import TqdmReporter
from .options import (
    add_settings_options,
    add_version_options,
    add_wait_option,
    settings_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("revert", help="publish an earlier version's tree as a new version",
                       description="Copy STORAGE/image/<V>/os-core to a new version N (latest "
                       "+ step unless --version), make its os-release say N and publish it "
                       "like any build: devices move back to V's content by a normal update.")
    p.add_argument("--to", dest="to_version", type=int, required=True,
                   help="the published version whose content to bring back")
    add_settings_options(p)
    add_version_options(p, "publish the reverted tree as")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..release import revert

    settings = settings_from_args(args)
    with TqdmReporter() as reporter:
        version = revert(settings, args.to_version, reporter, wait=args.wait)
    verb = "published" if settings.release else "staged"
    print(f"{verb} version {version} with the content of version {args.to_version}")
    return 0
