"""``swupd-repo publish``: the whole job outside BitBake (extract, build, check, markers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import TqdmReporter
from .options import (
    add_bundle_options,
    add_settings_options,
    add_version_options,
    add_wait_option,
    settings_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="extract a .dsk rootfs and publish it as the next version",
                       description="Extract the rootfs partition of a .dsk image into "
                       "STORAGE/image/<V>/os-core and publish www/<V> (V = latest + step "
                       "unless --version).")
    add_settings_options(p)
    p.add_argument("--dsk", dest="disk_image", type=Path, required=True, help="the .dsk image")
    p.add_argument("--layout", dest="disk_layout", type=Path, required=True,
                   help="disk-layout JSON of the image")
    p.add_argument("--partition", help="rootfs partition number or name (overrides the JSON)")
    add_bundle_options(p)
    add_version_options(p, "publish")
    add_wait_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import publish

    settings = settings_from_args(args)
    with TqdmReporter() as reporter:
        version = publish(settings, reporter, wait=args.wait)
    www = Path(settings.storage_dir) / "www"
    verb = "published" if settings.release else "staged"
    print(f"{verb} version {version}: serve {www} (swupd-repo serve --storage "
          f"{settings.storage_dir})")
    return 0
