"""A small `bitbake <recipe>` over the real BitBake library, imitating bitbake-worker.

The PyPI ``bitbake-setup`` package ships BitBake's ``bb`` (parser, datastore, signature
generator, ``bb.build``) but neither ``bin/bitbake`` nor ``bitbake-worker``. This runner is the
part of both that the layer's behaviour depends on, so a class that works here works there:

* configuration parsed by ``bb.cookerdata.CookerDataBuilder`` (bblayers.conf, every
  layer.conf with ``addpylib``, bitbake.conf, base.bbclass), the recipe by ``parseRecipe``;
* task order from ``__BBTASKS`` and each task's ``deps``; signatures by the configured
  ``bb.siggen`` generator (basichash); a task whose stamp matches its signature is skipped,
  as BitBake skips it;
* one forked child per task, which re-parses the recipe like the worker does; tasks without
  ``[network]`` run after ``bb.utils.disable_network`` (a new user and network namespace,
  where even root cannot chown, mknod or set ``security.*`` xattrs), and the bed refuses to
  run a task when that namespace could not be made, instead of silently running as root;
* the task's environment is what the worker leaves: the exported variables only (plus
  FAKEROOTENV), not the shell's, which BitBake keeps in ``BB_ORIGENV``;
* ``[fakeroot]`` tasks in a second worker process started under ``FAKEROOTCMD`` (pseudo) with
  ``FAKEROOTBASEENV``/``FAKEROOTENV``, as runqueue starts the fakeroot worker; OE-core's
  pseudo (5.3+) fakes owners only below ``PSEUDO_INCLUDE_PATHS``, Debian's ignores that
  variable, so the bed refuses a ``[fakeroot]`` task that would set owners elsewhere
  (:func:`pseudo_uncovered`) as OE-core's pseudo would make it fail;
* every recipe in ``BBFILES`` is parsed before anything runs, like the cooker: a recipe that
  raises ``bb.parse.SkipRecipe`` is skipped with its reason (asking to build it is an error
  naming the reason), any other parse error halts the whole build;
* several targets build one after the other (BitBake may run them in parallel; their
  ``[lockfiles]`` serialize what must be);
* log records and progress events of a task are forwarded to the build's output (the
  worker's event pipe), the task log is written by ``bb.build.exec_task`` itself.

Usage (one build per process; stdin must be a real file descriptor, e.g. /dev/null)::

    python3 tests/bitbake/runner.py build --builddir BUILD ostro-image
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# hashserv/prserv are imported by bb.siggen/bb.cooker but not shipped on PyPI.
sys.path.insert(0, str(HERE / "stubs"))

import bb  # noqa: E402
import bb.build  # noqa: E402
import bb.cookerdata  # noqa: E402
import bb.data  # noqa: E402
import bb.event  # noqa: E402
import bb.msg  # noqa: E402
import bb.parse  # noqa: E402
import bb.utils  # noqa: E402

logger = logging.getLogger("BitBake")


class BuildFailed(Exception):
    """A task failed; the message says which and where its log is."""


def setup_logging(output=None) -> None:
    bb.msg.init_msgconfig(False, 0, [])
    bb.msg.logger_create("BitBake", output or sys.stdout, color="never")


def parse_configuration(builddir: Path) -> bb.cookerdata.CookerDataBuilder:
    """bblayers.conf, layer.conf files, bitbake.conf and base.bbclass, as the cooker does."""
    os.chdir(builddir)
    config = bb.cookerdata.CookerConfiguration()
    config.env = dict(os.environ)
    builder = bb.cookerdata.CookerDataBuilder(config, worker=False)
    builder.parseBaseConfiguration()
    return builder


def recipes(data) -> dict[str, tuple[str, str]]:
    """PN -> (recipe file, layer name) of every recipe in BBFILES."""
    import glob
    import re

    found = {}
    for pattern in (data.getVar("BBFILES") or "").split():
        for fn in sorted(glob.glob(pattern)):
            layername = ""
            for collection in (data.getVar("BBFILE_COLLECTIONS") or "").split():
                regex = data.getVar("BBFILE_PATTERN_" + collection)
                if regex and re.match(regex, fn):
                    layername = collection
            found[bb.parse.vars_from_file(fn, data)[0]] = (fn, layername)
    return found


def find_recipe(data, target: str) -> tuple[str, str]:
    """(recipe file, layer name) of ``target`` among BBFILES."""
    found = recipes(data).get(target)
    if found is None:
        raise BuildFailed(f"Nothing PROVIDES '{target}'")
    return found


def parse_all(builder) -> dict[str, str]:
    """Parse every recipe as the cooker does; PN -> reason of the skipped ones.

    A skipped recipe (``bb.parse.SkipRecipe``) does not stop the others; any other error
    does, as BitBake's "Parsing halted" does.
    """
    skipped = {}
    for pn, (fn, layername) in recipes(builder.data).items():
        try:
            d = builder.parseRecipe(fn, [], layername)
        except bb.BBHandledException:
            logger.error("Parsing halted due to errors, see error messages above")
            raise
        reason = d.getVar("__SKIPPED")  # bb.parse.ast records a SkipRecipe so, as the cache
        if reason:
            skipped[pn] = str(reason)
    return skipped


#: What a [fakeroot] task of the bed's recipes sets owners, devices and xattrs in, beyond
#: its [cleandirs]: the variable naming it.
PSEUDO_WRITES = {"do_swupd_repo": "SWUPD_REPO_STORAGE_DIR"}


def pseudo_uncovered(d, task: str) -> list[str]:
    """Where ``task`` sets owners but OE-core's pseudo would not fake them.

    OE-core 5.3+ pseudo tracks a path only when it starts with one of the comma-separated
    PSEUDO_INCLUDE_PATHS (a plain string prefix, as pseudo compares); elsewhere chown, mknod
    and setxattr reach the kernel and fail in the task's user namespace ("Invalid
    argument"). Debian's pseudo 1.9.0 tracks every path, so the bed checks this itself.
    """
    include = [p for p in (d.getVar("PSEUDO_INCLUDE_PATHS") or "").split(",") if p]
    targets = (d.getVarFlag(task, "cleandirs") or "").split()
    if task in PSEUDO_WRITES:
        targets.append(d.getVar(PSEUDO_WRITES[task]) or "")
    return [t for t in targets if t and not any(
        os.path.normpath(t).startswith(os.path.normpath(p)) for p in include)]


def task_order(d, target: str) -> list[str]:
    """Tasks ``target`` needs, dependencies first (from __BBTASKS and the deps flags)."""
    tasks = set(d.getVar("__BBTASKS", False) or [])
    order: list[str] = []
    seen: set[str] = set()

    def visit(task: str) -> None:
        if task in seen:
            return
        seen.add(task)
        for dep in d.getVarFlag(task, "deps", False) or []:
            if dep in tasks:
                visit(dep)
        order.append(task)

    visit(target)
    return order


def compute_taskhashes(fn: str, d, order: list[str]) -> dict[str, str]:
    """Task hashes from the recipe's base hashes, as runqueue computes them."""
    import types

    siggen = bb.parse.siggen
    siggen.setup_datacache_from_datastore(fn, d)
    cache = siggen.datacaches[""]
    tasks = d.getVar("__BBTASKS", False) or []
    cache.basetaskhash = {f"{fn}:{t}": h
                          for t, h in (d.getVar("__siggen_basehashes", False) or {}).items()}
    cache.pkg_fn = {fn: d.getVar("PN")}
    cache.file_checksums = {fn: {t: d.getVarFlag(t, "file-checksums") for t in tasks
                                 if d.getVarFlag(t, "file-checksums")}}
    cache.task_deps = {fn: d.getVar("_task_deps", False) or {}}
    caches = {"": cache}
    assert isinstance(cache, types.SimpleNamespace)
    hashes = {}
    for task in order:
        tid = f"{fn}:{task}"
        deps = [f"{fn}:{dep}" for dep in d.getVarFlag(task, "deps", False) or [] if dep in tasks]
        siggen.prep_taskhash(tid, deps, caches)
        hashes[task] = siggen.get_taskhash(tid, deps, caches)
    return hashes


