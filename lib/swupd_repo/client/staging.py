"""Getting each object into ``staged/<hash>`` and proving it has that hash.

Three sources, in the client's order of preference (format3 §5, §7.4): a delta applied to the
file already on the target, a pack's ``staged/<H>``, a fullfile ``<L>/files/<H>.tar``. Unlike
the 2016 client, nothing is used before its swupd hash (with xattrs) equals the manifest's:
a fullfile or pack member that fails is an error naming the URL; a delta that fails just falls
back to the fullfile (the target's old file may have been changed locally).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from pathlib import Path

from ..errors import ClientError, SwupdRepoError
from ..progress import Reporter
from ..swupd.hashing import hash_path
from ..swupd.manifest import Entry
from ..swupd.names import delta_name, fullfile_relpath, pack_name
from .archive import (
    ARCHIVE_ERRORS,
    needs_root,
    open_tar,
    remove_any,
    strip_dot,
    write_file,
    write_member,
)
from .http import Fetcher
from .report import ClientStats
from .state import StateDir

_HASH = re.compile(r"[0-9a-f]{64}\Z")
_DELTA = re.compile(r"[0-9]+-[0-9]+-[0-9a-f]{64}\Z")


class Staging:
    """The staged objects of one run; ``ensure`` returns a path whose hash has been checked."""

    def __init__(self, state: StateDir, fetcher: Fetcher, stats: ClientStats,
                 reporter: Reporter) -> None:
        self.state = state
        self.fetcher = fetcher
        self.stats = stats
        self.reporter = reporter
        self._verified: set[str] = set()
        self._pack_of: dict[str, str] = {}  # hash -> URL of the pack that brought it
        #: path -> the most its fullfile may hold, where a manifest tells (see size_bounds)
        self.size_bounds: dict[str, int] = {}
        state.ensure()

    # -- packs ---------------------------------------------------------------------------

    def stage_pack(self, bundle: str, from_version: int, to_version: int, *,
                   required: bool) -> bool:
        """Download and unpack ``<to>/pack-<b>-from-<from>.tar``; False if it is not published.

        Members other than ``staged/<H>`` and ``delta/<F>-<T>-<H>`` are ignored, so a pack
        cannot write anywhere else.
        """
        path = f"{to_version}/{pack_name(bundle, from_version)}"
        url = self.fetcher.url(path)
        part = self.state.downloads / "pack.tar"
        try:
            if not self.fetcher.fetch(path, part, optional=not required):
                self.reporter.info(f"no pack {url}; using fullfiles")
                return False
            self.stats.packs.append(path)
            written: dict[str, Path] = {}
            with open(part, "rb") as f, open_tar(f) as tar:
                for member in tar:
                    self._unpack_member(tar, member, url, written)
        except PermissionError as exc:
            raise needs_root(f"cannot unpack {url}", exc) from None
        except ARCHIVE_ERRORS as exc:
            raise ClientError(f"{url}: damaged pack: {exc}") from None
        finally:
            remove_any(part)
        return True

    def _unpack_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, url: str,
                       written: dict[str, Path]) -> None:
        name = strip_dot(member.name)
        top, _, rest = name.partition("/")
        if top == "staged" and _HASH.match(rest):
            dest = self.state.staged / rest
            self._verified.discard(rest)
            remove_any(dest)
            write_member(tar, member, dest, written)
            written[name] = dest
            self._pack_of[rest] = url
        elif top == "delta" and _DELTA.match(rest) and member.isreg():
            dest = self.state.delta / rest
            remove_any(dest)
            src = tar.extractfile(member)
            assert src is not None
            write_file(src, dest)

    # -- deltas --------------------------------------------------------------------------

    def try_delta(self, new: Entry, old: Entry, old_file: Path) -> bool:
        """Stage ``new`` by applying the pack's delta to the target's ``old_file``.

        The result gets the delta's mode and owner and the old file's xattrs (the server makes
        deltas only when xattrs are unchanged), and counts only if its hash is ``new.hash``.
        """
        delta = self.state.delta / delta_name(old.last_change, new.last_change, new.hash)
        if new.hash in self._verified or not delta.is_file():
            return False
        try:
            st = os.lstat(old_file)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        from ..swupd.delta import apply_delta

        tmp = self.state.staged / f".delta-{new.hash}"
        remove_any(tmp)
        try:
            data, mode, uid, gid = apply_delta(delta.read_bytes(), old_file.read_bytes())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.lchown(tmp, uid, gid)
            os.chmod(tmp, stat.S_IMODE(mode))
            for name in os.listxattr(old_file, follow_symlinks=False):
                os.setxattr(tmp, name, os.getxattr(old_file, name, follow_symlinks=False),
                            follow_symlinks=False)
            actual = hash_path(tmp, new.path)
        except (SwupdRepoError, OSError) as exc:
            self.reporter.warning(f"delta {delta.name} for {new.path} failed ({exc}); "
                                  "using the fullfile")
            self.stats.deltas_failed += 1
            remove_any(tmp)
            return False
        if actual != new.hash:
            self.reporter.warning(f"delta {delta.name} for {new.path} gave hash {actual}; "
                                  "using the fullfile")
            self.stats.deltas_failed += 1
            remove_any(tmp)
            return False
        dest = self.state.staged / new.hash
        remove_any(dest)
        os.rename(tmp, dest)
        self._verified.add(new.hash)
        self._pack_of.pop(new.hash, None)
        self.stats.deltas_applied += 1
        return True

    # -- fullfiles and the final check ---------------------------------------------------

    def ensure(self, entry: Entry) -> Path:
        """``staged/<H>`` for ``entry``, hash-checked; downloads the fullfile when needed."""
        dest = self.state.staged / entry.hash
        if entry.hash in self._verified:
            return dest
        if os.path.lexists(dest):
            actual = hash_path(dest, entry.path)
            if actual == entry.hash:
                self._verified.add(entry.hash)
                if entry.hash in self._pack_of:
                    self.stats.from_pack += 1
                return dest
            pack = self._pack_of.get(entry.hash)
            if pack is not None:
                raise ClientError(f"{pack}: staged/{entry.hash} (for {entry.path}) hashes to "
                                  f"{actual}; the pack is corrupt or was tampered with")
            remove_any(dest)  # a stale object from an earlier run
        self._stage_fullfile(entry, dest)
        return dest

    def _stage_fullfile(self, entry: Entry, dest: Path) -> None:
        path = fullfile_relpath(entry.last_change, entry.hash)
        url = self.fetcher.url(path)
        part = self.state.downloads / "fullfile.tar"
        tmp = self.state.staged / f".full-{entry.hash}"
        remove_any(tmp)
        names: list[str] = []
        try:
            self.fetcher.fetch(path, part, limit=self.size_bounds.get(entry.path))
            with open(part, "rb") as f, open_tar(f) as tar:
                for member in tar:
                    names.append(strip_dot(member.name))
                    if names == [entry.hash]:
                        write_member(tar, member, tmp)
        except PermissionError as exc:
            remove_any(tmp)
            raise needs_root(f"cannot stage {url}", exc) from None
        except ARCHIVE_ERRORS as exc:
            remove_any(tmp)
            raise ClientError(f"{url}: damaged fullfile: {exc}") from None
        except BaseException:
            remove_any(tmp)
            raise
        finally:
            remove_any(part)
        if names != [entry.hash]:
            remove_any(tmp)
            raise ClientError(f"{url}: expected exactly one member {entry.hash}, found "
                              f"{len(names)}: {', '.join(names[:3])}")
        actual = hash_path(tmp, entry.path)
        if actual != entry.hash:
            remove_any(tmp)
            raise ClientError(f"{url}: content for {entry.path} hashes to {actual}, not "
                              f"{entry.hash}; the fullfile is corrupt or was tampered with")
        os.rename(tmp, dest)
        self._verified.add(entry.hash)
        self.stats.from_fullfile += 1
