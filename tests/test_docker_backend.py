"""The docker backend against a real Docker engine (``DOCKER_HOST``; scripts/test starts one).

Error paths run tiny shell "generators" in the locally made debian:bookworm base image; the
equivalence tests run our own image (conf/docker/Dockerfile) on the reference rootfs trees and
compare with the native backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import copy_tree
from docker_fixtures import BASE_IMAGE
from helpers_trees import snapshot
from swupd_repo.backends.docker import DockerBackend, connect, remove_in_container
from swupd_repo.errors import BackendError, SettingsError
from swupd_repo.progress import RecordingReporter
from swupd_repo.settings import make_settings
from swupd_repo.storage import Storage
from swupd_repo.swupd.streamstore import CACHE_DIR

pytestmark = pytest.mark.docker



# ---------------------------------------------------------------- fixtures and helpers

def settings_for(storage: Storage, made: Path | None = None, **values):
    """Docker settings for the base image; ``made`` (see :func:`made_www`) is mounted at
    /opt/made for :data:`WRITES_VERSION`."""
    if made is not None:
        values["docker_volumes"] = [*values.get("docker_volumes", []), f"{made}:/opt/made:ro"]
    return make_settings({"storage_dir": storage.root, "backend": "docker",
                          "docker_image": BASE_IMAGE, "docker_privileged": False, **values})


def shell_command(script: str) -> str:
    """docker_command running ``script`` with the version as $1 (as process_rootfs.sh gets it)."""
    return f"sh -c {shlex.quote(textwrap.dedent(script))} process_rootfs.sh"


#: A "generator" that writes its output like the container: www/<V> (a complete version the
#: native backend made beforehand, :func:`made_www`), image/<V>/full, then both markers.
WRITES_VERSION = """
    set -e
    u=/var/lib/update; v=$1
    echo "building $v"
    mkdir -p $u/image/$v/full $u/www/$v
    cp -a /opt/made/$v/. $u/www/$v/
    echo $v > $u/image/latest.version
    mkdir -p $u/www/version/format3; echo $v > $u/www/version/format3/latest
    echo "done $v"
"""


@pytest.fixture(scope="module")
def made_www(tmp_path_factory) -> Path:
    """``www`` of a storage whose only version, 20, the native backend built from a tiny
    tree: what :data:`WRITES_VERSION` copies, so its output passes the backend's checks."""
    from swupd_repo.pipeline import build_version

    storage = Storage(tmp_path_factory.mktemp("made") / "storage")
    (storage.os_core(20) / "etc").mkdir(parents=True)
    (storage.os_core(20) / "etc" / "os-release").write_text("VERSION_ID=20\n")
    build_version(make_settings({"storage_dir": storage.root, "backend": "native"}),
                  RecordingReporter(), 20)
    return storage.www_dir


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """Version 10 published (markers 10), image/20/os-core ready for the next build."""
    store = Storage(tmp_path / "storage")
    (store.www(10)).mkdir(parents=True)
    (store.www(10) / "Manifest.MoM").write_text("MANIFEST\t3\n")
    (store.os_core(10) / "etc").mkdir(parents=True)
    (store.full(10)).mkdir()
    (store.os_core(20) / "etc").mkdir(parents=True)
    (store.os_core(20) / "etc" / "os-release").write_text("VERSION_ID=20\n")
    store.write_markers(10)
    return store


def leftover_containers(engine, pid: int | None = None) -> list:
    label = f"swupd-repo.pid={pid or os.getpid()}"
    return engine.containers.list(all=True, filters={"label": label})


# ---------------------------------------------------------------- errors users will hit

def test_no_engine_names_docker_host(tmp_path, storage):
    import docker.errors
    import requests.exceptions

    socket = f"unix://{tmp_path}/no-engine.sock"
    settings = settings_for(storage, docker_host=socket)
    before = snapshot(storage.root)
    with pytest.raises(BackendError) as caught:
        DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert "cannot reach the Docker engine at " + socket in str(caught.value)
    assert "SWUPD_REPO_DOCKER_HOST" in str(caught.value)
    assert isinstance(caught.value.__cause__, docker.errors.DockerException)
    # With a pinned API version the SDK only fails on the first request, differently.
    with pytest.raises(BackendError, match="SWUPD_REPO_DOCKER_HOST") as pinned:
        connect(socket, api_version="1.41")
    assert isinstance(pinned.value.__cause__, requests.exceptions.ConnectionError)
    assert snapshot(storage.root) == before


def test_bad_docker_volumes_are_settings_errors(tmp_path, storage):
    for spec, words in (("relative", "HOST:CONTAINER"), (f"{tmp_path}/absent:/x", "not exist"),
                        (f"{tmp_path}:/x:rx", "HOST:CONTAINER")):
        settings = settings_for(storage, docker_volumes=[spec])
        with pytest.raises(SettingsError, match=words) as caught:
            DockerBackend().build(storage, 20, settings, RecordingReporter())
        assert "SWUPD_REPO_DOCKER_VOLUMES" in str(caught.value)


