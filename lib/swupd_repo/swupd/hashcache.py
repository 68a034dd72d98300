"""Proven swupd hashes of a stored tree's regular files: ``image/<V>/.hashcache.json``.

Every regular file of a version is hashed (format3 §3) by whoever last read or wrote all of
its bytes: the extraction hashes what it writes, the scan what it reads. This side file keeps
those hashes so a later step (the scan of the same run, a ``build`` in another process, the
sharing of unchanged files with the next version) need not read the bytes again.

An entry is trusted only while it can be proven to describe the file: it names the path's
inode and everything that changes when its content or metadata could have changed (device,
inode, size, mtime_ns, ctime_ns, full mode, owner, rdev, xattrs of the tree's record).
ctime is the proof: every write, truncate, chmod, chown, link or rename of an inode moves it
to the filesystem's current time, and no user can set it. Size and mtime alone prove
nothing (Yocto clamps every mtime to ``SOURCE_DATE_EPOCH``).

The one gap of ctime is a change in the same clock tick as the hashed state. Each writer
closes it in its own way:

* :func:`save_scanned` (the scan read the bytes): only files whose ctime is at least
  ``racy_ns`` older than the start of the scan are stored; a change after the scan began
  gets a later ctime.
* :func:`save_written` (extraction and sharing wrote or linked the files themselves, in a
  tree no one else writes while the run holds it): the side file is only renamed into place
  once the filesystem's own clock, read as the side file's ctime, has passed every entry's
  ctime, so any change after the side file exists gets a later ctime.

A missing, unreadable or foreign side file is an empty one: the files are hashed again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import atomic_write_text, fsync_dir, temp_path
from ..treemeta import Meta
from .hashing import xattr_blob

NAME = ".hashcache.json"
_FORMAT = 1
#: Scanned entries younger than this (relative to the scan's start) are not stored.
RACY_NS = 2_000_000_000
#: How long :func:`save_written` waits at most for the filesystem's clock to tick.
_TICK_WAIT_S = 2.5

Entry = list[Any]  # key (see entry_key) + [hash]


def cache_path(tree: Path) -> Path:
    """Where the side file of ``image/<V>/os-core`` lives: ``image/<V>/.hashcache.json``."""
    return tree.parent / NAME


def entry_key(st: os.stat_result, meta: Meta) -> list[object]:
    """What must be equal for a stored hash to hold: the inode's identity and times, and the
    record's metadata the hash is keyed with (:func:`meta_key`)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, *meta_key(meta)]


def meta_key(meta: Meta) -> list[object]:
    """The record's part of :func:`entry_key` (its last fields): the one spelling of it, for
    writers that know the inode's fields without a ``stat`` (scan, extraction)."""
    return [meta.mode, meta.uid, meta.gid, meta.rdev, xattr_blob(meta.xattrs).hex()]


#: Where :func:`meta_key` sits in an entry (the hash follows it).
_META = slice(5, -1)


def keyed_alike(entry: Entry, meta: Meta) -> bool:
    """Whether ``entry``'s hash was keyed with ``meta``'s metadata (whatever the inode)."""
    return entry[_META] == meta_key(meta)


def proven(entry: Entry | None, st: os.stat_result, meta: Meta) -> str | None:
    """The hash ``entry`` proves for the file ``st`` with metadata ``meta``, or None."""
    if entry is None or entry[:-1] != entry_key(st, meta):
        return None
    return str(entry[-1])


def same_but_ctime(entry: Entry | None, st: os.stat_result, meta: Meta) -> bool:
    """Whether ``entry`` names the file ``st`` with metadata ``meta`` in everything but its
    ctime: a hint (the file may have been rewritten in place), never a proof of its hash."""
    if entry is None:
        return False
    return entry[:4] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] and \
        keyed_alike(entry, meta)


def same_content(a: Entry, b: Entry) -> bool | None:
    """Whether two proven entries' files hold the same bytes: their hashes decide when they
    were keyed alike (same size, mode, owner, rdev, xattrs); None when they cannot tell."""
    if a[2] != b[2]:
        return False  # sizes differ
    if a[_META] != b[_META]:
        return None
    return a[-1] == b[-1]


def load(path: Path) -> dict[str, Entry]:
    """The side file's entries (manifest path -> key + hash); empty when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def save_scanned(path: Path, entries: Mapping[str, Entry], scan_start_ns: int,
                 racy_ns: int = RACY_NS, keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Store entries of files the scan read; ``keep`` names entries that came proven from the
    side file itself (stored again whatever their age)."""
    limit = scan_start_ns - racy_ns
    chosen = {p: e for p, e in entries.items() if p in keep or e[4] < limit}
    atomic_write_text(path, _encode(chosen))


def save_written(path: Path, entries: Mapping[str, Entry]) -> int:
    """Store entries of files this run wrote or linked itself; returns how many were stored.

    The side file is created first and touched until its own ctime (the filesystem's clock)
    is past every entry's ctime (at most a tick or two); an entry still not older after
    :data:`_TICK_WAIT_S` (a clock far off, or a file changed meanwhile) is left out.
    """
    newest = max((e[4] for e in entries.values()), default=0)
    tmp = temp_path(path.parent, path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        clock = os.fstat(fd).st_ctime_ns
        deadline = time.monotonic() + _TICK_WAIT_S
        while clock <= newest and time.monotonic() < deadline:
            time.sleep(0.002)
            os.utime(fd)
            clock = os.fstat(fd).st_ctime_ns
        chosen = {p: e for p, e in entries.items() if e[4] < clock}
        with os.fdopen(fd, "w", closefd=False) as f:
            f.write(_encode(chosen))
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(chosen)


def _encode(entries: Mapping[str, Entry]) -> str:
    return json.dumps({"format": _FORMAT, "entries": entries}, separators=(",", ":"))
