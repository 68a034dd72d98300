"""The docker backend: the ostro-swupd-server container, driven through the Docker Engine API.

It runs the image as its how-to does, with the whole storage at ``/var/lib/update``::

    docker run --rm --privileged -v STORAGE:/var/lib/update IMAGE \\
        /home/clrbuilder/projects/process_rootfs.sh V

with the ``docker`` SDK instead of a shell-out, so every failure becomes a
:class:`~swupd_repo.errors.BackendError` naming the setting to change. What the real image does
to that directory, step by step, is in ``docker-contract.md``; this module is built against it:

* **One mount for ``www`` and ``packstage``.** The scripts stage pack members by ``link()``
  from ``www/<L>/files`` into ``/var/lib/update/packstage``; a link across two mounts fails
  (EXDEV), the scripts go on and write empty packs. So the storage itself is the mount.
* **Earlier trees are read-only views.** ``basic_creator.sh`` runs ``hardlink`` over
  ``image/<PREV>`` and ``image/<V>``, which merges equal files while ignoring xattrs. The
  container's ``/var/lib/update/image`` is a directory of ours (:func:`prepare_run_dir`)
  holding read-only bind mounts of every ``image/<n>`` and of ``image/<V>/os-core``, a copy
  of ``latest.version`` and room for ``image/<V>/full``: merges fail (EROFS/EXDEV) and the
  history stays as it was; :class:`~.storage_guard.TreeGuard` proves it after every run
  (a changed tree is an error naming the first changed entry). Published ``www/<n>`` must
  stay writable (links, deltas added to earlier versions) and may see ``hardlink`` merge a
  file with an equal one: there presence, type, mode, owner and size are compared. The
  check's verification stamps are a read-only view (a stamp lets the gate skip a file).
* **The output is verified, always.** The exit status means little (a failed link is only
  logged): before the pipeline may move ``latest``, :mod:`.produced` checks that the
  manifests parse, the fullfiles exist and every pack holds what its manifests require.
* **What the native backend never writes goes.** The container's markers (both ``latest``
  files and ``www/version/formatstaging/latest``) are put back as they were; its scratch at
  the storage root (``packstage/``, ``log/``, ``server.ini``, ``groups.ini``) is removed;
  its ``image/<V>/full`` (a copy of ``os-core``, possibly merged by ``hardlink``) stays in
  our run directory and is replaced, as the native backend writes it, by ``full -> os-core``.
* The storage's ``.lock`` (which we hold) is covered by a file of the run directory, so a
  generator that locks the storage itself (ours does) does not wait for us forever.

A run that fails, or is interrupted (Ctrl-C, SIGTERM), stops and removes the container, then
removes what it added (``www/<V>``, any other new top-level entry of ``www/`` or of the
storage root: partial packs live in ``www/<V>``) and restores the markers. The engine must
see the storage at the same path as we do (a local engine).

Under pseudo (BitBake's ``[fakeroot]`` ``do_swupd_repo``) the tree on disk lacks the owners,
device nodes and ``security.*`` xattrs the extraction gave it: they live in pseudo's database.
The container would publish the bare files. So the tree is first copied as we see it into
``STORAGE/.swupd-repo-docker-os-core.<V>.<pid>`` by the engine (:mod:`.materialise`), and
that copy is mounted (read-only) at ``image/<V>/os-core`` in the container; the tree on disk,
which pseudo's database describes, is left untouched. The copy is removed (as root, by a
container) after the run, whatever its outcome. pseudo never sees an inode of the copy (the
engine creates even its top directory): an inode pseudo knows, freed behind its back and
reused, makes pseudo abort the task ("path mismatch"); for the same reason the latest
markers, which the container replaces, are first made files pseudo does not know.

Known cost: deltas against this version are later made from ``image/<V>/full`` (a link to
``os-core``) on disk, and only for files that still hash as the manifest says; in the bare
tree, files whose owner or xattrs pseudo alone knows get no delta (clients then download
their fullfile). The repository stays correct.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..check.stamps import STAMP_DIR
from ..errors import BackendError, SettingsError
from ..swupd.publish import link_full_tree
from .materialise import (
    copy_path,
    materialise,
    needs_copy,
    stale_copies,
    under_pseudo,
    unknown_to_pseudo,
)
from .produced import IncompleteOutput, verify_produced
from .storage_guard import (
    Snapshot,
    TreeChanged,
    TreeGuard,
    deferred_signals,
    hidden_temporaries,
    restored_markers,
    sigterm_raises_systemexit,
    staging_marker,
)

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..settings import Settings
    from ..storage import Storage

#: Where the container contract mounts the storage directory.
CONTAINER_STATE = "/var/lib/update"
#: Log lines quoted in the error of a failed container.
TAIL_LINES = 20
#: Seconds a container gets to stop (SIGTERM) before the engine kills it.
STOP_TIMEOUT = 3
#: Name prefix of a run's own directory at the storage root (see :func:`prepare_run_dir`).
RUN_PREFIX = ".swupd-repo-docker-run."


def setting(key: str) -> str:
    """How users spell a setting: BitBake variable (YAML key, CLI flag where there is one)."""
    flags = {"docker_image": ", --docker-image", "docker_host": ", --docker-host",
             "docker_command": ", --docker-command",
             "docker_privileged": ", --[no-]docker-privileged",
             "docker_volumes": ", --docker-volume"}
    return f"SWUPD_REPO_{key.upper()} (YAML {key}{flags.get(key, '')})"


def short(command: list[str], limit: int = 100) -> str:
    """``command`` as a shell line, cut for messages (an inline script can be long)."""
    text = " ".join(shlex.join(command).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class DockerBackend:
    """Builds ``www/<V>`` by running the swupd-server container on ``image/<V>/os-core``.

    ``_split_mounts`` brings back the mounts this backend used before it followed the real
    image's contract (``image/`` and ``www/`` mounted separately, ``image/`` writable); only
    the tests use it, to prove that the checks catch what that layout breaks.
    """

    name = "docker"

    def __init__(self, *, _split_mounts: bool = False) -> None:
        self.split_mounts = _split_mounts

    def build(self, storage: Storage, version: int, settings: Settings,
              reporter: Reporter) -> None:
        import docker.errors
        import requests.exceptions

        refuse_bundles(storage, version)
        extra = container_volumes(storage, settings.docker_volumes)
        client = connect(settings.docker_host)
        address = engine_address(settings.docker_host)
        try:
            require_image(client, settings.docker_image, address)
            with sigterm_raises_systemexit(), restored_markers(storage):
                reap_orphans(client, reporter)  # a killed run's container, still writing
                stale = stale_copies(storage) + stale_runs(storage)  # of a killed run
                remove_in_container(client, settings.docker_image, storage, stale, reporter)
                run = prepare_run_dir(storage, version)
                try:
                    with hidden_temporaries(storage, run / "hidden"):
                        self._build(client, storage, version, settings, extra, run, reporter)
                finally:
                    remove_in_container(client, settings.docker_image, storage,
                                        remove_ours([run, copy_path(storage, version)]),
                                        reporter)
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise engine_error(exc, address) from exc
        finally:
            client.close()

    def _build(self, client: Any, storage: Storage, version: int, settings: Settings,
               extra: list[str], run: Path, reporter: Reporter) -> None:
        """Run the container on the prepared layout; check and tidy what it left."""
        image = settings.docker_image
        source = storage.os_core(version)
        if under_pseudo():
            unknown_to_pseudo([storage.latest_image_marker, storage.latest_www_marker,
                               staging_marker(storage), run / "image" / "latest.version"],
                              reporter)
        ours = frozenset(p.name for p in (run, copy_path(storage, version)))
        before = Snapshot.take(storage, version)
        reporter.step("recording the earlier versions' trees the container must not change")
        guards = [TreeGuard.record(protected_trees(storage, version)),
                  TreeGuard.record(published_trees(storage, version), published=True)]
        try:
            if needs_copy(storage, version):
                source = materialise(client, image, storage, version, reporter)
            volumes = (split_volumes(storage, version, source) if self.split_mounts
                       else storage_volumes(storage, version, run, source))
            reporter.step(f"building version {version} in container {image}")
            command = [*shlex.split(settings.docker_command), str(version)]
            run_container(client, settings, command, [*volumes, *extra], version, reporter)
            reporter.step(f"verifying version {version} and the earlier trees as the "
                          "container left them")
            check_result(storage, version, image, guards)
            if not self.split_mounts:
                link_full_tree(storage, version)
        except BaseException:
            stuck = before.remove_additions(storage, version)
            remove_in_container(client, image, storage, stuck, reporter)
            raise
        stuck = before.remove_scratch(storage, keep=ours)
        remove_in_container(client, image, storage, stuck, reporter)


def refuse_bundles(storage: Storage, version: int) -> None:
    """A tree stored with bundles (``image/<V>/os-core.bundles``) is the native backend's:
    this backend gives the container os-core alone (its groups.ini has one section), so it
    would publish the bundles' content in os-core and no bundle manifests."""
    from ..bundles.assignment import assignment_path, read_assignment

    tree = storage.os_core(version)
    names = sorted(read_assignment(tree).bundles)
    if names:
        raise BackendError(f"version {version} was stored with the bundles {', '.join(names)} "
                           f"({assignment_path(tree)}), which the docker backend does not "
                           "publish",
                           hint="build it with the native backend (SWUPD_REPO_BACKEND = "
                                "\"native\", --backend native), or publish it again without "
                                "SWUPD_REPO_BUNDLES")