def task_flags(d, flag: str) -> dict:
    """Tasks carrying ``flag``, as bb.build.add_tasks records them (what runqueue reads)."""
    return (d.getVar("_task_deps", False) or {}).get(flag, {})


def has_network(d, task: str) -> bool:
    """The task's [network] flag as bitbake-worker reads it: expanded, then to_boolean."""
    return bool(bb.utils.to_boolean(d.getVarFlag(task, "network")))


def task_environment(d, fakeroot: bool) -> None:
    """os.environ of the task, as bitbake-worker sets it: the exported variables only.

    (plus FAKEROOTENV in a fakeroot task). What the user's shell had, DOCKER_HOST for one,
    is not there; BitBake keeps it in BB_ORIGENV.
    """
    exports = bb.data.exported_vars(d)
    fakeenv = {}
    if fakeroot:
        for item in (d.getVar("FAKEROOTENV") or "").split():
            key, _, value = item.partition("=")
            fakeenv[key] = value
    bb.utils.empty_environment()
    for key, value in exports:
        os.environ[key] = value
    for key, value in fakeenv.items():
        os.environ[key] = value
        d.setVar(key, value)
        d.setVarFlag(key, "export", "1")


def real_ids() -> tuple[int, int]:
    """The real uid/gid, from the kernel (pseudo fakes getuid() inside fakeroot workers)."""
    ids = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = int(value.split()[0])
    return ids["Uid"], ids["Gid"]