def test_missing_image_is_reported_without_pulling(engine, storage):
    settings = settings_for(storage, docker_image="swupd-repo-test/absent:1")
    before = snapshot(storage.root)
    started = time.monotonic()
    with pytest.raises(BackendError, match="has no image swupd-repo-test/absent:1") as caught:
        DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert time.monotonic() - started < 10
    assert "SWUPD_REPO_DOCKER_IMAGE" in str(caught.value)
    assert snapshot(storage.root) == before


def test_missing_command_names_docker_command(engine, base_image, storage):
    settings = settings_for(storage, docker_command="/home/clrbuilder/projects/process_rootfs.sh")
    before = snapshot(storage.root)
    with pytest.raises(BackendError, match="cannot run /home/clrbuilder") as caught:
        DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert "SWUPD_REPO_DOCKER_COMMAND" in str(caught.value)
    assert snapshot(storage.root) == before
    assert leftover_containers(engine) == []


def test_failure_half_way_leaves_storage_as_before(engine, base_image, storage):
    half_way = """
        u=/var/lib/update; v=$1
        mkdir -p $u/image/$v/full/usr $u/www/$v/files $u/www/$v/delta
        echo data > $u/www/$v/files/0123.tar
        head -c 1000 /dev/zero > $u/www/$v/pack-os-core-from-10.tar
        echo $v > $u/image/latest.version
        mkdir -p $u/www/version/format3; echo $v > $u/www/version/format3/latest
        for i in $(seq 1 30); do echo "line $i"; done
        sleep 0.2; echo "pack_maker failed for $v" >&2
        exit 3
    """
    settings = settings_for(storage, docker_command=shell_command(half_way))
    before = snapshot(storage.root)
    reporter = RecordingReporter()
    with pytest.raises(BackendError) as caught:
        DockerBackend().build(storage, 20, settings, reporter)
    message = str(caught.value)
    assert "exited with status 3 while building version 20" in message
    assert "pack_maker failed for 20" in message and "line 30" in message
    assert "line 5\n" not in message  # only the last lines are quoted
    assert snapshot(storage.root) == before
    assert storage.latest() == 10
    assert leftover_containers(engine) == []
    assert "container: pack_maker failed for 20" in reporter.infos


def test_first_build_failure_leaves_no_markers(engine, base_image, tmp_path, made_www):
    storage = Storage(tmp_path / "storage")
    storage.os_core(10).mkdir(parents=True)
    before = snapshot(storage.root)
    fails = WRITES_VERSION.replace('echo "done $v"', "exit 1")
    with pytest.raises(BackendError, match="status 1"):
        DockerBackend().build(storage, 10, settings_for(
            storage, made_www, docker_command=shell_command(fails)), RecordingReporter())
    # Only the empty mount point www/ stays of the run.
    after = snapshot(storage.root)
    assert set(after) - set(before) == {"www"} and before.items() <= after.items()
    assert storage.latest() == 0


def test_forced_rebuild_failure_keeps_the_old_version(engine, base_image, storage):
    """The pipeline sets www/<V> aside for a forced rebuild; a container that cleans our
    temporaries (our own generator does) must not take that copy with it."""
    from swupd_repo.pipeline import build_version

    storage.www(20).mkdir()
    (storage.www(20) / "Manifest.MoM").write_text("MANIFEST\t3\nversion:\t20\n")
    storage.write_markers(20)
    cleans_then_fails = """
        rm -rf /var/lib/update/www/.swupd-repo-tmp-* /var/lib/update/image/.swupd-repo-tmp-*
        mkdir -p /var/lib/update/www/$1; exit 4
    """
    before = snapshot(storage.root)
    settings = settings_for(storage, docker_command=shell_command(cleans_then_fails),
                            force=True)
    with pytest.raises(BackendError, match="status 4"):
        build_version(settings, RecordingReporter(), 20)
    assert snapshot(storage.root) == before


def test_remove_in_container(engine, base_image, storage):
    """What a root container left and a non-root user cannot remove goes through the engine."""
    (storage.www(20) / "files").mkdir(parents=True)
    (storage.www(20) / "files" / "x.tar").write_text("x")
    storage.full(20).mkdir()
    reporter = RecordingReporter()
    remove_in_container(engine, base_image, storage, [storage.www(20), storage.full(20)],
                        reporter)
    assert not storage.www(20).exists() and not storage.full(20).exists()
    assert storage.os_core(20).is_dir() and (storage.www(10) / "Manifest.MoM").is_file()
    assert reporter.warnings == []