def check_result(storage: Storage, version: int, image: str, guards: list[TreeGuard]) -> None:
    """Refuse a run that changed an earlier tree or left an incomplete ``www/<V>``."""
    try:
        for guard in guards:
            guard.verify()
    except TreeChanged as exc:
        raise BackendError(
            f"container {image} changed a tree it must only read: {exc}",
            hint="its files are as the container left them; rebuild that version with "
                 "--force (or restore it from a backup), and use an image that does not "
                 "write to earlier versions' trees",
        ) from None
    if not (storage.www(version) / "Manifest.MoM").is_file():
        raise BackendError(
            f"container {image} exited successfully but wrote "
            f"no {storage.www(version)}/Manifest.MoM",
            hint=f"set {setting('docker_command')} to the image's "
                 "process_rootfs.sh (it takes the version as last argument)",
        )
    try:
        verify_produced(storage, version)
    except IncompleteOutput as exc:
        raise BackendError(
            f"container {image} exited successfully but version {version} is incomplete: "
            f"{exc}",
            hint="nothing was published; mount the whole storage at "
                 f"{CONTAINER_STATE} (packstage and www on one filesystem) and check the "
                 "container's log above",
        ) from None


def prepare_run_dir(storage: Storage, version: int) -> Path:
    """``STORAGE/.swupd-repo-docker-run.<V>.<pid>``: what the container sees as ``image/``.

    ``image/`` holds a copy of ``latest.version`` (the scripts read and rewrite it), one
    empty directory per other version (mount points of the read-only views) and
    ``<V>/os-core`` (mount point of the tree). ``hidden/`` keeps our temporaries during the
    run; ``lock`` covers the storage's ``.lock``. On the storage's filesystem, like every
    mount of the run.
    """
    run = storage.root.resolve() / f"{RUN_PREFIX}{version}.{os.getpid()}"
    image = run / "image"
    (image / str(version) / "os-core").mkdir(parents=True)
    (run / "hidden").mkdir()
    (run / "lock").touch()
    (storage.root / ".lock").touch()  # a mount point must exist, or the engine makes it as root
    for other in other_versions(storage, version):
        (image / other.name).mkdir()
    if storage.latest_image_marker.is_file():
        shutil.copyfile(storage.latest_image_marker, image / "latest.version")
    return run


