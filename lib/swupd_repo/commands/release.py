"""``swupd-repo release V``: point devices at a staged version (only forward, under the lock)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import TqdmReporter
from ..settings import load_settings
from .options import add_wait_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="move latest to a staged version",
                       description="Move www/version/format3/latest to version V, published "
                       "earlier with --stage (SWUPD_REPO_RELEASE = \"0\"). Only forward; with "
                       "--check (SWUPD_REPO_CHECK) the repository check and update simulation "
                       "to V must pass first.")
    p.add_argument("version", type=int, help="the staged version to release")
    p.add_argument("--storage", dest="storage_dir", type=Path, required=True,
                   help="storage directory holding image/ and www/")
    p.add_argument("--config", type=Path, help="settings YAML (check, signing_cert)")
    p.add_argument("--check", action="store_const", const=True, default=None,
                   help="check the repository and simulate every update to V first")
    p.add_argument("--signing-cert", dest="signing_cert", type=Path,
                   help="with --check: signatures must verify against this certificate")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..release import release

    settings = load_settings(args.config, {"storage_dir": args.storage_dir, "check": args.check,
                                           "signing_cert": args.signing_cert})
    with TqdmReporter() as reporter:
        before = release(settings, args.version, reporter, wait=args.wait)
    print(f"released version {args.version} (devices were on {before})")
    return 0
