"""The storage directory: the seed's layout, one writer at a time, atomic markers.

Layout (kept identical to what the ostro-swupd-server container uses, so either backend can
continue the other's history)::

    STORAGE/image/latest.version      last published version ("V\\n"), staged or released
    STORAGE/image/<V>/os-core/        extracted rootfs of V
    STORAGE/image/<V>/full/           generator scratch
    STORAGE/www/<V>/...               what devices download
    STORAGE/www/version/format3/latest   last released version (what devices run)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageBusyError, StorageError

#: Prefix of every temporary name we create inside the storage; the next run removes them.
TEMP_PREFIX = ".swupd-repo-tmp-"


def temp_path(parent: Path, name: str) -> Path:
    """A temporary name in ``parent`` that :meth:`Storage.clean_leftovers` recognises (when
    ``parent`` is one of the places runs write) and that no other live run uses."""
    return parent / f"{TEMP_PREFIX}{name}.{os.getpid()}"


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """:func:`atomic_write_bytes` of ``text``, durable (markers, settings-like state)."""
    atomic_write_bytes(path, text.encode(), mode)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, *,
                       durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never half.

    Write a temporary file beside it (its name starts with :data:`TEMP_PREFIX`, so an
    interrupted write is cleaned by the next run), rename it over the target. ``durable``
    also fsyncs the file and the directory; files inside a ``www/<V>`` that is still being
    built skip that, because the tree is synced once before its own rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path.parent, path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a file or a whole tree, also where directories are read-only (an image's own
    modes, or ours while extracting), which plain ``rmtree`` cannot do as a normal user."""
    def retry(func, target, _exc):  # type: ignore[no-untyped-def]  # shutil's onerror
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=retry)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_version_file(path: Path) -> int:
    """The first integer in a marker file, read like swupd-server (``%i``); 0 when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    match = re.match(r"\s*(\d+)", text)
    if not match:
        if text.strip():
            raise StorageError(
                f"{path} does not start with a version number: {text.strip()[:40]!r}",
                hint="fix or remove the file",
            )
        return 0
    return int(match.group(1))


@dataclass(frozen=True)
class Storage:
    """Paths of one storage directory; methods are the only writers of the markers."""

    root: Path
    format: int = 3

    @property
    def image_dir(self) -> Path:
        return self.root / "image"

    @property
    def www_dir(self) -> Path:
        return self.root / "www"

    def image(self, version: int) -> Path:
        return self.image_dir / str(version)

    def os_core(self, version: int) -> Path:
        return self.image(version) / "os-core"

    def full(self, version: int) -> Path:
        return self.image(version) / "full"

    def www(self, version: int) -> Path:
        return self.www_dir / str(version)

    @property
    def latest_image_marker(self) -> Path:
        return self.image_dir / "latest.version"

    @property
    def latest_www_marker(self) -> Path:
        return self.www_dir / "version" / f"format{self.format}" / "latest"

    def latest(self) -> int:
        """The last published version (0 before the first build).

        ``image/latest.version`` is what the container's scripts read; ``www/.../latest`` is
        what devices read. They are written together; when they disagree (a run killed between
        the two renames, or a staged version not yet released) the larger one is the truth,
        since www/<V> is complete before either: the next build goes above it and builds on it.
        """
        return max(read_version_file(self.latest_image_marker),
                   read_version_file(self.latest_www_marker))

    def published_versions(self) -> list[int]:
        """Versions with a complete ``www/<V>`` (a MoM in it), ascending."""
        if not self.www_dir.is_dir():
            return []
        found = []
        for entry in self.www_dir.iterdir():
            if entry.name.isdigit() and (entry / "Manifest.MoM").is_file():
                found.append(int(entry.name))
        return sorted(found)

    def released(self) -> int:
        """The version devices are told to run (``www/version/format3/latest``; 0 = none).

        Below :meth:`latest` while newer versions are staged (see :mod:`.release`).
        """
        return read_version_file(self.latest_www_marker)

    def write_markers(self, version: int, *, release: bool = True) -> None:
        """Point devices and the next build at ``version``: www marker first, then image.

        ``release=False`` (a staged version) moves only ``image/latest.version``, the version
        the next build starts from; devices keep the ``latest`` they had.
        """
        if release:
            atomic_write_text(self.latest_www_marker, f"{version}\n")
        atomic_write_text(self.latest_image_marker, f"{version}\n")

    def write_release_marker(self, version: int) -> None:
        """Point devices at ``version``, already built (``swupd-repo release``)."""
        atomic_write_text(self.latest_www_marker, f"{version}\n")

    temp_path = staticmethod(temp_path)

    def clean_leftovers(self) -> list[Path]:
        """Remove temporary trees a failed or killed run left behind; returns what went.

        Only called with the lock held, so no live run owns them.
        """
        removed = list(self.temporaries())
        for entry in removed:
            remove_tree(entry)
        return removed

    @contextlib.contextmanager
    def replacing(self, path: Path, label: str) -> Iterator[None]:
        """Replace ``path`` (if it exists) with what the block writes there, or lose nothing.

        The old tree is set aside under a temporary name first; if the block fails, what it
        wrote at ``path`` goes and the old tree is put back; if it succeeds, the old tree goes.
        A killed run leaves the copy for :meth:`clean_leftovers`.
        """
        aside = self.temp_path(path.parent, label) if os.path.lexists(path) else None
        if aside is not None:
            path.rename(aside)
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(path)
            if aside is not None:
                aside.rename(path)
            raise
        if aside is not None:
            with contextlib.suppress(OSError):
                remove_tree(aside)

    def temporaries(self) -> Iterator[Path]:
        """Every temporary name (:data:`TEMP_PREFIX`) where runs write them; the one list
        both the cleaner and the Docker backend's hiding of our own temporaries use."""
        for parent in self._leftover_parents():
            if parent.is_dir():
                yield from sorted(e for e in parent.iterdir() if e.name.startswith(TEMP_PREFIX))

    def _leftover_parents(self) -> Iterator[Path]:
        """Every directory a run writes temporary names into: the top levels, each
        ``image/<V>/`` (extraction), each ``www/<V>/`` (packs) and ``www/<V>/delta/``
        (deltas are added to already published versions, as swupd-server does)."""
        yield from (self.root, self.image_dir, self.www_dir, self.latest_www_marker.parent)
        for top in (self.image_dir, self.www_dir):
            if top.is_dir():
                for entry in top.iterdir():
                    if entry.name.isdigit() and entry.is_dir():
                        yield entry
                        if top == self.www_dir:
                            yield entry / "delta"

    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """One writer per storage directory (``flock`` on ``STORAGE/.lock``)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create storage directory {self.root}: {exc.strerror}",
                hint="set SWUPD_REPO_STORAGE_DIR / --storage to a writable directory",
            ) from exc
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.root}/.lock: {exc.strerror}",
                               hint="run as a user who may write the storage directory") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StorageBusyError(
                        f"storage {self.root} is in use by another run",
                        hint="wait for it to finish",
                    ) from exc
                raise
            yield
        finally:
            os.close(fd)
