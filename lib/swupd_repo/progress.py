"""One small progress interface for long steps.

The CLI renders it with tqdm, the bbclass forwards it to BitBake's log, tests use
:class:`NullReporter` or :class:`RecordingReporter`. Library code only ever calls the four
methods of :class:`Reporter`, so it never knows where the progress goes.
"""

from __future__ import annotations

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

    def __enter__(self) -> TqdmReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
