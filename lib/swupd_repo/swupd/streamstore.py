"""One content-addressed store of compressed pack streams for a whole storage directory.

Why: a pack is a tar of members split into independent xz streams (:mod:`.packstream`), and
the stream of a group of members is the same bytes whichever pack carries it: the zero pack
of every version and the delta packs from each earlier version. Keeping each stream once, by
what determines its bytes (:func:`.packstream.group_key`: member names, their headers'
sources and the compression settings), lets every later pack copy it instead of compressing
the same content again, so a file's content is compressed once in the life of a storage.

Where: ``STORAGE/.swupd-repo-cache/streams/<kk>/<key>.xz`` (beside ``www``, never inside it:
devices must not be served a cache). Any run may delete the whole directory; it is rebuilt
by the next builds as they compress.

Never trusted blindly: each entry is the stream followed by a trailer holding its length and
SHA-256 (:data:`_TRAILER`). A reader checks the trailer, the checksum and the xz magic before
using the bytes; a damaged entry is dropped and the caller compresses again.

Concurrency: entries are written to a temporary name in the same directory and renamed into
place, so a reader sees a whole entry or none; pruning unlinks, which leaves a reader that
already opened the entry reading the old inode. Writers are serialised by the storage lock.

Other owners: the store may hold entries (and directories) a run as another user made, e.g.
root inside the Docker backend's container. A run that may not write there uses what it can
read and treats the rest as misses: a damaged entry it may not remove is *skipped* (a miss
for the rest of the run, so each pack compresses that group in the pool instead of checking
the same bad bytes again), and once a directory of the store refuses a write for lack of
permission no more are attempted there. Nothing of it fails the build: the group is
compressed as if it had never been stored.

Size: :meth:`StreamStore.prune` keeps the store under a bound, dropping the entries used
least recently first (an entry's mtime is touched when it is used) and never the ones the
current build used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

#: Default bound of the store (bytes); never below what the current build used.
DEFAULT_LIMIT = 4 << 30
#: Store location relative to the storage directory.
#: The storage's cache directory (beside ``www``; kept between runs, never served).
CACHE_DIR = ".swupd-repo-cache"
STORE_DIR = f"{CACHE_DIR}/streams"
_MAGIC = b"swst0001"
_TRAILER = struct.Struct("<Q32s8s")  # stream length, sha256 of the stream, magic
_XZ_MAGIC = b"\xfd7zXZ\x00"
_CHUNK = 1 << 20
#: Temporary files older than this are leftovers of a killed run.
_STALE_TEMP_S = 3600


class StreamStore:
    """Verified xz streams by key (a hex digest)."""

    def __init__(self, root: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.root = root
        self.limit = limit
        self.used: set[str] = set()  # keys read or written by this build
        self.hits = 0
        self.dropped = 0
        #: damaged entries this process may not remove (another owner's): misses from now on
        self.skipped: set[str] = set()
        #: subdirectories that refused a write for lack of permission (another owner's)
        self.refused: set[Path] = set()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.xz"

    def has(self, key: str) -> bool:
        """Cheap look (trailer and magic only); :meth:`copy_into` verifies the bytes."""
        if key in self.skipped:
            return False
        try:
            fd = os.open(self.path(key), os.O_RDONLY)
        except OSError:
            return False
        try:
            return _length(fd) is not None
        except OSError:
            return False
        finally:
            os.close(fd)

    def copy_into(self, key: str, out: BinaryIO) -> int | None:
        """Append the entry's stream to ``out`` and return its length, checking its SHA-256
        on the way; on any mismatch ``out`` is cut back, the entry removed, None returned."""
        path = self.path(key)
        out.flush()
        start = out.tell()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            length = _length(fd)
            ok = length is not None and _copy_checked(fd, length, out)
        except OSError:
            ok = False
        finally:
            os.close(fd)
        if not ok:
            out.seek(start)
            out.truncate()
            try:
                path.unlink()
                self.dropped += 1
            except FileNotFoundError:
                self.dropped += 1
            except OSError:  # another owner's entry: a miss for the rest of this run
                self.skipped.add(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
        self.used.add(key)
        self.hits += 1
        return length

    def put(self, key: str, src_fd: int, offset: int, length: int) -> None:
        """Store ``length`` bytes of ``src_fd`` from ``offset`` (a whole xz stream) as
        ``key``; atomic, best effort (a full disk or another owner's store only costs the
        reuse)."""
        path = self.path(key)
        if key in self.skipped or path.parent in self.refused:
            return
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                pos, left = offset, length
                while left:
                    data = os.pread(src_fd, min(_CHUNK, left), pos)
                    if not data:
                        raise OSError("short read while storing a stream")
                    digest.update(data)
                    out.write(data)
                    pos += len(data)
                    left -= len(data)
                out.write(_TRAILER.pack(length, digest.digest(), _MAGIC))
            os.replace(tmp, path)
            self.used.add(key)
        except OSError as exc:
            if isinstance(exc, PermissionError):
                self.refused.add(path.parent)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def prune(self, keep_at_least: int = 0) -> int:
        """Drop the least recently used entries until the store fits its bound (raised to
        ``keep_at_least``); entries this build used stay. Returns the bytes removed."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        now = time.time()
        for sub in _scandir(self.root):
            for entry in _scandir(Path(sub.path)):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                if entry.name.startswith(".tmp-"):
                    if now - st.st_mtime > _STALE_TEMP_S:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                total += st.st_size
                if entry.name.removesuffix(".xz") not in self.used:
                    entries.append((st.st_mtime, st.st_size, Path(entry.path)))
        bound = max(self.limit, keep_at_least)
        removed = 0
        for _mtime, size, path in sorted(entries):
            if total <= bound:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                removed += size
        return removed


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _length(fd: int) -> int | None:
    """The stream length when the entry's trailer and xz magic hold (not the checksum)."""
    size = os.fstat(fd).st_size
    if size < _TRAILER.size + 32:
        return None
    length, _digest, magic = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))
    if magic != _MAGIC or length != size - _TRAILER.size:
        return None
    if os.pread(fd, len(_XZ_MAGIC), 0) != _XZ_MAGIC:
        return None
    return length


def _copy_checked(fd: int, length: int, out: BinaryIO) -> bool:
    expected = _TRAILER.unpack(os.pread(fd, _TRAILER.size, length))[1]
    digest = hashlib.sha256()
    pos = 0
    while pos < length:
        data = os.pread(fd, min(_CHUNK, length - pos), pos)
        if not data:
            return False
        digest.update(data)
        out.write(data)
        pos += len(data)
    return digest.digest() == expected