def other_versions(storage: Storage, version: int) -> list[Path]:
    """``image/<n>`` of every version but ``version``: the history the container reads."""
    if not storage.image_dir.is_dir():
        return []
    return sorted((p for p in storage.image_dir.iterdir()
                   if p.name.isdigit() and p.name != str(version) and p.is_dir()
                   and not p.is_symlink()), key=lambda p: int(p.name))


def protected_trees(storage: Storage, version: int) -> list[Path]:
    """What the container may read but must leave as it was: every other version's
    ``image/<n>`` and this version's ``os-core``."""
    return [*other_versions(storage, version), storage.os_core(version)]


def published_trees(storage: Storage, version: int) -> list[Path]:
    """Every other version's ``www/<n>``: the container links pack members from them and
    may add deltas, but must not change what devices download."""
    if not storage.www_dir.is_dir():
        return []
    return sorted((p for p in storage.www_dir.iterdir()
                   if p.name.isdigit() and p.name != str(version) and p.is_dir()),
                  key=lambda p: int(p.name))


def storage_volumes(storage: Storage, version: int, run: Path, source: Path) -> list[str]:
    """The contract's mount (the whole storage) and the views that protect the history.

    The check's verification stamps are read-only too: a stamp lets the gate skip a file.
    """
    root = storage.root.resolve()
    state = CONTAINER_STATE
    # Our temporaries hidden for the run stay out of the container's reach: a generator
    # there cleaning leftovers must not put them back (Storage.restore_hidden) mid-run.
    volumes = [f"{root}:{state}:rw", f"{run / 'lock'}:{state}/.lock:rw",
               f"{run / 'image'}:{state}/image:rw",
               f"{run / 'hidden'}:{state}/{run.name}/hidden:ro"]
    if (root / STAMP_DIR).is_dir():
        volumes.append(f"{root / STAMP_DIR}:{state}/{STAMP_DIR}:ro")
    volumes += [f"{tree.resolve()}:{state}/image/{tree.name}:ro"
                for tree in other_versions(storage, version)]
    volumes.append(f"{source.resolve()}:{state}/image/{version}/os-core:ro")
    return volumes