def fork_task(builder, fn: str, layername: str, task: str, target: str, network: bool) -> int:
    """Run one task in a forked child, as bitbake-worker's fork_off_task does; its exit code."""
    uid, gid = real_ids()
    outer_ns = os.readlink("/proc/self/ns/user")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    code = 1
    try:
        code = _child(builder, fn, layername, task, target, network, uid, gid, outer_ns)
    except BaseException as exc:  # the child must never return into the parent's code
        print(f"ERROR: {fn}:{task}: worker failure: {exc!r}", flush=True)
    finally:
        sys.stdout.flush()
        os._exit(code)


def _child(builder, fn, layername, task, target, network, uid, gid, outer_ns) -> int:
    os.umask(0o022)
    if not network:
        bb.utils.disable_network(uid, gid)
        if os.readlink("/proc/self/ns/user") == outer_ns:
            print(f"ERROR: {fn}:{task}: the test bed could not create a user namespace "
                  "(unshare(CLONE_NEWUSER) refused); refusing to run the task as real root",
                  flush=True)
            return 1
    # The worker parses the recipe again in the task's process: anonymous python sees
    # the task's namespace and the storage as it is now.
    d = builder.parseRecipe(fn, [], layername)
    order = task_order(d, target)
    compute_taskhashes(fn, d, order if task in order else [*order, task])
    task_environment(d, task in task_flags(d, "fakeroot"))

    ui = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    formatter = bb.msg.BBLogFormatter("%(levelname)s: %(message)s")

    def worker_fire(event, data) -> None:
        if isinstance(event, logging.LogRecord):
            if event.levelno >= bb.msg.BBLogFormatter.NOTE:
                ui.write(formatter.format(event) + "\n")
        elif isinstance(event, bb.build.TaskProgress):
            ui.write(f"PROGRESS: {task}: {event.progress}%\n")

    bb.event.worker_fire = worker_fire
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(bb.event.LogHandler())
    return bb.build.exec_task(fn, task, d)


