"""Undoing what a tool that writes into the storage behind our back did (the container).

The swupd-server container writes ``www/<V>``, ``image/<V>/full``, both ``latest`` markers
and ``www/version/formatstaging/latest`` itself, leaves its scratch (``packstage/``, ``log/``,
``server.ini``, ``groups.ini``) at the storage root, and cleans our temporaries if it runs our
own generator. The backend contract wants the markers untouched and, after a failure, nothing
of the run left; earlier trees must never change. These context managers, :class:`Snapshot`
and :class:`TreeGuard` give that without knowing what the tool does inside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage import HIDDEN_JOURNAL, TEMP_PREFIX, atomic_write_text
from ..swupd.packs import NO_DELTA_FILE

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


def staging_marker(storage: Storage) -> Path:
    """``www/version/formatstaging/latest``: the real container raises it when lower; no
    client reads it and the native backend never writes it."""
    return storage.www_dir / "version" / "formatstaging" / "latest"


@contextlib.contextmanager
def restored_markers(storage: Storage) -> Iterator[None]:
    """Put both latest markers (and the container's staging marker) back as they were,
    whatever was written meanwhile.

    The marker directories are created first, by us: files a root container writes in them
    can then be replaced without root. A missing staging marker is given the current latest
    for the run: the real ``basic_creator.sh`` compares it as a number and prints
    ``[: : integer expression expected`` when it is absent.
    """
    staging = staging_marker(storage)
    markers = (storage.latest_www_marker, storage.latest_image_marker, staging)
    saved = {path: path.read_text() if path.is_file() else None for path in markers}
    created = [d for d in (storage.www_dir / "version", storage.latest_www_marker.parent,
                           staging.parent) if not d.exists()]
    for path in markers:
        path.parent.mkdir(parents=True, exist_ok=True)
    if saved[staging] is None:
        atomic_write_text(staging, f"{storage.latest()}\n")
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
def hidden_temporaries(storage: Storage, hiding_place: Path) -> Iterator[None]:
    """Move our own temporaries out of the tool's sight for the run.

    Our generator, run in a container, first cleans ``.swupd-repo-tmp-*`` leftovers
    everywhere it writes (:meth:`Storage.temporaries`, the storage root included); that would
    include the pipeline's copies of a ``www/<V>`` or ``image/<V>/os-core`` being replaced with
    ``force``. ``hiding_place`` (a directory on the storage's filesystem, so a rename does,
    and not one of those places) keeps them for the run. A journal written before each move
    lets the next run put them back (:meth:`Storage.restore_hidden`) if this one is killed.
    """
    moved: list[tuple[Path, Path]] = []
    # The publishing flag stays where a later run's clean_leftovers looks for it should this
    # run be killed; a generator in the container may clean it away, so it is put back.
    flags = [e for e in storage.temporaries() if storage.is_publishing_flag(e)]
    hiding_place.mkdir(parents=True, exist_ok=True)
    with open(hiding_place / HIDDEN_JOURNAL, "a", encoding="utf-8",
              errors="surrogateescape") as journal:
        for entry in list(storage.temporaries()):
            if entry in flags:
                continue
            target = hiding_place / str(len(moved))
            journal.write(f"{target.name}\t{entry.relative_to(storage.root).as_posix()}\n")
            journal.flush()
            os.fsync(journal.fileno())
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
            for flag in flags:
                with contextlib.suppress(OSError):
                    flag.touch()


@dataclass(frozen=True)
class Snapshot:
    """Top-level names before the run, so a run can remove exactly what it added.

    Everything a run adds is a new top-level entry of ``www/`` (``www/<V>`` with its partial
    packs), ``image/`` or ``image/<V>/`` (``full``), or of the storage root (the container's
    scratch: ``packstage/``, ``log/``, ``server.ini``, ``groups.ini``); earlier versions are
    only read (:class:`TreeGuard` proves it for ``image/``).
    """

    www: frozenset[str]
    image: frozenset[str]
    version: frozenset[str]
    root: frozenset[str]

    @classmethod
    def take(cls, storage: Storage, version: int) -> Snapshot:
        return cls(_names(storage.www_dir), _names(storage.image_dir),
                   _names(storage.image(version)), _names(storage.root))

    def scratch(self, storage: Storage, keep: frozenset[str] = frozenset()) -> list[Path]:
        """New entries of the storage root (but ``keep``): what the container left there
        and the native backend never writes."""
        return [storage.root / name
                for name in sorted(_names(storage.root) - self.root - keep)]

    def additions(self, storage: Storage, version: int) -> list[Path]:
        """What appeared since :meth:`take` (the markers aside: they are restored)."""
        keep = {storage.latest_image_marker.name}
        found = self.scratch(storage)
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
                _remove(path)
            return [p for p in self.additions(storage, version) if p.exists() or p.is_symlink()]

    def remove_scratch(self, storage: Storage, keep: frozenset[str] = frozenset()) -> list[Path]:
        """Remove the new entries of the storage root (a successful run's scratch); returns
        what we may not remove (root's)."""
        with deferred_signals():
            for path in self.scratch(storage, keep):
                _remove(path)
            return self.scratch(storage, keep)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


#: What a tree entry must keep across a run: inode, type and mode, owner, size, mtime, ctime
#: (it moves on every chmod, chown, xattr change, link or unlink of the inode and write, and
#: cannot be set back from user space) and link count.
EntryState = tuple[int, int, int, int, int, int, int, int]


class TreeChanged(Exception):
    """An earlier tree differs after the run; ``args[0]`` says where and how."""


@dataclass(frozen=True)
class TreeGuard:
    """The state of every entry of the trees a tool may read but must not change.

    ``image/<n>`` trees (``published=False``) are compared in full. The container gets
    read-only views of them, so the kernel already refuses any change (``hardlink``'s merges
    fail with EROFS/EXDEV); :meth:`verify` proves it after the run, so a view that was not
    read-only (a regression, a tool remounting) is an error instead of a silently damaged
    history. One ``lstat`` per entry: no data is read.

    Published ``www/<n>`` trees (``published=True``) must stay writable to the container:
    pack members are hard-linked from them (which moves their ctime and link count) and the
    real ``hardlink`` step may merge a file with an equal one of ``www/<V>`` (a new inode, the
    same bytes). There only each entry's presence, type, mode, owner and size are compared,
    and the deltas a build legitimately adds to earlier versions (``delta/``,
    ``.delta-none``) and our temporaries are left out.
    """

    trees: tuple[Path, ...]
    states: dict[str, EntryState]
    published: bool = False

    @classmethod
    def record(cls, trees: list[Path], *, published: bool = False) -> TreeGuard:
        return cls(tuple(trees), _tree_states(trees, published), published)

    def verify(self) -> None:
        """Raise :class:`TreeChanged` naming the first entry that appeared, went or changed;
        a file rather than the directory whose times its change moved, when there is one."""
        after = _tree_states(list(self.trees), self.published)
        changed = [path for path in sorted(self.states.keys() | after.keys())
                   if self.states.get(path) != after.get(path)]
        if not changed:
            return
        files = [p for p in changed if not stat.S_ISDIR((self.states.get(p) or after[p])[1])]
        path = (files or changed)[0]
        old, new = self.states.get(path), after.get(path)
        if old is None:
            raise TreeChanged(f"{path} appeared")
        if new is None:
            raise TreeChanged(f"{path} was removed")
        raise TreeChanged(f"{path} changed ({_what_changed(old, new)})")


_FIELDS = ("inode", "mode", "owner", "group", "size", "mtime", "ctime", "links")
#: Entries of a published ``www/<n>`` that a later build may add or rewrite.
_GROWING = ("delta", NO_DELTA_FILE)


def _what_changed(old: EntryState, new: EntryState) -> str:
    changed = [name for name, a, b in zip(_FIELDS, old, new, strict=True) if a != b]
    if "inode" in changed:
        return "replaced by another inode, e.g. a hard link to an equal file"
    if "links" in changed:
        return f"hard-linked with another file: {old[7]} -> {new[7]} links"
    if changed == ["ctime"]:
        return "ctime: xattrs, link count or data changed"
    return ", ".join(changed)


def _tree_states(trees: list[Path], published: bool) -> dict[str, EntryState]:
    states: dict[str, EntryState] = {}

    def note(path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if published:
            states[path] = (0, st.st_mode, st.st_uid, st.st_gid,
                            0 if stat.S_ISDIR(st.st_mode) else st.st_size, 0, 0, 0)
        else:
            states[path] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size,
                            st.st_mtime_ns, st.st_ctime_ns,
                            0 if stat.S_ISDIR(st.st_mode) else st.st_nlink)

    for tree in trees:
        note(str(tree))
        if not tree.is_dir() or tree.is_symlink():
            continue
        for top, dirs, files in os.walk(tree):
            if published and top == str(tree):
                dirs[:] = [d for d in dirs if d not in _GROWING]
                files = [f for f in files if f not in _GROWING]
            if published:
                dirs[:] = [d for d in dirs if not d.startswith(TEMP_PREFIX)]
                files = [f for f in files if not f.startswith(TEMP_PREFIX)]
            for name in (*dirs, *files):
                note(os.path.join(top, name))
    return states


def _names(directory: Path) -> frozenset[str]:
    try:
        return frozenset(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        return frozenset()
