"""The update simulation where this process cannot set owners: in a child under pseudo.

The simulated install lays down the image's owners, device nodes and ``security.*`` xattrs,
as the client does on a device. A process that may not chown (a BitBake task: a user
namespace mapping only the build user; any ordinary user) runs the simulation in a child
process under pseudo instead, with a private database and ``PSEUDO_INCLUDE_PATHS`` set to the
scratch directory, so pseudo fakes exactly the scratch roots and nothing else (the storage is
only read, its metadata comes from its records). The pseudo command is the build's own
(``FAKEROOTCMD``/``FAKEROOTENV``, which ``swupd_repo.bitbake`` passes in :data:`PSEUDO_VAR`
and :data:`PSEUDO_ENV_VAR`), or ``pseudo`` on PATH.

The child is :mod:`.simulation_child`: it runs :func:`~.simulation.simulate` and prints the
problems and simulations as JSON.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckError
from ..progress import Reporter
from ..storage import Storage
from .report import CheckReport, Simulation

#: The pseudo command (shell words) and its environment ("K=V K=V"), as BitBake has them.
PSEUDO_VAR = "SWUPD_REPO_PSEUDO"
PSEUDO_ENV_VAR = "SWUPD_REPO_PSEUDO_ENV"


def can_set_owners(directory: Path) -> bool:
    """Whether this process may give a file another owner (a probe in ``directory``)."""
    probe = directory / ".owner-probe"
    probe.touch()
    try:
        os.lchown(probe, 1, 1)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EINVAL):
            return False
        raise
    finally:
        probe.unlink()
    return True


def pseudo_command() -> tuple[list[str], dict[str, str]] | None:
    """(command, environment additions) of the pseudo to use, or None when there is none."""
    words = shlex.split(os.environ.get(PSEUDO_VAR, ""))
    if not words:
        found = shutil.which("pseudo")
        if found is None:
            return None
        words = [found]
    env = {}
    for item in shlex.split(os.environ.get(PSEUDO_ENV_VAR, "")):
        key, _, value = item.partition("=")
        env[key] = value
    return words, env


def simulate_under_pseudo(storage: Storage, version: int, earlier: list[int],
                          report: CheckReport, rep: Reporter,
                          trusted_certs: Sequence[Any] | None, check_time: bool,
                          scratch: Path) -> None:
    """Run the simulation in a child under pseudo; its findings go into ``report``."""
    found = pseudo_command()
    if found is None:
        raise CheckError("the update simulation must set owners in its scratch roots, and "
                         "this process may not chown nor find pseudo",
                         hint="run the check as root, or put pseudo on PATH")
    words, extra = found
    state = scratch / "pseudo"
    state.mkdir()
    roots = scratch / "roots"
    roots.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSEUDO_")}
    env.update(extra)
    env.update(PSEUDO_LOCALSTATEDIR=str(state), PSEUDO_INCLUDE_PATHS=str(roots),
               PSEUDO_DISABLED="0", TMPDIR=str(roots))
    env.pop("PSEUDO_IGNORE_PATHS", None)
    env.pop("PSEUDO_UNLOAD", None)
    library = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (library, env.get("PYTHONPATH")) if p)
    cmd = [*words, sys.executable, "-m", "swupd_repo.check.simulation_child",
           "--storage", str(storage.root), "--version", str(version),
           *[arg for v in earlier for arg in ("--from", str(v))],
           *[arg for c in trusted_certs or () for arg in ("--cert", os.fspath(c))],
           *([] if check_time else ["--no-check-time"])]
    rep.info("running the update simulation under pseudo (this process may not set owners)")
    try:
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            subprocess.run([*words, "-S"], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, check=False)
    for line in done.stderr.splitlines():
        rep.info(f"simulation: {line}")
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise CheckError(f"the update simulation under {words[0]} failed (exit status "
                         f"{done.returncode}): {done.stderr.strip()[-400:]}",
                         hint="see the messages above") from None
    report.problems.extend(result["problems"])
    report.simulations.extend(Simulation(*s) for s in result["simulations"])