def split_volumes(storage: Storage, version: int, source: Path) -> list[str]:
    """The mounts before the contract was followed (tests only): ``packstage`` then lies on
    the container's own filesystem, so every hard link into it fails."""
    root = storage.root.resolve()
    volumes = [f"{root / 'image'}:{CONTAINER_STATE}/image:rw",
               f"{root / 'www'}:{CONTAINER_STATE}/www:rw"]
    if source != storage.os_core(version):
        volumes.append(f"{source}:{CONTAINER_STATE}/image/{version}/os-core:rw")
    return volumes


def reap_orphans(client: Any, reporter: Reporter) -> None:
    """Stop and remove our containers whose run is gone (``swupd-repo.pid`` names a process
    that no longer exists): a SIGKILLed run cannot stop its container, which would go on
    writing into the storage this run now holds (and move ``latest`` at its end)."""
    for container in client.containers.list(all=True, filters={"label": "swupd-repo.pid"}):
        pid = container.labels.get("swupd-repo.pid", "")
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            reporter.info(f"stopping container {container.short_id} left by killed run {pid}")
            stop_and_remove(container)


def stale_runs(storage: Storage) -> list[Path]:
    """Run directories a killed run left; the lock says none is live."""
    if not storage.root.is_dir():
        return []
    return sorted(p for p in storage.root.resolve().iterdir() if p.name.startswith(RUN_PREFIX))


def remove_ours(paths: list[Path]) -> list[Path]:
    """Remove what we can of our own directories; returns what only root can remove."""
    with deferred_signals():
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        return [p for p in paths if os.path.lexists(p)]


def connect(host: str | None, api_version: str | None = None) -> Any:
    """A client of the engine at ``host`` (default: ``DOCKER_HOST``, else the local socket).

    Asks the engine something at once, so an unreachable engine is reported here, whichever
    way the SDK reports it: ``DockerException`` while negotiating the API version, or a
    requests ``ConnectionError`` on the first call when the version is pinned.
    """
    import docker
    import requests.exceptions

    address = engine_address(host)
    try:
        if host:
            client = docker.DockerClient(base_url=host, version=api_version)
        else:
            client = docker.from_env(version=api_version)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise engine_error(exc, address) from exc
    return client


def engine_address(host: str | None) -> str:
    """The address a client for ``host`` talks to, for messages."""
    return host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock (default)"


def engine_error(exc: Exception, address: str) -> BackendError:
    """The one message for "the engine is not there (any more)"."""
    import docker.errors

    if isinstance(exc, docker.errors.APIError):
        return BackendError(f"the Docker engine at {address} refused a request: "
                            f"{exc.explanation or exc}")
    text = str(exc)
    hint = (f"start the Docker engine, or set {setting('docker_host')} (or DOCKER_HOST) to "
            "its address, e.g. unix:///var/run/docker.sock")
    if "Permission denied" in text or "PermissionError" in text:
        hint = f"add your user to the docker group, or {hint}"
    return BackendError(f"cannot reach the Docker engine at {address}: {text}", hint=hint)


def require_image(client: Any, image: str, address: str) -> None:
    """Refuse early when the engine lacks ``image``.

    ``containers.run`` would try to pull it; offline, the engine answers an unhelpful HTTP 500.
    """
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise BackendError(
            f"the Docker engine at {address} has no image {image}",
            hint=f"docker pull {image} (or build conf/docker/Dockerfile with "
                 f"scripts/docker-image), or set {setting('docker_image')} to an image it has",
        ) from None


