#!/usr/bin/env python3
"""``swupd-repo serve`` beside ``python -m http.server`` under a burst of devices.

    python3 benchmarks/bench_serve.py [--clients 200] [--fullfiles 50] [--timeout 120]

Serves tests/data/vectors/basic/www with each server in its own process on 127.0.0.1 and runs
the same load against both: N concurrent clients, each on its own connection, fetching
``version/format3/latest``, a MoM and F fullfiles, every body compared with the file on disk.
Prints one line per server: correct responses, failures (resets, timeouts, wrong bodies),
wall time and throughput. The load generator is the one ``tests/test_serve.py`` asserts with
(``tests/helpers_load.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "data" / "vectors" / "basic"
sys.path.insert(0, str(REPO / "tests"))

from helpers_load import (  # noqa: E402
    http_server,
    run_load,
    start_server,
    stop_server,
    swupd_repo_serve,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--fullfiles", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    www = VECTORS / "www"
    servers = {"swupd-repo serve": swupd_repo_serve(VECTORS),
               "python -m http.server": http_server(www)}
    print(f"{args.clients} clients x (latest + MoM + {args.fullfiles} fullfiles) = "
          f"{args.clients * (args.fullfiles + 2)} requests on 127.0.0.1")
    for name, argv in servers.items():
        proc, url = start_server(argv)
        try:
            result = run_load(url, www, args.clients, args.fullfiles, args.timeout)
            line = result.line()
            if result.errors:
                kinds = sorted({e.split(": ", 1)[1].split(":")[0] for e in result.errors})
                line += f" [{', '.join(kinds)[:160]}]"
        finally:
            stop_server(proc)
        print(f"{name:24} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
