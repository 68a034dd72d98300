"""The docker backend: the ostro-swupd-server container, driven through the Docker Engine API.

It does exactly what its users' scripts did::

    docker run --rm --privileged -v STORAGE/image:/var/lib/update/image \\
        -v STORAGE/www:/var/lib/update/www IMAGE /home/clrbuilder/projects/process_rootfs.sh V

with the ``docker`` SDK instead of a shell-out, so every failure becomes a
:class:`~swupd_repo.errors.BackendError` naming the setting to change. The container writes
``www/<V>`` *and both latest markers* itself; the backend contract says markers only move after
the pipeline's check, so they are put back as they were once the container has stopped.

A run that fails, or is interrupted (Ctrl-C, SIGTERM), stops and removes the container, then
removes what it added (``www/<V>``, ``image/<V>/full``, any other new top-level entry of
``www/``, ``image/`` or ``image/<V>/``: partial packs live in ``www/<V>``) and restores the
markers. The engine must see the storage at the same path as we do (a local engine).

Under pseudo (BitBake's ``[fakeroot]`` ``do_swupd_repo``) the tree on disk lacks the owners,
device nodes and ``security.*`` xattrs the extraction gave it: they live in pseudo's database.
The container would publish the bare files. So the tree is first copied as we see it into
``STORAGE/.swupd-repo-docker-os-core.<V>.<pid>`` by the engine (:mod:`.materialise`), and
that copy is mounted over ``image/<V>/os-core`` in the container; the tree on disk, which
pseudo's database describes, is left untouched. The copy is removed (as root, by a
container) after the run, whatever its outcome. pseudo never sees an inode of the copy (the
engine creates even its top directory): an inode pseudo knows, freed behind its back and
reused, makes pseudo abort the task ("path mismatch"); for the same reason the latest
markers, which the container replaces, are first made files pseudo does not know.

Known cost: deltas against this version are later made from ``image/<V>/full`` or
``os-core`` on disk, and only for files that still hash as the manifest says; in the bare
tree, files whose owner or xattrs pseudo alone knows get no delta (clients then download
their fullfile). The repository stays correct.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, SettingsError
from .materialise import (
    copy_path,
    materialise,
    needs_copy,
    stale_copies,
    unknown_to_pseudo,
)
from .storage_guard import (
    Snapshot,
    deferred_signals,
    hidden_temporaries,
    restored_markers,
    sigterm_raises_systemexit,
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
    """Builds ``www/<V>`` by running the swupd-server container on ``image/<V>/os-core``."""

    name = "docker"

    def build(self, storage: Storage, version: int, settings: Settings,
              reporter: Reporter) -> None:
        import docker.errors
        import requests.exceptions

        volumes = container_volumes(storage, settings.docker_volumes)
        command = [*shlex.split(settings.docker_command), str(version)]
        client = connect(settings.docker_host)
        address = engine_address(settings.docker_host)
        try:
            require_image(client, settings.docker_image, address)
            with sigterm_raises_systemexit(), hidden_temporaries(storage), \
                    restored_markers(storage):
                before = Snapshot.take(storage, version)
                copies = stale_copies(storage)  # of a killed run
                try:
                    remove_in_container(client, settings.docker_image, storage, copies, reporter)
                    if needs_copy(storage, version):
                        copies = [copy_path(storage, version)]
                        copy = materialise(client, settings.docker_image, storage, version,
                                           reporter)
                        volumes = [*volumes, f"{copy}:{CONTAINER_STATE}/image/{version}/"
                                             "os-core:rw"]
                        unknown_to_pseudo([storage.latest_image_marker,
                                           storage.latest_www_marker], reporter)
                    reporter.step(f"building version {version} in container "
                                  f"{settings.docker_image}")
                    run_container(client, settings, command, volumes, version, reporter)
                    if not (storage.www(version) / "Manifest.MoM").is_file():
                        raise BackendError(
                            f"container {settings.docker_image} exited successfully but wrote "
                            f"no {storage.www(version)}/Manifest.MoM",
                            hint=f"set {setting('docker_command')} to the image's "
                                 "process_rootfs.sh (it takes the version as last argument)",
                        )
                except BaseException:
                    stuck = before.remove_additions(storage, version)
                    if stuck:
                        remove_in_container(client, settings.docker_image, storage, stuck,
                                            reporter)
                    raise
                finally:
                    remove_in_container(client, settings.docker_image, storage, copies, reporter)
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise engine_error(exc, address) from exc
        finally:
            client.close()


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
    """``-v`` arguments: the contract's two mounts, then ``docker_volumes`` (validated)."""
    root = storage.root.resolve()
    for path in (root / "image", root / "www"):
        path.mkdir(parents=True, exist_ok=True)
    volumes = [f"{root / 'image'}:{CONTAINER_STATE}/image:rw",
               f"{root / 'www'}:{CONTAINER_STATE}/www:rw"]
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
