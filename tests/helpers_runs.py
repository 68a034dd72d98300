"""Runs of ``swupd-repo publish`` stopped at a chosen step, and the processes they leave.

The pipeline's test pause point (``SWUPD_REPO_TEST_PAUSE``, :mod:`swupd_repo.runreporter`)
stops a real run at a named step and prints ``paused at <step>``; the test then kills it,
fills its filesystem, or counts its processes, at exactly that step, without racing it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_paused(storage: Path, image: tuple[Path, Path], pause: str,
                 resume: Path | None = None, *extra: str, jobs: int = 2) -> subprocess.Popen:
    """``swupd-repo publish --jobs <jobs>`` of ``image``, in its own process group, stopped
    at ``pause`` (until ``resume`` exists, or for good)."""
    env = {**os.environ, "SWUPD_REPO_TEST_PAUSE": pause}
    if resume is not None:
        env["SWUPD_REPO_TEST_RESUME"] = str(resume)
    dsk, layout = image
    proc = subprocess.Popen(
        [sys.executable, "-m", "swupd_repo.cli", "publish", "--dsk", dsk, "--layout", layout,
         "--storage", storage, "--jobs", str(jobs), *extra],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            proc.wait()
            pytest.fail(f"the run ended before pausing at {pause!r}: {''.join(seen)}")
        seen.append(line)
        if line.startswith("paused at "):
            return proc
    kill_group(proc.pid)
    pytest.fail(f"no pause at {pause!r} in 300 s")


def group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