def container_volumes(storage: Storage, extra: tuple[str, ...]) -> list[str]:
    """``docker_volumes`` as ``-v`` arguments (validated); creates ``image/`` and ``www/``."""
    root = storage.root.resolve()
    for path in (root / "image", root / "www"):
        path.mkdir(parents=True, exist_ok=True)
    volumes = []
    for spec in extra:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/") \
                or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise SettingsError(f"docker volume {spec!r} is not HOST:CONTAINER[:ro|rw] with an "
                                "absolute container path",
                                hint=f"fix {setting('docker_volumes')}")
        host = Path(parts[0]).expanduser()
        if not host.is_absolute() or not host.exists():
            raise SettingsError(f"host path {parts[0]} of docker volume {spec!r} does not exist",
                                hint=f"create it or fix {setting('docker_volumes')}")
        volumes.append(":".join([str(host.resolve()), *parts[1:]]))
    return volumes


def run_container(client: Any, settings: Settings, command: list[str], volumes: list[str],
                  version: int, reporter: Reporter) -> None:
    """Create, start, stream the logs of and remove one container; raise on failure."""
    import docker.errors

    image = settings.docker_image
    try:
        container = client.containers.create(
            image, command, volumes=volumes, privileged=settings.docker_privileged,
            labels={"swupd-repo.version": str(version), "swupd-repo.pid": str(os.getpid())},
        )
    except docker.errors.APIError as exc:
        raise BackendError(f"cannot create a container of {image}: {exc.explanation or exc}",
                           hint=f"check {setting('docker_image')}, "
                                f"{setting('docker_command')} and "
                                f"{setting('docker_volumes')}") from exc
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise start_error(exc, image, command, settings.docker_privileged) from exc
        for line in log_lines(container):
            tail.append(line)
            reporter.info(f"container: {line}")
        status = container.wait()["StatusCode"]
    finally:
        stop_and_remove(container)
    if status != 0:
        shown = "\n".join(f"  {line}" for line in tail) or "  (no output)"
        raise BackendError(
            f"container {image} ({short(command)}) exited with status {status} while "
            f"building version {version}; its last lines:\n{shown}",
            hint=f"fix the cause above, or set {setting('docker_image')} / "
                 f"{setting('docker_command')} to a working swupd-server image",
        )


def start_error(exc: Exception, image: str, command: list[str], privileged: bool) -> BackendError:
    """Why the engine could not start the container, and which setting fixes it."""
    text = str(getattr(exc, "explanation", None) or exc)
    if "executable file not found" in text or "no such file or directory" in text:
        return BackendError(f"image {image} cannot run {command[0]}: {text}",
                            hint=f"set {setting('docker_command')} to the image's "
                                 "process_rootfs.sh (default "
                                 "/home/clrbuilder/projects/process_rootfs.sh)")
    if privileged and ("caps" in text or "privileged" in text):
        return BackendError(f"the engine cannot start a privileged container of {image}: {text}",
                            hint=f"set {setting('docker_privileged')} to 0 if the image does "
                                 "not need it, or let the engine grant every capability")
    return BackendError(f"the engine cannot start a container of {image}: {text}",
                        hint=f"check {setting('docker_image')} and "
                             f"{setting('docker_command')}")


def log_lines(container: Any) -> Iterator[str]:
    """The container's output (stdout and stderr) line by line, as it comes."""
    pending = b""
    stream = container.logs(stream=True, follow=True, stdout=True, stderr=True)
    try:
        for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace").rstrip("\r")
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def stop_and_remove(container: Any) -> None:
    """Stop (SIGTERM, then SIGKILL) and remove; never hides the error that got us here."""
    import docker.errors
    import requests.exceptions

    failures = (docker.errors.DockerException, requests.exceptions.RequestException)
    with deferred_signals():
        with contextlib.suppress(*failures):
            container.stop(timeout=STOP_TIMEOUT)
        with contextlib.suppress(*failures):
            container.remove(force=True)


def remove_in_container(client: Any, image: str, storage: Storage, paths: list[Path],
                        reporter: Reporter) -> None:
    """Remove files root owns under the storage (a failed container's output, our copies of
    a tree under pseudo) that we may not remove as ourselves: ``rm`` in a root container
    mounting the storage root."""
    import docker.errors
    import requests.exceptions

    paths = [p for p in paths if os.path.lexists(p)]
    if not paths:
        return
    root = storage.root.resolve()
    # the parent resolved, not the path: a symlink (image/<V>/full) goes, not its target
    inside = [f"/storage/{(p.parent.resolve() / p.name).relative_to(root)}" for p in paths]
    try:
        with deferred_signals():
            client.containers.run(image, inside, entrypoint=["rm", "-rf", "--"], remove=True,
                                  volumes=[f"{root}:/storage:rw"])
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reporter.warning(f"could not remove {', '.join(map(str, paths))} ({exc}); "
                         "remove them as root")
