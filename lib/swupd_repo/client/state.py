"""The client's own state directory: staged objects, deltas, downloads and the version it set.

The 2016 client always used the host's ``/var/lib/swupd`` (format3 §7.2), so testing against a
prefix touched the host. Here the state directory belongs to one target: by default
``<root>/var/lib/swupd`` (a state path, never in a manifest comparison), or any directory the
caller names (scratch roots, read-only media).

The default location is inside a tree that a repository fills, so it is resolved the way the
target itself would resolve it, as if ``root`` were ``/``: a symlinked parent such as
``/var/lib -> /data/lib`` (absolute, or with ``..``) leads to ``<root>/data/lib``, never to the
host's ``/data/lib``. Inside the state directory nothing is followed: a symlink or other
object where ``staged``, ``delta`` or ``version`` belong (planted by a hostile repository or an
older client) is replaced, never written through, and :mod:`.apply` refuses to install or
delete anything at or below the state directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClientError
from .archive import remove_any

DEFAULT_RELATIVE = "var/lib/swupd"

#: Symlinks followed while resolving the state directory before giving up (Linux's limit).
MAX_LINKS = 40


def resolve_in_root(root: Path, relative: str, *, create: bool) -> Path:
    """``root/relative`` with every symlink resolved as if ``root`` were ``/``.

    An absolute link target restarts at ``root``; ``..`` never climbs above it. Missing
    directories are created (mode 0755) when ``create`` is set. The result is a path below
    ``root`` whose components are real directories at the time of the call.
    """
    done: list[str] = []
    todo = [p for p in relative.split("/") if p]
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return root.joinpath(*done, name, *todo)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
            todo.insert(0, name)  # look at it again: it may have been created as another type
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise ClientError(f"cannot resolve the state directory {relative} in {root}: "
                                  f"more than {MAX_LINKS} symlinks (a loop?)")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ClientError(f"cannot use the state directory {relative} in {root}: "
                              f"{path} is not a directory",
                              hint="remove it, or pass --state-dir")
        done.append(name)
    return root.joinpath(*done)


def _open_dir(path: Path) -> int:
    """An fd of the real directory ``path`` (its last component is never followed)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _private_dir(path: Path) -> None:
    """Make ``path`` a real directory with mode 0700, replacing a symlink or non-directory
    there, and without ever chmodding what a symlink points to."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        st = None
    if st is None:
        os.mkdir(path, 0o700)
    fd = _open_dir(path)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StateDir:
    """Where one run keeps its state. ``root`` is set for the default location inside the
    target (then :meth:`reresolve` finds it again after the target changed)."""

    path: Path
    root: Path | None = None

    @classmethod
    def for_root(cls, root: Path, state_dir: Path | None = None) -> StateDir:
        if state_dir is not None:
            return cls(Path(state_dir))
        return cls(resolve_in_root(root, DEFAULT_RELATIVE, create=True), root)

    def reresolve(self) -> StateDir:
        """The same state directory looked up again (after the target's parents changed,
        e.g. an image made ``/var/lib`` a symlink)."""
        if self.root is None:
            return self
        return StateDir(resolve_in_root(self.root, DEFAULT_RELATIVE, create=True), self.root)

    def inside(self, root: Path) -> tuple[str, ...] | None:
        """The state directory as path components below ``root``, or None if outside it."""
        here, base = os.path.realpath(self.path), os.path.realpath(root)
        if here == base:
            return ()
        if not here.startswith(base.rstrip("/") + "/"):
            return None
        return tuple(Path(here).relative_to(base).parts)

    @property
    def staged(self) -> Path:
        return self.path / "staged"

    @property
    def delta(self) -> Path:
        return self.path / "delta"

    @property
    def downloads(self) -> Path:
        return self.path / "download"

    @property
    def version_file(self) -> Path:
        return self.path / "version"

    def ensure(self) -> None:
        """Create the state directory and its subdirectories, each private (0700)."""
        if self.root is None:  # the caller's own directory: followed if it is a link
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        else:
            _private_dir(self.path)
        for directory in (self.staged, self.delta, self.downloads):
            _private_dir(directory)

    def write_version(self, version: int) -> None:
        """Write ``version`` (a temporary file renamed over it: a symlink there is replaced,
        never followed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".version.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"{version}\n")
        if os.path.isdir(self.version_file) and not os.path.islink(self.version_file):
            remove_any(self.version_file)  # rename cannot replace a directory
        os.rename(tmp, self.version_file)
