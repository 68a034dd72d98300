"""Options several commands share, and turning parsed flags into :class:`Settings`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..bundles.definitions import from_cli
from ..settings import BACKENDS, COMPRESSIONS, Settings, load_settings


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Flags that map 1:1 to settings keys (and so to SWUPD_REPO_* variables)."""
    parser.add_argument("--config", type=Path,
                        help="settings YAML (defaults: conf/swupd-repo.yaml)")
    parser.add_argument("--storage", dest="storage_dir", type=Path, required=True,
                        help="storage directory holding image/ and www/")
    parser.add_argument("--backend", choices=BACKENDS, help="backend (native)")
    parser.add_argument("--compression", choices=COMPRESSIONS, help="fullfile compression")
    parser.add_argument("--deltapack-versions", dest="deltapack_versions", type=int,
                        help="earlier versions that get delta packs (2)")
    parser.add_argument("--jobs", type=int,
                        help="at most this many worker processes (0 = one per core); never "
                        "more than the usable cores nor one per 256 MiB of available memory")
    parser.add_argument("--keep-trees", dest="keep_trees", type=int,
                        help="after publishing, prune image trees keeping N newest (0 = all)")
    parser.add_argument("--max-file-size", dest="max_file_size", type=int,
                        help="largest file of the rootfs in bytes, holes included (4 GiB)")
    parser.add_argument("--signing-key", dest="signing_key", type=Path, metavar="PEM",
                        help="private key that signs the manifests and packs (with "
                        "--signing-cert; unsigned without both)")
    parser.add_argument("--signing-cert", dest="signing_cert", type=Path, metavar="PEM",
                        help="certificate of --signing-key, put in the signatures and "
                        "trusted by --check")
    parser.add_argument("--signing-chain", dest="signing_chain", type=Path, metavar="PEM",
                        help="intermediate certificates to include in the signatures")
    parser.add_argument("--signing-passphrase-file", dest="signing_passphrase_file",
                        type=Path, metavar="FILE",
                        help="file holding the passphrase of an encrypted --signing-key")
    parser.add_argument("--docker-image", dest="docker_image",
                        help="image of the docker backend (ostroproject/ostro-swupd-server)")
    parser.add_argument("--docker-host", dest="docker_host",
                        help="Docker engine of the docker backend (default: DOCKER_HOST)")
    parser.add_argument("--docker-command", dest="docker_command",
                        help="command run in the image; the version is appended")
    parser.add_argument("--docker-privileged", dest="docker_privileged",
                        action=argparse.BooleanOptionalAction, default=None,
                        help="run the container privileged (the contract's default: yes)")
    parser.add_argument("--docker-volume", dest="docker_volumes", action="append",
                        metavar="HOST:CONTAINER[:ro]", help="extra volume (repeatable)")
    add_bundle_options(parser)
    parser.add_argument("--check", action="store_const", const=True, default=None,
                        help="check the repository and simulate updates before moving latest")
    parser.add_argument("--force", action="store_const", const=True, default=None,
                        help="rebuild an existing www/<version>")
    parser.add_argument("--stage", dest="release", action="store_const", const=False,
                        default=None, help="publish www/<version> without moving latest: "
                        "devices see it after `swupd-repo release VERSION`")


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """``--bundle-packages``/``--bundle-globs``: bundle definitions (SWUPD_REPO_BUNDLES)."""
    group = parser.add_argument_group(
        "bundles", "Optional content beside os-core, resolved when the rootfs is extracted. "
        "Given on the command line, these replace the bundles of --config.")
    group.add_argument("--bundle-packages", dest="bundle_packages", action="append",
                       metavar="NAME=PKG[,PKG...]",
                       help="bundle NAME owns the files of these packages of the image (from "
                       "the dpkg, opkg or rpm database inside the rootfs); repeatable")
    group.add_argument("--bundle-globs", dest="bundle_globs", action="append",
                       metavar="NAME=GLOB[,GLOB...]",
                       help="bundle NAME owns the paths these globs match (manifest paths: * "
                       "within a name, ** across directories, DIR/** is DIR and all below "
                       "it; quote them); repeatable")


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    """``--no-wait``: fail at once instead of waiting while another run holds the storage."""
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="fail instead of waiting when another run holds the storage "
                        "(waiting prints who holds it and what it is doing)")


def add_version_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--version``/``--version-step``: the version this run makes (default latest + step)."""
    parser.add_argument("--version", dest="os_version", type=int,
                        help=f"version to {verb} (default: latest + step)")
    parser.add_argument("--version-step", dest="version_step", type=int,
                        help="version step (10)")


_KEYS = tuple(f.name for f in dataclasses.fields(Settings))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults, then ``--config``, then the flags given."""
    overrides: dict[str, Any] = {k: getattr(args, k) for k in _KEYS if hasattr(args, k)}
    overrides["bundles"] = from_cli(getattr(args, "bundle_packages", None),
                                    getattr(args, "bundle_globs", None))
    return load_settings(getattr(args, "config", None), overrides)