def test_success_streams_logs_and_restores_markers(engine, base_image, storage, made_www):
    streaming = WRITES_VERSION.replace('echo "building $v"', 'echo "building $v"; sleep 2')

    class Timed(RecordingReporter):
        def __init__(self) -> None:
            super().__init__()
            self.times: dict[str, float] = {}

        def info(self, message: str) -> None:
            super().info(message)
            self.times[message] = time.monotonic()

    reporter = Timed()
    DockerBackend().build(storage, 20, settings_for(
        storage, made_www, docker_command=shell_command(streaming)), reporter)
    assert (storage.www(20) / "Manifest.MoM").read_bytes() == \
        (made_www / "20" / "Manifest.MoM").read_bytes()
    # The container's image/20/full stayed in its own image/; ours is the native backend's.
    assert storage.full(20).is_symlink() and os.readlink(storage.full(20)) == "os-core"
    # The container moved both markers; the contract wants them untouched until the pipeline.
    assert storage.latest_image_marker.read_text() == "10\n"
    assert storage.latest_www_marker.read_text() == "10\n"
    assert not (storage.www_dir / "version" / "formatstaging").exists()
    assert sorted(p.name for p in storage.root.iterdir()) == [".lock", "image", "www"]
    assert reporter.infos == ["container: building 20", "container: done 20"]
    # Streamed as they came, not collected at the end.
    gap = reporter.times["container: done 20"] - reporter.times["container: building 20"]
    assert gap > 1.5
    assert leftover_containers(engine) == []


def test_a_killed_runs_container_is_stopped_by_the_next_run(engine, base_image, storage,
                                                            made_www):
    """A SIGKILLed run cannot stop its container: the next run (holding the lock) stops
    every container whose ``swupd-repo.pid`` names a process that is gone, before it starts
    its own, so no orphan goes on writing into the storage or moves ``latest``."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = engine.containers.run(BASE_IMAGE, ["sleep", "600"], detach=True,
                                   labels={"swupd-repo.pid": str(gone.pid),
                                           "swupd-repo.version": "20"})
    try:
        reporter = RecordingReporter()
        DockerBackend().build(storage, 20, settings_for(
            storage, made_www, docker_command=shell_command(WRITES_VERSION)), reporter)
        assert leftover_containers(engine, gone.pid) == []
        assert f"stopping container {orphan.short_id} left by killed run {gone.pid}" in \
            reporter.infos
    finally:
        with contextlib.suppress(Exception):
            orphan.remove(force=True)


def test_privileged_run(engine, base_image, storage, made_www):
    needs_privilege = WRITES_VERSION.replace(
        'echo "building $v"', "mount -t tmpfs none /mnt || exit 7; umount /mnt")
    settings = settings_for(storage, made_www, docker_command=shell_command(needs_privilege),
                            docker_privileged=True)
    DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert (storage.www(20) / "Manifest.MoM").is_file()
    # The same command without the privilege fails: the flag is what made it work.
    storage30 = Storage(storage.root)
    (storage30.os_core(30)).mkdir(parents=True)
    with pytest.raises(BackendError, match="status 7"):
        DockerBackend().build(storage30, 30, settings.replace(docker_privileged=False),
                              RecordingReporter())
    assert not storage.www(30).exists()


def test_extra_volumes_are_mounted(engine, base_image, storage, tmp_path, made_www):
    extra = tmp_path / "certs"
    extra.mkdir()
    (extra / "leaf.cert.pem").write_text("CERT\n")
    copies = WRITES_VERSION.replace(
        'echo "done $v"', "cp /root/swupd-certs/leaf.cert.pem $u/www/$v/cert; "
        "touch /root/swupd-certs/x 2>/dev/null && exit 9; echo done")
    settings = settings_for(storage, made_www, docker_command=shell_command(copies),
                            docker_volumes=[f"{extra}:/root/swupd-certs:ro"])
    DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert (storage.www(20) / "cert").read_text() == "CERT\n"


def test_earlier_trees_are_read_only_views(engine, base_image, storage, made_www):
    """image/<n> and this version's os-core are read-only in the container; www/<n> is
    writable (pack members are linked from it) but may only gain deltas."""
    touches = WRITES_VERSION.replace('echo "done $v"', """
        for f in $u/image/10/os-core/etc/new $u/image/$v/os-core/etc/new; do
            touch $f 2>/dev/null && echo "wrote $f"
        done
        chmod 700 $u/image/10/os-core/etc 2>/dev/null && echo "chmod image/10"
        mkdir -p $u/www/10/delta; echo delta > $u/www/10/delta/10-20-x
        echo "done $v"
    """)
    stale = storage.root / ".swupd-repo-docker-run.20.1"  # of a killed run
    (stale / "image").mkdir(parents=True)
    images = tree_picture(storage.image(10)), tree_picture(storage.os_core(20))
    reporter = RecordingReporter()
    DockerBackend().build(storage, 20, settings_for(
        storage, made_www, docker_command=shell_command(touches)), reporter)
    assert not [line for line in reporter.infos if "wrote" in line or "chmod" in line]
    assert (tree_picture(storage.image(10)), tree_picture(storage.os_core(20))) == images
    assert (storage.www(10) / "delta" / "10-20-x").is_file()
    assert not stale.exists()


def test_changed_published_version_is_refused(engine, base_image, storage, made_www):
    rewrites = WRITES_VERSION.replace('echo "done $v"',
                                      'echo more >> $u/www/10/Manifest.MoM; echo "done $v"')
    with pytest.raises(BackendError, match=r"changed a tree it must only read: \S+/www/10/"
                                           r"Manifest.MoM changed \(size\)"):
        DockerBackend().build(storage, 20, settings_for(
            storage, made_www, docker_command=shell_command(rewrites)), RecordingReporter())
    assert not storage.www(20).exists() and storage.latest() == 10


def test_success_without_manifest_is_an_error(engine, base_image, storage):
    settings = settings_for(storage, docker_command=shell_command(
        "mkdir -p /var/lib/update/www/$1/files; echo 20 > /var/lib/update/image/latest.version"))
    before = snapshot(storage.root)
    with pytest.raises(BackendError, match=r"wrote no .*/Manifest\.MoM") as caught:
        DockerBackend().build(storage, 20, settings, RecordingReporter())
    assert "SWUPD_REPO_DOCKER_COMMAND" in str(caught.value)
    assert snapshot(storage.root) == before


CHILD = """
import sys
from pathlib import Path
from swupd_repo.backends.docker import DockerBackend
from swupd_repo.settings import make_settings
from swupd_repo.storage import Storage

