"""The update simulation as a child process (see :mod:`.unprivileged`): run under pseudo,
``python3 -m swupd_repo.check.simulation_child ARGS`` prints its findings as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..storage import Storage
from .report import CheckReport


class _StderrReporter:
    """The child's progress, one line each on stderr (the parent relays it)."""

    def step(self, name: str, total: int | None = None) -> None:
        print(name, file=sys.stderr, flush=True)

    def advance(self, amount: int = 1) -> None:
        pass

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from .simulation import simulate

    parser = argparse.ArgumentParser(description="(internal) the update simulation, as a child")
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--from", dest="earlier", type=int, action="append", default=[])
    parser.add_argument("--cert", dest="certs", type=Path, action="append", default=[])
    parser.add_argument("--no-check-time", dest="check_time", action="store_false")
    args = parser.parse_args(argv)
    report = CheckReport(args.version)
    simulate(Storage(args.storage), args.version, args.earlier, report, _StderrReporter(),
             args.certs or None, args.check_time)
    json.dump({"problems": report.problems,
               "simulations": [[s.from_version, s.to_version, s.summary, s.bundles]
                               for s in report.simulations]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
