"""One small progress interface for long steps.

The CLI renders it with tqdm, the bbclass forwards it to BitBake's log, tests use
:class:`NullReporter` or :class:`RecordingReporter`. Library code only ever calls the four
methods of :class:`Reporter`, so it never knows where the progress goes.
"""

from __future__ import annotations

import logging
import sys
from typing import Protocol


class Reporter(Protocol):
    """Where long-running steps report what they are doing."""

    def step(self, name: str, total: int | None = None) -> None:
        """Begin a named step; ``total`` units of work follow (unknown when None)."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units of the current step are done."""

    def info(self, message: str) -> None:
        """A line worth showing to the user."""

    def warning(self, message: str) -> None:
        """Something the user should look at; the run goes on."""


class NullReporter:
    """Drops everything; for library callers that want silence."""

    def step(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


class RecordingReporter:
    """Keeps every call, so tests can assert what a user would have seen."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None]] = []
        self.advanced: int = 0
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def step(self, name: str, total: int | None = None) -> None:
        self.steps.append((name, total))

    def advance(self, amount: int = 1) -> None:
        self.advanced += amount

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)


class LoggingReporter:
    """Reports through :mod:`logging`, with a line every ``every_percent`` of a step."""

    def __init__(self, logger: logging.Logger | None = None, every_percent: int = 10) -> None:
        self._log = logger or logging.getLogger("swupd_repo")
        self._every = max(1, every_percent)
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._last_pct = -1

    def step(self, name: str, total: int | None = None) -> None:
        self._name, self._total, self._done, self._last_pct = name, total, 0, -1
        self._log.info("%s%s", name, f" ({total})" if total else "")

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        if not self._total:
            return
        pct = min(100, self._done * 100 // self._total)
        if pct // self._every > self._last_pct // self._every or pct == 100 > self._last_pct:
            self._last_pct = pct
            self._log.info("%s: %d%% (%d/%d)", self._name, pct, self._done, self._total)

    def info(self, message: str) -> None:
        self._log.info("%s", message)

    def warning(self, message: str) -> None:
        self._log.warning("%s", message)


class TqdmReporter:
    """Progress bars on a terminal (stderr); plain lines when stderr is not a TTY."""

    def __init__(self) -> None:
        self._bar = None
        self._tty = sys.stderr.isatty()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def step(self, name: str, total: int | None = None) -> None:
        from tqdm import tqdm

        self._close()
        self._bar = tqdm(total=total, desc=name, unit="", file=sys.stderr, disable=not self._tty,
                         leave=True, dynamic_ncols=True)
        if not self._tty:
            print(f"{name}{f' ({total})' if total else ''}", file=sys.stderr)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def info(self, message: str) -> None:
        self._close()
        print(message, file=sys.stderr)

    def warning(self, message: str) -> None:
        self._close()
        print(f"warning: {message}", file=sys.stderr)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> TqdmReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
