"""``swupd-repo report``: what each version holds and costs the devices that update to it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..storage import Storage, atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="per-version sizes, changes and update costs",
                       description="For every published version: date, files, bytes of "
                       "www/<V>, files changed/added/deleted, deltas and what they saved; for "
                       "every earlier version still served: the bytes and requests a device "
                       "needs to reach the released version, with packs and without. Prints "
                       "a table; --html writes a page with plots that works offline.")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML page here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import collect, to_html, to_json, to_text

    report = collect(Storage(args.storage))
    if args.html is not None:
        atomic_write_text(args.html, to_html(report))
    print(to_json(report) if args.json else to_text(report), end="")
    return 0
