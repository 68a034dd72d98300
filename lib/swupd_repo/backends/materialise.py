"""The stored tree with its real metadata, as a tar stream: how a container gets owners.

A stored tree's owners, modes, device nodes and ``security.*`` xattrs are in its metadata
record (``image/<V>/os-core.meta``, :mod:`swupd_repo.treemeta`); the files on disk are the
build user's plain files, device nodes empty placeholders. A container reads the real files.
So the docker backend streams a tar of ``image/<V>/os-core`` written from the record (and the
file content on disk), and the engine unpacks it as root into a copy the container is given
instead. A tree stored before records existed is streamed as this process sees it (under
the pseudo of an old ``[fakeroot]`` task: pseudo's view, which is the extracted one).

The headers are the fullfiles' (numeric ids, empty user/group names, exact mode, each xattr a
pax ``SCHILY.xattr.<name>`` record with the raw bytes), plus a pax ``path``/``linkpath`` for
long names. Hard links become separate copies: the engine chowns a hard-link member too,
which clears the set-user-ID bit of the shared inode, and does not chmod it back; the
generators hash and ship every path on its own anyway (swupd has no hard links, the server's
rsync runs without -H). The stream is produced lazily: a multi-GB tree is never held in
memory, nor written to disk but once, as the copy.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, BuildError
from ..progress import NullReporter
from ..swupd.fullfiles import END_OF_ARCHIVE, padding, record_member
from ..swupd.scan import Record, walk
from ..treemeta import load as load_meta
from ..treemeta import record_path

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..storage import Storage

_CHUNK = 1 << 20
#: Name prefix of the copies, at the storage root: not mounted into the generator container,
#: so its clean-up of ``.swupd-repo-tmp-*`` cannot touch them, and not TEMP_PREFIX, so
#: ``Storage.clean_leftovers`` (not root: it could not remove root's files) leaves them to us.
COPY_PREFIX = ".swupd-repo-docker-os-core."
#: Where the helper container sees the copy. Every distribution has /mnt; the helper is only
#: created, never started: the engine itself unpacks the archive (as root, in the mount).
HELPER_MOUNT = "/mnt"


@dataclass
class Counts:
    """What a :func:`tree_tar` stream carried so far (for progress and the log)."""

    members: int = 0
    data: int = 0  # bytes of regular file data


def under_pseudo(maps: Path = Path("/proc/self/maps")) -> bool:
    """True when pseudo serves this process: ``libpseudo.so`` is mapped into it.

    Not the environment: bitbake-worker empties it for each task and puts back only the
    exported variables and FAKEROOTENV (``PSEUDO_*``), so ``LD_PRELOAD`` is gone while the
    library loaded at the worker's start still intercepts every call. ``PSEUDO_*`` variables
    alone prove nothing either (a shell can export them). With pseudo loaded but disabled the
    copy is merely identical to the tree, so erring that way costs time, never correctness.
    """
    try:
        text = maps.read_text()
    except OSError:
        return False
    return any(line.rsplit("/", 1)[-1].startswith("libpseudo") for line in text.splitlines())


def needs_copy(storage: Storage, version: int) -> bool:
    """Whether the container must get a materialised copy of ``image/<V>/os-core``: always for
    a tree with a metadata record (its files on disk lack owners, devices and xattrs), and
    for an old tree read under pseudo (the metadata is only in pseudo's database)."""
    return record_path(storage.os_core(version)).exists() or under_pseudo()


def member(rec: Record) -> bytes:
    """Headers of one record, named relative to the tree root (``usr/bin/x``)."""
    return record_member(rec, rec.path.lstrip("/"))


def escapes(rec: Record) -> bool:
    """A relative symlink that climbs above the tree's root (``a/l -> ../../x``).

    Valid in a filesystem (``..`` of ``/`` is ``/``) but the engine refuses such a member
    ("invalid symlink"), so :func:`tree_tar` hands these to :func:`materialise` to make.
    """
    if rec.type != "L" or rec.target.startswith(b"/"):
        return False
    name = rec.path.lstrip("/").encode("utf-8", "surrogateescape")
    where = posixpath.normpath(posixpath.join(posixpath.dirname(name), rec.target))
    return where == b".." or where.startswith(b"../")


def tree_tar(root: Path, counts: Counts | None = None,
             escaping: list[Record] | None = None) -> Iterator[bytes]:
    """The tar stream of everything below ``root``, metadata as this process sees it.

    Names swupd refuses and sockets are left out, as the generator leaves them out (it warns
    about them itself). A file whose size changes while it is read fails the stream: the
    copy would not be the tree that was extracted. ``counts`` is updated as members go;
    symlinks that :func:`escape` go to ``escaping`` instead of the stream when it is given.
    """
    counts = counts if counts is not None else Counts()
    for rec in walk(root, NullReporter(), load_meta(root)):
        counts.members += 1
        if escaping is not None and escapes(rec):
            escaping.append(rec)
            continue
        yield member(rec)
        if rec.is_regular:
            yield from _data(rec)
            counts.data += rec.size
    yield END_OF_ARCHIVE


def _data(rec: Record) -> Iterator[bytes]:
    sent = 0
    with open(rec.disk, "rb") as f:
        while sent < rec.size and (chunk := f.read(min(_CHUNK, rec.size - sent))):
            sent += len(chunk)
            yield chunk
    if sent != rec.size:
        raise BuildError(f"{rec.disk} shrank from {rec.size} to {sent} bytes while it was "
                         "copied for the container",
                         hint="do not modify the image tree while a build runs")
    yield padding(rec.size)


def copy_path(storage: Storage, version: int) -> Path:
    return storage.root.resolve() / f"{COPY_PREFIX}{version}.{os.getpid()}"


def stale_copies(storage: Storage) -> list[Path]:
    """Copies a killed run left (any version, any process); the lock says none is live."""
    if not storage.root.is_dir():
        return []
    return sorted(p for p in storage.root.resolve().iterdir() if p.name.startswith(COPY_PREFIX))


def materialise(client: Any, image: str, storage: Storage, version: int,
                reporter: Reporter) -> Path:
    """Copy ``image/<V>/os-core`` as we see it into a fresh directory the engine fills as root.

    The engine unpacks the stream (``PUT /containers/{id}/archive``) into a bind mount of a
    created, never started, container of ``image``: ownership, device nodes, modes and xattrs
    (``security.*`` too) are set by the engine's own root process, so neither
    ``--privileged`` nor a tar program in the image is needed. Returns the copy; on failure
    it is left for :func:`~swupd_repo.backends.docker.remove_in_container` (the caller's cleanup).
    """
    import docker.errors
    import requests.exceptions

    source = storage.os_core(version)
    copy = copy_path(storage, version)
    # Not made by us: the engine creates a missing bind-mount source itself (as root), so
    # pseudo never learns an inode of the copy that a container later frees behind its back.
    if record_path(source).exists():
        reporter.step(f"copying {source} with the owners, devices and xattrs of its metadata "
                      "record for the container")
    else:  # a tree stored before records, read under pseudo
        reporter.step(f"copying {source} with its fakeroot (pseudo) owners, devices and "
                      "xattrs for the container")
    counts = Counts()
    try:
        helper = client.containers.create(
            image, ["true"], volumes=[f"{copy}:{HELPER_MOUNT}:rw"],
            labels={"swupd-repo.version": str(version), "swupd-repo.pid": str(os.getpid())},
        )
    except docker.errors.APIError as exc:
        raise BackendError(f"cannot create a helper container of {image} to copy {source}: "
                           f"{exc.explanation or exc}") from exc
    escaping: list[Record] = []
    try:
        helper.put_archive(HELPER_MOUNT, tree_tar(source, counts, escaping))
    except docker.errors.APIError as exc:
        raise BackendError(f"the Docker engine could not unpack {source} into {copy}: "
                           f"{exc.explanation or exc}",
                           hint="the storage must be on a filesystem with xattrs and device "
                                "nodes, on the engine's machine") from exc
    except requests.exceptions.ConnectionError as exc:
        # the engine closes the upload when its unpacker fails part-way through a big tree
        raise BackendError(f"the Docker engine stopped receiving the copy of {source} after "
                           f"{counts.members} entries: {exc}",
                           hint="see the engine's log (journalctl -u docker) for why") from exc
    finally:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            helper.remove(force=True)
    if escaping:
        make_symlinks(client, image, copy, escaping, reporter)
    reporter.info(f"copied {counts.members} entries ({counts.data} bytes of file data) of "
                  f"{source} into {copy}")
    return copy


#: Makes symlinks given as (target, path, uid:gid) argument triples; coreutils only.
MAKE_SYMLINKS = ('while [ $# -ge 3 ]; do ln -s -- "$1" "$2" && chown -h -- "$3" "$2" || exit 1; '
                 'shift 3; done')


def make_symlinks(client: Any, image: str, copy: Path, links: list[Record],
                  reporter: Reporter) -> None:
    """Create the symlinks the engine's unpacker refuses, as root, in a helper container."""
    import docker.errors

    args: list[str] = []
    for rec in links:
        if rec.xattrs:
            reporter.warning(f"symlink {rec.path} climbs above the root and has xattrs; the "
                             "container's copy lacks them")
        args += [os.fsdecode(rec.target), f"{HELPER_MOUNT}{rec.path}", f"{rec.uid}:{rec.gid}"]
    try:
        client.containers.run(image, ["-c", MAKE_SYMLINKS, "sh", *args], entrypoint=["sh"],
                              remove=True, volumes=[f"{copy}:{HELPER_MOUNT}:rw"])
    except docker.errors.ContainerError as exc:
        raise BackendError(f"cannot create {len(links)} symlinks pointing above the root in "
                           f"{copy}: {exc.stderr!r}",
                           hint="the image must have sh, ln and chown") from exc


def unknown_to_pseudo(paths: list[Path], reporter: Reporter) -> None:
    """Replace each file by an equal one whose inode pseudo does not know.

    The container replaces the latest markers; if pseudo knows the inode it frees (we wrote
    the marker through pseudo before), a later file reusing that inode makes pseudo abort the
    task ("path mismatch"). So the known inode is moved aside and unlinked *through* pseudo
    (which forgets it), and the equal file is written by a child without pseudo
    (``PSEUDO_UNLOAD=1``). The name is missing for a moment only; a failure leaves it as it was.
    """
    if not under_pseudo():
        return  # nothing knows these inodes but the kernel
    env = dict(os.environ, PSEUDO_UNLOAD="1")
    env.pop("LD_PRELOAD", None)
    for path in paths:
        if not path.is_file() or path.is_symlink():
            continue
        aside = path.with_name(f"{path.name}.pseudo-known.{os.getpid()}")
        try:
            path.rename(aside)
            done = subprocess.run(["cp", "--", str(aside), str(path)], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if done.returncode != 0:
                aside.rename(path)
                raise OSError(done.stderr.decode(errors="replace").strip())
            aside.unlink()
        except OSError as exc:
            reporter.warning(f"could not hide {path} from pseudo ({exc}); if the task aborts "
                             "with a pseudo path mismatch, build again")