def fakeroot_env(data) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("FAKEROOTBASEENV", "FAKEROOTENV"):
        for item in (data.getVar(var) or "").split():
            key, _, value = item.partition("=")
            env[key] = value
    return env


def run_fakeroot_task(builder, d, builddir: Path, fn: str, layername: str, task: str,
                      target: str) -> int:
    """Start the fakeroot worker under FAKEROOTCMD (pseudo) and let it fork the task."""
    for directory in (d.getVar("FAKEROOTDIRS") or "").split():
        bb.utils.mkdirhier(directory)
    cmd = [d.getVar("FAKEROOTCMD"), sys.executable, str(Path(__file__).resolve()), "worker",
           "--builddir", str(builddir), "--recipe", fn, "--layer", layername, "--task", task,
           *(["--network"] if has_network(d, task) else []), target]
    sys.stdout.flush()
    return subprocess.run(cmd, env=fakeroot_env(d), stdin=sys.stdin, stdout=sys.stdout,
                          stderr=sys.stderr).returncode


def stop_pseudo(d) -> None:
    """Shut the pseudo server of the recipe down, as BitBake does at the end of a build."""
    state = d.getVar("PSEUDO_LOCALSTATEDIR")
    if state and Path(state).is_dir():
        subprocess.run([d.getVar("FAKEROOTCMD"), "-S"], env=fakeroot_env(d),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def build(builddir: Path, targets: list[str], only_task: str | None = None) -> dict:
    """`bitbake targets...` (or `bitbake -c task targets...`); a summary of what ran."""
    builder = parse_configuration(builddir)
    skipped = parse_all(builder)
    for target in targets:
        if target in skipped:
            raise BuildFailed(f"Nothing PROVIDES '{target}' ({target} was skipped: "
                              f"{skipped[target]})")
    summary: dict = {}
    for target in targets:
        summary[target] = build_one(builder, builddir, target, only_task)
    return summary


def build_one(builder, builddir: Path, target: str, only_task: str | None) -> dict:
    """One target's tasks, dependencies first, skipping those whose stamp matches."""
    data = builder.data
    fn, layername = find_recipe(data, target)
    d = builder.parseRecipe(fn, [], layername)
    goal = "do_" + (only_task or (d.getVar("BB_DEFAULT_TASK") or "build"))
    order = task_order(d, goal)
    hashes = compute_taskhashes(fn, d, order)
    summary: dict = {"recipe": fn, "tasks": {}, "hashes": hashes}
    try:
        for task in order:
            stamp = bb.parse.siggen.stampfile_mcfn(task, fn)
            if d.getVarFlag(task, "nostamp", False) is None and os.path.exists(stamp):
                summary["tasks"][task] = "stamp"
                continue
            if d.getVarFlag(task, "noexec", False):
                bb.build.make_stamp_mcfn(task, fn)
                summary["tasks"][task] = "noexec"
                continue
            logger.info("Running task %s:%s", fn, task)
            uncovered = pseudo_uncovered(d, task) if task in task_flags(d, "fakeroot") else []
            if uncovered:
                logger.error("%s:%s is [fakeroot] but sets owners in %s, outside "
                             "PSEUDO_INCLUDE_PATHS: OE-core's pseudo does not fake them there "
                             "(chown, mknod and setxattr fail with Invalid argument)",
                             fn, task, ", ".join(uncovered))
                code = 1
            elif task in task_flags(d, "fakeroot"):
                code = run_fakeroot_task(builder, d, builddir, fn, layername, task, goal)
            else:
                code = fork_task(builder, fn, layername, task, goal,
                                 has_network(d, task))
            summary["tasks"][task] = "ok" if code == 0 else f"failed ({code})"
            if code != 0:
                log = Path(d.getVar("T")) / f"log.{task}"
                logger.error("Task (%s:%s) failed with exit code '%s'", fn, task, code)
                raise BuildFailed(f"{task} failed, log: {log}")
    finally:
        stop_pseudo(d)
    return summary


def parse_report(builddir: Path, target: str) -> dict:
    """What the parser made of the recipe: warnings, signatures, the class's settings.

    The recipe is parsed twice in this process; BitBake's signature generator reports an
    error when a task's base hash differs between the two parses (non-deterministic metadata).
    """
    import dataclasses

    problems: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                problems.append(f"{record.levelname}: {record.getMessage()}")

    logger.addHandler(Collect())
    builder = parse_configuration(builddir)
    fn, layername = find_recipe(builder.data, target)
    d = builder.parseRecipe(fn, [], layername)
    again = builder.parseRecipe(fn, [], layername)
    import swupd_repo.bitbake

    settings = swupd_repo.bitbake.settings_from_datastore(d)
    return {
        "problems": problems,
        "basehashes": d.getVar("__siggen_basehashes", False),
        "basehashes_again": again.getVar("__siggen_basehashes", False),
        "taskdeps": {t: sorted(v) for t, v in d.getVar("__siggen_taskdeps", False).items()},
        "tasks": list(d.getVar("__BBTASKS", False)),
        "order": task_order(d, "do_build"),
        "fakeroot": sorted(task_flags(d, "fakeroot")),
        "pseudo_uncovered": {t: pseudo_uncovered(d, t) for t in task_flags(d, "fakeroot")},
        "lockfiles": d.getVarFlag("do_swupd_repo", "lockfiles"),
        "network": [t for t in d.getVar("__BBTASKS", False) if has_network(d, t)],
        "os_version": d.getVar("OS_VERSION"),
        "rootfs_postprocess": d.getVar("ROOTFS_POSTPROCESS_COMMAND"),
        "config_parsed_handler": builder.data.getVar("BB_BED_CONFIG_PARSED"),
        "sys_path": sys.path,
        "settings": {k: (list(v) if isinstance(v, tuple) else None if v is None else
                         v if isinstance(v, (bool, int)) else str(v))
                     for k, v in dataclasses.asdict(settings).items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build a recipe's default task (or -c TASK)")
    p_build.add_argument("--builddir", type=Path, required=True)
    p_build.add_argument("-c", "--cmd", dest="task", help="run this task (and its dependencies)")
    p_build.add_argument("--summary", type=Path, help="write what ran as JSON here")
    p_build.add_argument("target", nargs="+")
    p_parse = sub.add_parser("parse", help="parse only; print a JSON report")
    p_parse.add_argument("--builddir", type=Path, required=True)
    p_parse.add_argument("target")
    p_worker = sub.add_parser("worker", help="(internal) the fakeroot worker for one task")
    p_worker.add_argument("--builddir", type=Path, required=True)
    p_worker.add_argument("--recipe", required=True)
    p_worker.add_argument("--layer", default="")
    p_worker.add_argument("--task", required=True)
    p_worker.add_argument("--network", action="store_true", help="the task has [network]")
    p_worker.add_argument("target")
    args = parser.parse_args(argv)
    setup_logging(sys.stderr if args.command == "parse" else None)
    if args.command == "parse":
        print(json.dumps(parse_report(args.builddir.resolve(), args.target), indent=1))
        return 0
    if args.command == "worker":
        builder = parse_configuration(args.builddir.resolve())
        return fork_task(builder, args.recipe, args.layer, args.task, args.target, args.network)
    try:
        summary = build(args.builddir.resolve(), args.target, args.task)
    except BuildFailed as exc:
        logger.error("%s", exc)
        if args.summary:
            args.summary.write_text(json.dumps({"error": str(exc)}))
        return 1
    except bb.BBHandledException:
        logger.error("parsing failed")
        return 1
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1))
    for target, ran in summary.items():
        logger.info("Tasks of %s: %s", target,
                    ", ".join(f"{t} {s}" for t, s in ran["tasks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
