"""``swupd-repo build``: publish ``www/<V>`` from an ``image/<V>/os-core`` already in storage."""

from __future__ import annotations

import argparse

from ..progress import TqdmReporter
from .options import add_settings_options, add_version_options, add_wait_option, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="publish www/<V> from STORAGE/image/<V>/os-core",
                       description="Generate the swupd format-3 repository of version V "
                       "(manifests, fullfiles, packs, deltas) from the rootfs already in "
                       "STORAGE/image/<V>/os-core, then move the latest markers to V.")
    add_settings_options(p)
    add_version_options(p, "build")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import build_version

    settings = settings_from_args(args)
    with TqdmReporter() as reporter:
        version = build_version(settings, reporter, settings.os_version, wait=args.wait)
    verb = "published" if settings.release else "staged"
    print(f"{verb} version {version} in {settings.storage_dir}/www/{version}")
    return 0