class Printer:
    def step(self, name, total=None): pass
    def advance(self, amount=1): pass
    def info(self, message): print(message, flush=True)
    def warning(self, message): print(message, flush=True)

storage = Storage(Path(sys.argv[1]))
settings = make_settings({"storage_dir": storage.root, "backend": "docker",
                          "docker_image": sys.argv[2], "docker_command": sys.argv[3],
                          "docker_privileged": False})
DockerBackend().build(storage, 20, settings, Printer())
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_stops_the_container(engine, base_image, storage, signum):
    slow = """
        u=/var/lib/update; v=$1
        mkdir -p $u/image/$v/full $u/www/$v/files
        echo $v > $u/image/latest.version
        trap 'exit 143' TERM
        echo started
        sleep 60 & wait
    """
    before = snapshot(storage.root)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(storage.root), base_image, shell_command(slow)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "container: started":
                break
        else:
            pytest.fail(f"the container never started: {child.stderr.read()}")
        assert len(leftover_containers(engine, child.pid)) == 1
        started = time.monotonic()
        child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert time.monotonic() - started < 12
    assert child.returncode == (143 if signum == signal.SIGTERM else -signal.SIGINT)
    assert leftover_containers(engine, child.pid) == []
    assert snapshot(storage.root) == before


# ---------------------------------------------------------------- the real generator in a container

