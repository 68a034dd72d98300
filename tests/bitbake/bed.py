"""The miniature build tree: make a build directory and run one build in its own process.

Used by tests/test_layer.py and scripts/demo. A build directory is what `oe-init-build-env`
makes: conf/bblayers.conf naming the bed's core layer and meta-swupd-repo, conf/local.conf.
Each build runs ``runner.py`` in a subprocess with stdin on /dev/null and its output in
``<builddir>/build-<n>.log`` (bb.build.exec_task needs real file descriptors).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BED = Path(__file__).resolve().parent
REPO = BED.parents[1]
RUNNER = BED / "runner.py"
CORE_LAYER = BED / "meta-test"
LAYER = REPO / "meta-swupd-repo"
MACHINE = "intel-corei7-64"


@dataclass(frozen=True)
class BuildResult:
    returncode: int
    output: str
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def make_builddir(builddir: Path, local_conf: str = "") -> Path:
    """A build directory using the bed's core layer and meta-swupd-repo."""
    conf = builddir / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "bblayers.conf").write_text(
        'BBPATH = "${TOPDIR}"\n'
        'BBFILES ?= ""\n'
        f'BBLAYERS ?= "{CORE_LAYER} {LAYER}"\n'
    )
    (conf / "local.conf").write_text(f'MACHINE ?= "{MACHINE}"\n{local_conf}')
    return builddir


def set_local_conf(builddir: Path, local_conf: str) -> None:
    """Replace the user part of conf/local.conf (what a user edits between builds)."""
    (builddir / "conf" / "local.conf").write_text(f'MACHINE ?= "{MACHINE}"\n{local_conf}')


def bitbake(builddir: Path, target: str | list[str] = "ostro-image", task: str | None = None,
            timeout: float = 300) -> BuildResult:
    """`bitbake [-c task] target...` in a fresh process; output kept in a numbered log."""
    n = len(list(builddir.glob("build-*.log"))) + 1
    log = builddir / f"build-{n}.log"
    targets = [target] if isinstance(target, str) else target
    cmd = [sys.executable, str(RUNNER), "build", "--builddir", str(builddir), *targets]
    if task:
        cmd[3:3] = ["-c", task]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BB", "PSEUDO"))}
    with open(os.devnull) as stdin, open(log, "w") as out:
        proc = subprocess.run(cmd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                              env=env, timeout=timeout, check=False)
    return BuildResult(proc.returncode, log.read_text(), log)
