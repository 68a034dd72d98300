"""The ``swupd-repo`` command line: common options, then dispatch to one module per command.

Each module in :mod:`swupd_repo.commands` has ``register(subparsers)`` which adds its parser
and sets ``func(args) -> int``. User errors print one line and exit 2; bugs keep a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import SwupdRepoError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = ("publish", "extract", "build", "record", "prune", "status", "check", "release",
            "revert", "report", "client", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swupd-repo",
        description="Publish swupd format-3 update repositories from Yocto disk images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"swupd_repo.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except SwupdRepoError as exc:
        print(f"swupd-repo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swupd-repo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