def fill_version(storage: Storage, version: int, trees: dict[int, Path]) -> None:
    """image/<V>/os-core for 10 and 20 from the vectors; 30 = 20 with a change of each kind."""
    root = copy_tree(trees[min(version, 20)], storage.os_core(version))
    if version == 30:
        (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
        (root / "usr" / "bin" / "prog30").write_bytes(b"#!/bin/sh\necho 30\n" * 40)
        (root / "usr" / "bin" / "prog30").chmod(0o755)
        (root / "usr" / "bin" / "prog01").unlink()
    release = root / "etc" / "os-release"
    if release.is_file() and not release.is_symlink():
        text = "".join(line for line in release.read_text().splitlines(keepends=True)
                       if not line.startswith("VERSION_ID="))
        release.write_text(f"{text}VERSION_ID={version}\n")


def build(storage: Storage, version: int, trees: dict[int, Path], backend: str,
          image: str = "") -> None:
    from swupd_repo.pipeline import build_version

    fill_version(storage, version, trees)
    values = {"storage_dir": storage.root, "backend": backend}
    if backend == "docker":
        values["docker_image"] = image  # default command and --privileged: the contract
    assert build_version(make_settings(values), RecordingReporter(), version) == version


def manifests(www: Path) -> dict[str, list[str]]:
    """Plain manifests of one version, minus what legitimately differs between two runs.

    ``timestamp:`` is the build time; the MoM's hash column hashes manifests that contain it.
    """
    found = {}
    for path in sorted(www.glob("Manifest.*")):
        if path.suffix in (".tar", ".signed"):
            continue
        lines = [line for line in path.read_text().splitlines()
                 if not line.startswith("timestamp:")]
        if path.name == "Manifest.MoM":
            entries = [line.split("\t") for line in lines]
            lines = ["\t".join([f[0], "-", *f[2:]]) if len(f) == 4 else "\t".join(f)
                     for f in entries]
        found[path.name] = lines
    return found


def published_names(www: Path) -> list[str]:
    """Every file name in www/<V> (fullfiles, deltas, packs, manifests)."""
    return sorted(str(p.relative_to(www)) for p in www.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def native_history(tmp_path_factory, rootfs_trees) -> Storage:
    """10, 20 and 30 built by the native backend: what the container must reproduce."""
    storage = Storage(tmp_path_factory.mktemp("native") / "storage")
    for version in (10, 20, 30):
        build(storage, version, rootfs_trees, "native")
    return storage


def assert_same_version(storage: Storage, reference: Storage, version: int) -> None:
    assert manifests(storage.www(version)) == manifests(reference.www(version))
    assert published_names(storage.www(version)) == published_names(reference.www(version))


def test_container_matches_native(tmp_path, rootfs_trees, native_history, server_image,
                                  engine):
    storage = Storage(tmp_path / "storage")
    for version in (10, 20):
        build(storage, version, rootfs_trees, "docker", server_image)
        assert_same_version(storage, native_history, version)
    assert storage.latest() == 20
    assert storage.latest_www_marker.read_text() == "20\n"
    assert leftover_containers(engine) == []


def swupd_repo_cli(*args: object) -> subprocess.CompletedProcess:
    """``swupd-repo ARGS`` in a fresh process (DOCKER_HOST from our environment)."""
    return subprocess.run([sys.executable, "-m", "swupd_repo.cli", *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, check=False)


def test_command_line_build_and_publish_through_the_container(tmp_path, rootfs_trees,
                                                              native_history, server_image,
                                                              engine):
    """``swupd-repo build`` and ``publish`` with ``--backend docker`` and every docker flag."""
    from dsk import make_dsk

    storage = Storage(tmp_path / "storage")
    fill_version(storage, 10, rootfs_trees)
    done = swupd_repo_cli("build", "--storage", storage.root, "--backend", "docker",
                          "--docker-image", server_image, "--version", 10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"published version 10 in {storage.root}/www/10" in done.stdout
    assert (done.stdout + done.stderr).count("published version 10 in") == 2  # ours, the
    assert "container: published version 10 in /var/lib/update/www/10" in done.stderr  # image's
    assert_same_version(storage, native_history, 10)
    assert storage.latest() == 10

    # 20 from a real .dsk; our command, an extra read-only volume and no privilege, all
    # from flags: the command shows the volume's file and fails when run privileged.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "note").write_text("mounted by --docker-volume\n")
    dsk, layout = make_dsk(rootfs_trees[20], tmp_path / "dsk", "image20")
    command = ("sh -c 'cat /opt/extra/note; if mount -t tmpfs none /mnt 2>/dev/null; then "
               "echo privileged; exit 7; fi; exec /home/clrbuilder/projects/process_rootfs.sh "
               "\"$1\"' process_rootfs.sh")
    docker_flags = ["--backend", "docker", "--docker-image", server_image,
                    "--docker-command", command, "--no-docker-privileged",
                    "--docker-volume", f"{extra}:/opt/extra:ro"]
    done = swupd_repo_cli("publish", "--storage", storage.root, *docker_flags,
                          "--dsk", dsk, "--layout", layout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "container: mounted by --docker-volume" in done.stdout + done.stderr
    assert_same_version(storage, native_history, 20)
    assert storage.published_versions() == [10, 20]
    assert storage.latest_www_marker.read_text() == "20\n"

    # --docker-privileged really reaches the engine: the same command now refuses.
    before = snapshot(storage.root)
    privileged = [*docker_flags[:-3], "--docker-privileged", *docker_flags[-2:]]
    done = swupd_repo_cli("build", "--storage", storage.root, *privileged, "--version", 20,
                          "--force")
    assert done.returncode != 0
    assert "exited with status 7" in done.stderr and "privileged" in done.stderr
    assert snapshot(storage.root) == before


def used_packs(summary: str) -> tuple[int, int, int]:
    """(objects from packs, deltas applied, fullfiles) of a client summary line."""
    found = re.search(r"(\d+) from packs, (\d+) deltas \(\d+ fell back\), (\d+) fullfiles",
                      summary)
    assert found, summary
    return int(found[1]), int(found[2]), int(found[3])


def test_mixed_history_native_docker_native(tmp_path, rootfs_trees, native_history,
                                            server_image):
    from swupd_repo.check import check_repository

    storage = Storage(tmp_path / "storage")
    build(storage, 10, rootfs_trees, "native")
    build(storage, 20, rootfs_trees, "docker", server_image)
    # The container's packs work: a fresh install of 20 comes from its zero pack, the update
    # from 10 from its delta pack, deltas included (no fullfile fallback).
    report = check_repository(storage, 20, simulate=True)
    sims = {s.from_version: used_packs(s.summary) for s in report.simulations}
    assert sims[0][0] > 0 and sims[0][2] == 0, report.simulations
    assert sims[10][1] > 0 and sims[10][2] == 0, report.simulations
    build(storage, 30, rootfs_trees, "native")
    for version in (10, 20, 30):
        assert_same_version(storage, native_history, version)
    assert storage.published_versions() == [10, 20, 30]
    assert storage.latest_image_marker.read_text() == "30\n"
    # A client really gets from 10 (native) and from 20 (the container's) to 30.
    report = check_repository(storage, 30, simulate=True)
    assert report.ok, report.problems
    assert {(s.from_version, s.to_version) for s in report.simulations} >= {(10, 30), (20, 30)}
    assert report.versions == [10, 20, 30]
    for sim in report.simulations:
        if sim.from_version:
            assert used_packs(sim.summary)[1] > 0, sim.summary


def test_after_a_native_rebase_our_image_makes_no_packs_from_before_it(
        tmp_path, rootfs_trees, server_image, engine):
    """Our image runs the native generator, whose change-point walk
    (:func:`~swupd_repo.swupd.packs.walk_change_points`) stops at a rebase: a container build
    after a native rebase makes the packs the native backend makes, none from before the
    rebase. (The real 2016 image's ``pack_maker.sh`` walks past it and cannot be told
    otherwise: the README says what that costs.)"""
    from swupd_repo.pipeline import build_version

    def history(root: Path, last: str) -> Storage:
        storage = Storage(root)
        for version, backend, rebase in ((10, "native", False), (20, "native", False),
                                         (30, "native", True), (40, last, False)):
            fill_version(storage, version, rootfs_trees)
            settings = make_settings({"storage_dir": storage.root, "backend": backend,
                                      "docker_image": server_image, "rebase": rebase})
            build_version(settings, RecordingReporter(), version)
        return storage

    native, docker = history(tmp_path / "native", "native"), history(tmp_path / "docker", "docker")
    packs = sorted(p.name for p in docker.www(40).glob("pack-*.tar"))
    # two change points back would be 30 and 20; the walk stops at the rebase 30
    assert packs == ["pack-os-core-from-0.tar", "pack-os-core-from-30.tar"]
    assert_same_version(docker, native, 40)


#: process_rootfs.sh with a ``hardlink`` that does nothing first in PATH: the pack test sees
#: the staging of pack members alone.
NO_HARDLINK = ("sh -c 'mkdir -p /tmp/nohl && ln -sf /bin/true /tmp/nohl/hardlink && "
               "PATH=/tmp/nohl:$PATH exec /home/clrbuilder/projects/process_rootfs.sh \"$1\"' "
               "process_rootfs.sh")


def pack_members(pack: Path) -> list[str]:
    from swupd_repo.client.archive import open_tar

    with open(pack, "rb") as f, open_tar(f) as tar:
        return [member.name for member in tar]


def test_packs_staged_by_hard_link_are_full(tmp_path, rootfs_trees, native_history,
                                            server_image, engine):
    """Our image stages pack members by link() from www/ into packstage/, as the real one
    does: with the whole storage mounted the packs are full; with the old separate image/ and
    www/ mounts every link fails (EXDEV), the container still exits 0 with empty packs, and
    the backend refuses the version, naming the first missing member."""
    storage = Storage(tmp_path / "storage")
    build(storage, 10, rootfs_trees, "native")
    fill_version(storage, 20, rootfs_trees)
    settings = make_settings({"storage_dir": storage.root, "backend": "docker",
                              "docker_image": server_image, "docker_command": NO_HARDLINK})
    before = snapshot(storage.root)
    reporter = RecordingReporter()
    with pytest.raises(BackendError) as caught:
        DockerBackend(_split_mounts=True).build(storage, 20, settings, reporter)
    assert re.fullmatch(
        r"container \S+ exited successfully but version 20 is incomplete: \S+/www/20/"
        r"pack-os-core-from-0\.tar lacks staged/[0-9a-f]{64} \(/[^)]*\) \(and \d+ more "
        r"problems\)", caught.value.message), caught.value.message
    assert any("Invalid cross-device link" in line for line in reporter.infos)
    assert snapshot(storage.root) == before
    assert leftover_containers(engine) == []

    DockerBackend().build(storage, 20, settings, RecordingReporter())
    packs = sorted(p.name for p in native_history.www(20).glob("pack-*.tar"))
    assert packs == ["pack-os-core-from-0.tar", "pack-os-core-from-10.tar"]
    for name in packs:
        members = pack_members(storage.www(20) / name)
        assert members == pack_members(native_history.www(20) / name)
        assert len(members) > 2  # more than delta/ and staged/
    assert_same_version(storage, native_history, 20)
    # what the container left that the native backend never writes is gone (the stream
    # store is the native generator's own, written by it inside our image too)
    assert sorted(p.name for p in storage.root.iterdir()) == [".lock", CACHE_DIR, "image", "www"]
    assert os.readlink(storage.full(20)) == "os-core"
    assert sorted(p.name for p in (storage.www_dir / "version").iterdir()) == ["format3"]


def tree_picture(root: Path) -> dict[str, tuple]:
    """:func:`snapshot` with times, plus each entry's inode and xattrs."""
    picture = {}
    for name, fields in snapshot(root, times=True).items():
        path = root / name
        xattrs = {} if path.is_symlink() else {
            key: os.getxattr(path, key) for key in sorted(os.listxattr(path))}
        picture[name] = (*fields, path.lstat().st_ino, tuple(xattrs.items()))
    return picture


def add_same_data(storage: Storage, version: int, label: bytes) -> Path:
    """A file every version has with the same data, mode, owner and mtime (what util-linux
    ``hardlink`` compares) but its own xattr."""
    path = storage.os_core(version) / "usr" / "share" / "same-data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"same data in every version\n" * 40)
    path.chmod(0o644)
    os.setxattr(path, "user.version", label)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return path


def test_hardlink_merges_cannot_change_older_trees(tmp_path, rootfs_trees, server_image,
                                                  engine):
    """The image runs util-linux ``hardlink`` over image/<PREV> and image/<V> as the real
    basic_creator.sh does; files of equal data but other xattrs must not be merged."""
    from swupd_repo.pipeline import build_version
    from swupd_repo.swupd.manifest import parse_manifest

    def publish(version: int, backend: str, **values) -> None:
        settings = make_settings({"storage_dir": storage.root, "backend": backend,
                                  "docker_image": server_image, **values})
        build_version(settings, RecordingReporter(), version)

    storage = Storage(tmp_path / "storage")
    fill_version(storage, 10, rootfs_trees)
    add_same_data(storage, 10, b"ten")
    publish(10, "native")
    fill_version(storage, 20, rootfs_trees)
    add_same_data(storage, 20, b"twenty")
    older, current = tree_picture(storage.image(10)), tree_picture(storage.os_core(20))
    publish(20, "docker")
    assert tree_picture(storage.image(10)) == older
    assert tree_picture(storage.os_core(20)) == current
    # the xattr change is published: the file changed in 20
    manifest = parse_manifest((storage.www(20) / "Manifest.os-core").read_bytes(), "20")
    assert manifest.by_path()["/usr/share/same-data"].last_change == 20

    # The old layout (image/ writable in the container): hardlink merges, the run is refused.
    fill_version(storage, 30, rootfs_trees)
    add_same_data(storage, 30, b"thirty")
    www_before = snapshot(storage.www_dir)
    # (which of two equal files hardlink keeps varies: either inode is reported)
    with pytest.raises(BackendError, match=r"changed a tree it must only read: \S+/image/"
                                           r"(20|30/os-core)/\S+ changed \((replaced by "
                                           r"another inode|hard-linked with another file)"):
        DockerBackend(_split_mounts=True).build(
            storage, 30, make_settings({"storage_dir": storage.root, "backend": "docker",
                                        "docker_image": server_image}), RecordingReporter())
    assert snapshot(storage.www_dir) == www_before
    assert storage.latest() == 20


# ---------------------------------------------------------------- trees under pseudo (fakeroot)

def make_special_tree(root: Path) -> None:
    """Owners, a device, a fifo, xattrs (security.* too), a hard link, a long path, a symlink.

    Run through pseudo, all of it but the data lands in pseudo's database only.
    """
    deep = root / ("d" * 80) / ("e" * 80)
    for directory in (root / "home/ostro", root / "dev", root / "usr/bin", deep):
        directory.mkdir(parents=True)
    (root / "home/ostro/notes").write_text("notes\n")
    os.chown(root / "home/ostro/notes", 1000, 1000)
    os.chown(root / "home/ostro", 1000, 1000)
    os.chmod(root / "home/ostro", 0o700)
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(root / "dev/null", 0o666)
    os.mkfifo(root / "dev/fifo", 0o600)
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    os.chmod(root / "usr/bin/hello", 0o4755)
    os.setxattr(root / "usr/bin/hello", "security.SMACK64", b"System")
    os.setxattr(root / "usr/bin/hello", "user.note", b"\x00\xffbinary")
    os.link(root / "usr/bin/hello", root / "usr/bin/hello-again")
    (deep / "file").write_text("deep\n")
    os.symlink("../usr/bin/hello", root / "dev/link")
    os.chown(root / "dev/link", 5, 6, follow_symlinks=False)
    os.symlink("../../../../etc/passwd", root / "usr/bin/up")  # above the root: valid
    os.chown(root / "usr/bin/up", 7, 8, follow_symlinks=False)


#: What the generator container sees in image/<V>/os-core (stat and python3 are in the base).
SHOW_TREE = """
    cd /var/lib/update/image/$1/os-core
    stat -c '%n %u:%g %a %F %h %t,%T' home/ostro home/ostro/notes dev/null dev/fifo dev/link \
        usr/bin/hello usr/bin/hello-again usr/bin/up
    readlink usr/bin/up
    python3 -c 'import os; print("xattrs", sorted(os.listxattr("usr/bin/hello")),
        os.getxattr("usr/bin/hello", "user.note"))'
    find . -name file -path "*eeee*"
    echo stopping; exit 3
"""


def under_pseudo_run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``python3 -c code`` under Debian's pseudo with its own database, then stop its server."""
    env = dict(os.environ, PSEUDO_PREFIX="/usr", PSEUDO_LOCALSTATEDIR=str(tmp_path / "pseudo"),
               PSEUDO_NOSYMLINKEXP="1")
    (tmp_path / "pseudo").mkdir(exist_ok=True)
    try:
        return subprocess.run(["pseudo", sys.executable, "-c", code], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        subprocess.run(["pseudo", "-S"], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, check=False)


def test_under_pseudo_reads_the_process_maps(tmp_path):
    from swupd_repo.backends.materialise import under_pseudo

    assert not under_pseudo()  # pytest itself
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not under_pseudo(maps)
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 "
                    "/usr/lib/x86_64-linux-gnu/pseudo/libpseudo.so\n")
    assert under_pseudo(maps)
    assert not under_pseudo(tmp_path / "missing")
    # bitbake-worker empties the task's environment: LD_PRELOAD is gone, pseudo is not
    done = under_pseudo_run(tmp_path, "import os; os.environ.pop('LD_PRELOAD', None); "
                                      "from swupd_repo.backends.materialise import under_pseudo;"
                                      " print(under_pseudo())")
    assert done.stdout.strip() == "True", done.stderr


def test_tree_tar_is_the_tree_as_the_process_sees_it(tmp_path):
    """The stream, read back by Python's tarfile: ids, modes, devices, xattrs, links, names."""
    import tarfile

    root, stream = tmp_path / "tree", tmp_path / "tree.tar"
    # made and read through pseudo (no root needed), as inside do_swupd_repo
    done = under_pseudo_run(tmp_path, textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_docker_backend import make_special_tree
        from swupd_repo.backends.materialise import tree_tar
        root = Path({str(root)!r})
        make_special_tree(root)
        assert b"usr/bin/up" in b"".join(tree_tar(root))
        escaping = []
        Path({str(stream)!r}).write_bytes(b"".join(tree_tar(root, escaping=escaping)))
        print([(r.path, r.target, r.uid, r.gid) for r in escaping])
    """))
    assert done.returncode == 0, done.stderr
    # the engine refuses a symlink climbing above the root: it is made separately
    assert done.stdout.strip() == "[('/usr/bin/up', b'../../../../etc/passwd', 7, 8)]"
    with tarfile.open(stream) as tar:
        members = {m.name: m for m in tar.getmembers()}
        notes = tar.extractfile("home/ostro/notes")
        assert notes is not None and notes.read() == b"notes\n"
    deep = f"{'d' * 80}/{'e' * 80}/file"
    assert deep in members and members[deep].isfile()
    assert (members["home/ostro"].uid, members["home/ostro"].mode) == (1000, 0o700)
    assert members["home/ostro/notes"].uid == 1000
    null = members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)
    assert members["dev/fifo"].isfifo()
    assert members["dev/link"].issym() and members["dev/link"].linkname == "../usr/bin/hello"
    assert (members["dev/link"].uid, members["dev/link"].gid) == (5, 6)
    # a hard link is a second copy (the engine would clear set-user-ID when chowning a link)
    for name in ("usr/bin/hello", "usr/bin/hello-again"):
        hello = members[name]
        assert hello.isfile() and hello.mode == 0o4755 and hello.size == 21
        assert hello.pax_headers["SCHILY.xattr.security.SMACK64"] == "System"
        assert hello.pax_headers["SCHILY.xattr.user.note"] == "\x00\udcffbinary"


def test_pseudo_tree_reaches_the_container_with_its_metadata(engine, base_image, tmp_path):
    """Under pseudo the container gets a copy made from pseudo's view, removed afterwards.

    The tree is made through pseudo, so on disk home/ostro is root's, dev/null a plain file
    and hello has no xattr; the generator (here a shell script that shows what it sees, then
    fails) must see the pseudo metadata, and the failure must leave the storage as it was.
    """
    storage = Storage(tmp_path / "storage")
    root = storage.os_core(20)
    stale = storage.root / ".swupd-repo-docker-os-core.20.1"  # of a killed run
    (stale / "x").mkdir(parents=True)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_docker_backend import make_special_tree, settings_for, shell_command
        from swupd_repo.backends.docker import DockerBackend
        from swupd_repo.errors import BackendError
        from swupd_repo.progress import RecordingReporter
        from swupd_repo.storage import Storage
        storage = Storage(Path({str(storage.root)!r}))
        make_special_tree(storage.os_core(20))
        reporter = RecordingReporter()
        settings = settings_for(storage, docker_command=shell_command({SHOW_TREE!r}))
        try:
            DockerBackend().build(storage, 20, settings, reporter)
        except BackendError as exc:
            print(exc)
        print("\\n".join([name for name, _ in reporter.steps] + reporter.infos))
        print("warnings:", reporter.warnings)
    """)
    done = under_pseudo_run(tmp_path, code)
    out = done.stdout
    assert "exited with status 3" in out, out + done.stderr
    assert "with its fakeroot (pseudo) owners, devices and xattrs for the container" in out
    assert "warnings: []" in out
    assert "home/ostro 1000:1000 700 directory 2" in out
    assert "home/ostro/notes 1000:1000 644 regular file 1" in out
    assert "dev/null 0:0 666 character special file 1 1,3" in out
    assert "dev/fifo 0:0 600 fifo 1" in out
    assert "dev/link 5:6 777 symbolic link 1" in out
    assert "usr/bin/hello 0:0 4755 regular file 1" in out  # set-user-ID kept
    assert "usr/bin/hello-again 0:0 4755 regular file 1" in out
    assert "usr/bin/up 7:8 777 symbolic link 1" in out
    assert "container: ../../../../etc/passwd\n" in out
    assert "xattrs ['security.SMACK64', 'user.note'] b'\\x00\\xffbinary'" in out
    assert f"./{'d' * 80}/{'e' * 80}/file" in out
    # on disk (outside pseudo) the tree is still the bare one pseudo describes ...
    assert (root / "dev/null").is_file() and (root / "home/ostro").stat().st_uid == 0
    assert os.listxattr(root / "usr/bin/hello") == []
    # ... the copy and the stale one are gone, and the failure left nothing of the run
    assert not [p for p in storage.root.iterdir() if p.name.startswith(".swupd-repo")]
    assert not storage.www(20).exists()
    assert leftover_containers(engine) == []
