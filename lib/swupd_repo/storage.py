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
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageBusyError, StorageError
from .swupd.workpool import die_with_parent, prctl

#: Prefix of every temporary name we create inside the storage; the next run removes them.
TEMP_PREFIX = ".swupd-repo-tmp-"
#: ``www/<TEMP_PREFIX>publishing-<V>.<pid>``: www/<V> is this run's until the markers name it.
_PUBLISHING = re.compile(re.escape(TEMP_PREFIX) + r"publishing-(\d+)\.\d+$")
#: In a directory where a run hid its temporaries from a container (see
#: ``backends.storage_guard.hidden_temporaries``): ``<name there>\t<storage path>`` per line.
HIDDEN_JOURNAL = "hidden.journal"
#: ``<TEMP_PREFIX>old-<name>.<pid>``: the tree :meth:`Storage.replacing` set aside for <name>.
_ASIDE = re.compile(re.escape(TEMP_PREFIX) + r"old-(.+)\.\d+$")

#: Write errors that mean "the storage's filesystem cannot take more", with what to do.
SPACE_ERRORS = {
    errno.ENOSPC: "free space on the filesystem holding {root} (df {root}) or point "
                  "SWUPD_REPO_STORAGE_DIR / --storage at a larger one, then run again",
    errno.EDQUOT: "raise the disk quota of this user on {root} or free space in it, then run "
                  "again",
    errno.EROFS: "remount the filesystem holding {root} read-write or point "
                 "SWUPD_REPO_STORAGE_DIR / --storage at a writable one",
}


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
    _write_file(tmp, data, mode, sync=durable)
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
        the next build starts from; devices keep the ``latest`` they had. Both new files are
        written (and synced) before either is renamed, so a full disk fails before anything
        moved; renames need no space.
        """
        text = f"{version}\n".encode()
        markers = ((self.latest_www_marker,) if release else ()) + (self.latest_image_marker,)
        staged: list[Path] = []
        try:
            for marker in markers:
                marker.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_path(marker.parent, f"new-{marker.name}")
                staged.append(tmp)
                _write_file(tmp, text, 0o644, sync=True)
            for tmp, marker in zip(staged, markers, strict=True):
                os.replace(tmp, marker)
            for marker in markers:
                fsync_dir(marker.parent)
        finally:
            for tmp in staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    @contextlib.contextmanager
    def publishing(self, version: int) -> Iterator[None]:
        """Mark ``www/<version>`` as this run's until the block ends.

        The markers are the commit point: a run killed after its ``www/<V>`` is in place but
        before they name V leaves the flag, and the next run removes that never-published
        ``www/<V>`` (:meth:`clean_leftovers`) instead of refusing it as already there. A
        version the block leaves unreleased on purpose (it ended normally) stays.
        """
        self.www_dir.mkdir(parents=True, exist_ok=True)
        flag = temp_path(self.www_dir, f"publishing-{version}")
        flag.touch()
        fsync_dir(self.www_dir)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # a flag left is cleaned like a killed run's
                flag.unlink()

    def is_publishing_flag(self, path: Path) -> bool:
        """Whether ``path`` is a :meth:`publishing` flag (``www/`` holds them)."""
        return path.parent == self.www_dir and _PUBLISHING.match(path.name) is not None

    def write_error(self, exc: OSError, doing: str | None = None) -> StorageError | None:
        """The one-line error for a write the storage's filesystem refused for lack of
        space, quota or writability (None for any other error: that one is not the user's)."""
        hint = SPACE_ERRORS.get(exc.errno or 0)
        if hint is None:
            return None
        where = f" at step '{doing}'" if doing else ""
        name = f" ({exc.filename})" if exc.filename else ""
        return StorageError(
            f"storage {self.root}: {exc.strerror or os.strerror(exc.errno or 0)}{where}"
            f"{name}; nothing was published and earlier versions are unchanged",
            hint=hint.format(root=self.root))

    def write_release_marker(self, version: int) -> None:
        """Point devices at ``version``, already built (``swupd-repo release``)."""
        atomic_write_text(self.latest_www_marker, f"{version}\n")

    temp_path = staticmethod(temp_path)

    def clean_leftovers(self) -> list[Path]:
        """Remove temporary trees a failed or killed run left behind; returns what went.

        Only called with the lock held, so no live run owns them. A ``www/<V>`` that a killed
        run put in place but never released (its :meth:`publishing` flag is left, V above
        latest) goes too.
        """
        for journal in sorted(self.root.glob(f"*/hidden/{HIDDEN_JOURNAL}")):
            self.restore_hidden(journal.parent)  # a killed container run's, first
        removed = list(self.temporaries())
        for aside in list(removed):
            match = _ASIDE.match(aside.name)
            if match:  # a killed replacement: its old tree stands again, the new one goes
                original = aside.parent / match.group(1)
                remove_tree(original)
                aside.rename(original)
                removed.remove(aside)
        latest = self.latest()
        for flag in list(removed):
            match = _PUBLISHING.match(flag.name) if self.is_publishing_flag(flag) else None
            if match and int(match.group(1)) > latest and self.www(int(match.group(1))).exists():
                removed.append(self.www(int(match.group(1))))
        for entry in removed:
            remove_tree(entry)
        return removed

    def restore_hidden(self, hiding_place: Path) -> list[Path]:
        """Put back what a killed run hid from a container (a forced rebuild's set-aside
        tree above all) where :meth:`clean_leftovers` finds it; returns what went back."""
        try:
            lines = (hiding_place / HIDDEN_JOURNAL).read_text(
                encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError:
            return []
        restored = []
        for line in lines:
            name, _, where = line.partition("\t")
            target, original = hiding_place / name, self.root / where
            if name and where and target.exists() and not os.path.lexists(original):
                with contextlib.suppress(OSError):
                    target.rename(original)
                    restored.append(original)
        return restored

    @contextlib.contextmanager
    def replacing(self, path: Path) -> Iterator[None]:
        """Replace ``path`` (if it exists) with what the block writes there, or lose nothing.

        The old tree is set aside under a temporary name first (``old-<name>``, see
        :data:`_ASIDE`); if the block fails, what it wrote at ``path`` goes and the old tree is
        put back; if it succeeds, the old tree goes. A killed run leaves the copy, which
        :meth:`clean_leftovers` puts back: the run never committed, so the old one stands.
        """
        aside = self.temp_path(path.parent, f"old-{path.name}") if os.path.lexists(path) \
            else None
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
    def lock(self, wait: bool = True, notify: Callable[[str], None] | None = None
             ) -> Iterator[HeldLock]:
        """One writer per storage directory (``flock`` on ``STORAGE/.lock``).

        The holder writes who it is into the file (:class:`LockRecord`), so a run that must
        wait can say for whom (through ``notify``, again whenever the holder's step changes
        and every :data:`WAIT_REPORT_SECONDS`); with ``wait`` False it fails at once.
        Processes forked while the lock is held never hold it themselves and die with the
        run (:func:`_after_fork_in_child`).
        """
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
            self._acquire(fd, wait, notify)
            _guard_forks()
            _HELD_LOCKS[fd] = os.getpid()
            held = HeldLock(fd, LockRecord(os.getpid(), _command_line(), time.time()))
            with contextlib.suppress(OSError):  # a full disk fails the run's first real write
                held.write()
            yield held
        finally:
            _HELD_LOCKS.pop(fd, None)
            os.close(fd)

    def lock_holder(self) -> LockRecord | None:
        """Who holds (or last held) the lock, as it wrote itself; None when unknown."""
        try:
            return LockRecord.parse((self.root / ".lock").read_bytes())
        except OSError:
            return None

    def _acquire(self, fd: int, wait: bool, notify: Callable[[str], None] | None) -> None:
        if _try_flock(fd):
            return
        holder = self.lock_holder()
        if not wait:
            raise StorageBusyError(
                f"storage {self.root} is in use by {_describe(holder)}",
                hint="wait for it to finish, or run without --no-wait to wait for it")
        say = notify or (lambda _message: None)
        say(f"storage {self.root} is in use by {_describe(holder)}; waiting for it to finish "
            "(--no-wait fails instead)")
        start = last = time.monotonic()
        step = holder.step if holder else None
        while not _try_flock(fd):
            time.sleep(WAIT_POLL_SECONDS)
            now = time.monotonic()
            holder = self.lock_holder()
            new_step = holder.step if holder else None
            if new_step != step or now - last >= WAIT_REPORT_SECONDS:
                say(f"still waiting for {_describe(holder)} ({now - start:.0f} s)")
                step, last = new_step, now


#: How often a waiting run tries the lock again, and reports that it still waits.
WAIT_POLL_SECONDS = 0.2
WAIT_REPORT_SECONDS = 30.0


@dataclass
class LockRecord:
    """What the holder of ``STORAGE/.lock`` says about itself (one JSON line in the file)."""

    pid: int
    command: str
    since: float
    step: str | None = None

    def to_bytes(self) -> bytes:
        return (json.dumps({"pid": self.pid, "command": self.command, "since": self.since,
                            "step": self.step}) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> LockRecord | None:
        """The record, or None for an empty, older-format or half-written file."""
        try:
            raw = json.loads(data)
            return cls(int(raw["pid"]), str(raw["command"]), float(raw["since"]),
                       None if raw.get("step") is None else str(raw["step"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class HeldLock:
    """The held lock: :meth:`status` tells waiting runs what this run is doing."""

    fd: int
    record: LockRecord

    def status(self, step: str) -> None:
        self.record.step = step
        with contextlib.suppress(OSError):  # informative only: a full disk must not fail us
            self.write()

    def write(self) -> None:
        data = self.record.to_bytes()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _command_line() -> str:
    """What a user would recognise the run by: ``swupd-repo publish ...``, ``bitbake ...``."""
    argv = sys.argv if sys.argv and sys.argv[0] else ["python3"]
    if argv[0].endswith(os.path.join("swupd_repo", "cli.py")):
        args = ["swupd-repo", *argv[1:]]
    elif os.path.basename(argv[0]) == "__main__.py":
        args = list(getattr(sys, "orig_argv", argv))
    else:
        args = [os.path.basename(argv[0]), *argv[1:]]
    text = " ".join(args)
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(holder: LockRecord | None) -> str:
    """``another run: pid N (its command, since HH:MM:SS, now <step>)``."""
    if holder is None:
        return "another run"
    since = time.strftime("%H:%M:%S", time.localtime(holder.since))
    doing = f", now {holder.step}" if holder.step else ""
    if not os.path.exists(f"/proc/{holder.pid}"):
        return (f"another run: a process left by pid {holder.pid} ({holder.command}, started "
                f"{since}), which has exited (`fuser -v .lock` in the storage names it)")
    return f"another run: pid {holder.pid} ({holder.command}, since {since}{doing})"


# --------------------------------------------------------------------------- forked children
#
# A forked process shares the parent's open file description of STORAGE/.lock, and with it
# the flock: pool workers that outlive a SIGKILLed run would keep the storage locked forever.
# Every pool (hashing, fullfiles, packs, deltas) is forked while the lock is held, so the fix
# sits here, once, for all of them: the child closes its copy of the lock at once (the
# parent's lock is untouched: it belongs to the description, which the parent still holds)
# and asks the kernel to kill it when the run dies. Process-wide by nature (fork is).

#: Lock fds this process holds -> its pid.
_HELD_LOCKS: dict[int, int] = {}
_FORK_STATE = {"registered": False, "parent": 0, "guarded": False}


def _guard_forks() -> None:
    if _FORK_STATE["registered"]:
        return
    prctl()  # looked up now: not in a child forked from threads
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _FORK_STATE["registered"] = True


def _before_fork() -> None:
    _FORK_STATE["parent"] = os.getpid()


def _after_fork_in_child() -> None:
    """In a child forked while a lock is held (or from such a child): drop the lock, die
    with the parent."""
    if not _HELD_LOCKS and not _FORK_STATE["guarded"]:
        return
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()
    _FORK_STATE["guarded"] = True
    die_with_parent(int(_FORK_STATE["parent"]))


def _write_file(path: Path, data: bytes, mode: int, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
