"""The reporter a run under the storage lock passes down: the user's reporter, plus the lock.

It forwards everything to the reporter the caller gave (tqdm, BitBake, tests) and:

- writes each step into the lock file, so a run waiting for the lock can say what this one
  is doing (:meth:`~swupd_repo.storage.HeldLock.status`);
- remembers the step, so a full disk is reported as "while writing fullfiles";
- for tests only, pauses where ``SWUPD_REPO_TEST_PAUSE`` says, so a test can SIGKILL the run
  or fill its filesystem at a chosen step without racing it (see :class:`PausePoint`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .progress import Reporter
from .storage import HeldLock

#: ``<text>`` or ``<text>|workers``: pause in the first step whose name contains ``<text>``;
#: at its start, or (``|workers``) at its first progress while worker processes are alive.
PAUSE_VARIABLE = "SWUPD_REPO_TEST_PAUSE"
#: A file whose appearance ends the pause (unset: pause until killed).
RESUME_VARIABLE = "SWUPD_REPO_TEST_RESUME"


@dataclass
class PausePoint:
    """Test hook: stop the run at a chosen step and say so on stderr (``paused at <step>``).

    A production run never sets the variable; the hook then costs one dict lookup per step.
    """

    text: str
    workers: bool
    resume: Path | None
    done: bool = False

    @classmethod
    def from_environment(cls) -> PausePoint | None:
        value = os.environ.get(PAUSE_VARIABLE)
        if not value:
            return None
        text, _, mode = value.partition("|")
        resume = os.environ.get(RESUME_VARIABLE)
        return cls(text, mode == "workers", Path(resume) if resume else None)

    def at(self, step: str | None, starting: bool) -> None:
        if self.done or step is None or self.text not in step:
            return
        if self.workers and not multiprocessing.active_children():
            return
        if not self.workers and not starting:
            return
        self.done = True
        print(f"paused at {step}", file=sys.stderr, flush=True)
        while self.resume is None or not self.resume.exists():
            time.sleep(0.05)


class RunReporter:
    """See the module docstring."""

    def __init__(self, inner: Reporter, lock: HeldLock | None = None) -> None:
        self.inner = inner
        self.lock = lock
        self.current: str | None = None
        self.pause = PausePoint.from_environment()

    def step(self, name: str, total: int | None = None) -> None:
        self.current = name
        if self.lock is not None:
            self.lock.status(name)
        self.inner.step(name, total)
        if self.pause is not None:
            self.pause.at(name, True)

    def advance(self, amount: int = 1) -> None:
        self.inner.advance(amount)
        if self.pause is not None:
            self.pause.at(self.current, False)

    def info(self, message: str) -> None:
        self.inner.info(message)

    def warning(self, message: str) -> None:
        self.inner.warning(message)
