"""Undoing what a tool that writes into the storage behind our back did (the container).

The swupd-server container writes ``www/<V>``, ``image/<V>/full`` and both ``latest`` markers
itself, and cleans our temporaries if it runs our own generator. The backend contract wants the
markers untouched and, after a failure, nothing of the run left. These context managers and
:class:`Snapshot` give that without knowing what the tool does inside.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage import atomic_write_text

if TYPE_CHECKING:
    from ..storage import Storage


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while cleaning up: a second Ctrl-C must not stop the cleanup.

    They are delivered (and raise) once the block ends. Only the main thread gets them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def sigterm_raises_systemexit() -> Iterator[None]:
    """Let SIGTERM (BitBake cancelling a task, ``kill``) unwind like Ctrl-C does.

    Python's default SIGTERM handling ends the process at once, leaving a container running
    and the storage half-written. Only possible in the main thread; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def restored_markers(storage: Storage) -> Iterator[None]:
    """Put both latest markers back as they were, whatever was written meanwhile.

    The marker directories are created first, by us: files a root container writes in them
    can then be replaced without root.
    """
    markers = (storage.latest_www_marker, storage.latest_image_marker)
    saved = {path: path.read_text() if path.is_file() else None for path in markers}
    created = [d for d in (storage.www_dir / "version", storage.latest_www_marker.parent)
               if not d.exists()]
    for path in markers:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        with deferred_signals():
            for path, text in saved.items():
                if text is None:
                    path.unlink(missing_ok=True)
                elif not path.is_file() or path.read_text() != text:
                    atomic_write_text(path, text)
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only when empty: no marker was published


@contextlib.contextmanager
def hidden_temporaries(storage: Storage) -> Iterator[None]:
    """Move our own temporaries out of the tool's sight for the run.

    Our generator, run in a container, first cleans ``.swupd-repo-tmp-*`` leftovers
    everywhere under ``www/`` and ``image/`` (:meth:`Storage.temporaries`); that would include
    the pipeline's copies of a ``www/<V>`` or ``image/<V>/os-core`` being replaced with
    ``force``. The storage root is not mounted, so they are safe there.
    """
    moved: list[tuple[Path, Path]] = []
    for entry in list(storage.temporaries()):
        if entry.parent == storage.root:
            continue
        where = entry.parent.relative_to(storage.root).as_posix().replace("/", "-")
        target = storage.root / f"{entry.name}.{where}"
        with contextlib.suppress(OSError):
            entry.rename(target)
            moved.append((target, entry))
    try:
        yield
    finally:
        with deferred_signals():
            for target, original in moved:
                if not original.exists():
                    target.rename(original)


@dataclass(frozen=True)
class Snapshot:
    """Top-level names before the run, so a failed run can remove exactly what it added.

    Everything a run adds is a new top-level entry of ``www/`` (``www/<V>`` with its partial
    packs), ``image/`` or ``image/<V>/`` (``full``); earlier versions are only read.
    """

    www: frozenset[str]
    image: frozenset[str]
    version: frozenset[str]

    @classmethod
    def take(cls, storage: Storage, version: int) -> Snapshot:
        return cls(_names(storage.www_dir), _names(storage.image_dir),
                   _names(storage.image(version)))

    def additions(self, storage: Storage, version: int) -> list[Path]:
        """What appeared since :meth:`take` (the markers aside: they are restored)."""
        keep = {storage.latest_image_marker.name}
        found = []
        for parent, before in ((storage.www_dir, self.www), (storage.image_dir, self.image),
                               (storage.image(version), self.version)):
            found += [parent / name for name in sorted(_names(parent) - before - keep)]
        return found

    def remove_additions(self, storage: Storage, version: int) -> list[Path]:
        """Remove what appeared since :meth:`take`; returns what we may not remove.

        Files a root container wrote cannot be removed by a user who is not root.
        """
        with deferred_signals():
            for path in self.additions(storage, version):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
            return [p for p in self.additions(storage, version) if p.exists() or p.is_symlink()]


def _names(directory: Path) -> frozenset[str]:
    try:
        return frozenset(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        return frozenset()
