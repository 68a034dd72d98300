"""``swupd-repo serve``: serve www/ for devices, or print the equivalent nginx server block."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import StorageError
from ..storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve STORAGE/www over HTTP (concurrent, cache-aware)",
                       description="Serve the repository with ranges, ETag/Last-Modified, "
                       "no-cache on version/*/latest and year-long caching of version "
                       "directories. For production behind nginx, use --print-nginx-config.")
    p.add_argument("--storage", type=Path, required=True, help="storage directory")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000,
                   help="TCP port (8000; 0 takes a free one: the URL is printed at start)")
    p.add_argument("--list-directories", action="store_true",
                   help="answer directory requests with a listing instead of 404")
    p.add_argument("--print-nginx-config", action="store_true",
                   help="print an equivalent nginx server block and exit")
    p.add_argument("--quiet", action="store_true", help="no access log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import nginx_config
    from ..serve import run as serve

    www = Storage(args.storage).www_dir
    if args.print_nginx_config:
        print(nginx_config(www, args.bind, args.port, list_directories=args.list_directories),
              end="")
        return 0
    if not www.is_dir():
        raise StorageError(f"{www} does not exist", hint="publish a version first, or pass the "
                           "storage directory that holds www/")
    serve(www, args.bind, args.port, list_directories=args.list_directories,
          access_log=not args.quiet)
    return 0
