"""Walk ``image/<V>/os-core`` into records: what each path is and its swupd hash.

Mode, owner, device number and xattrs come from the tree's metadata record
(:mod:`swupd_repo.treemeta`), size, times and content from the tree on disk, so no root and
no pseudo are needed. A tree stored before records existed is read as it is on disk:
``lstat`` (numeric owner, full mode, rdev) and ``llistxattr``/``lgetxattr`` of the path itself.
Regular files are hashed in a bounded process pool, streamed in 1 MiB chunks; symlinks,
directories and special files are hashed inline (their data is tiny or empty, §3, §9.3).

Hashes already proven for this tree (by its extraction, an earlier scan, or the sharing of
unchanged files with the previous version) come from its side file
``image/<V>/.hashcache.json`` (:mod:`.hashcache`, which says what proves an entry); the scan
stores what it hashed there for the next run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError
from ..progress import Reporter
from ..treemeta import Meta, TreeMeta, from_disk
from ..treemeta import load as load_meta
from . import hashcache
from .hashing import CHUNK, hash_bytes, object_key
from .heuristics import refused_name
from .workpool import bounded_map

RACY_NS = hashcache.RACY_NS
CACHE_NAME = hashcache.NAME
#: A hashing job holds at most this many files or bytes, so progress moves and pools balance.
_BATCH_FILES = 256
_BATCH_BYTES = 32 << 20


@dataclass(slots=True)
class Record:
    """One path of the tree as swupd sees it."""

    path: str  # manifest path: "/usr/bin/foo" (never "/")
    disk: str  # path on disk
    type: str  # "F" (regular and special files), "D", "L"
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int  # st_size (a symlink's target length)
    mtime: int  # whole seconds, as tar stores it
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    hash: str = ""
    target: bytes = b""  # symlink target
    # cache key parts
    dev: int = 0
    ino: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    def hmac_key(self) -> bytes:
        """The key its data is hashed with (the stat fields and xattrs, §3)."""
        return object_key(self.mode, self.uid, self.gid, self.rdev, self.size, self.xattrs)

    def cache_key(self) -> list[object]:
        return [self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns,
                *hashcache.meta_key(Meta(self.mode, self.uid, self.gid, self.rdev, self.xattrs))]


@dataclass
class ScanResult:
    records: dict[str, Record]
    hashed: int = 0  # regular files whose data was read
    cached: int = 0  # regular files whose hash came from the cache
    skipped: list[str] = field(default_factory=list)  # refused names (with subtrees)


def walk(root: Path, reporter: Reporter, meta: TreeMeta | None = None) -> Iterator[Record]:
    """Every path below ``root`` (not ``root`` itself), unhashed; refused names are skipped.

    ``meta`` is the tree's checked record (None: metadata as this process sees the tree).
    Unlike the server (which trusts ``d_type``), a directory is recognised from ``lstat``, so
    filesystems that report ``DT_UNKNOWN`` lose nothing (§9.5).
    """
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        disk_dir, man_dir = stack.pop()
        try:
            entries = list(os.scandir(disk_dir))
        except OSError as exc:
            raise BuildError(f"cannot read directory {disk_dir}: {exc.strerror}",
                             hint="the generator needs read access to the whole tree") from exc
        for entry in entries:
            name = entry.name
            man_path = f"{man_dir}/{name}"
            why = refused_name(name)
            if why:
                reporter.warning(f"skipping {man_path} and everything below it: the name {why}, "
                                 "which swupd-server refuses (format3 §9.5)")
                continue
            if "\n" in name:
                raise BuildError(f"{entry.path}: a file name with a newline cannot be written "
                                 "to a swupd manifest", hint="rename or remove it in the image")
            st = entry.stat(follow_symlinks=False)
            info = meta.get(man_path) if meta is not None else from_disk(entry.path, st)
            if stat.S_ISSOCK(info.mode):
                reporter.warning(f"skipping socket {man_path}: tar cannot carry sockets, so no "
                                 "client could install it")
                continue
            rec = _record(entry.path, man_path, st, info)
            if rec.type == "D":
                stack.append((entry.path, man_path))
            yield rec


def _record(disk: str, man_path: str, st: os.stat_result, info: Meta) -> Record:
    mode = info.mode
    kind = "D" if stat.S_ISDIR(mode) else "L" if stat.S_ISLNK(mode) else "F"
    rec = Record(path=man_path, disk=disk, type=kind, mode=mode, uid=info.uid, gid=info.gid,
                 rdev=info.rdev, size=st.st_size, mtime=int(st.st_mtime),
                 xattrs=info.xattrs, dev=st.st_dev, ino=st.st_ino,
                 mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    if kind == "L":
        rec.target = os.readlink(os.fsencode(disk))
        rec.size = len(rec.target)
        rec.hash = hash_bytes(mode, rec.uid, rec.gid, rec.rdev, rec.size, rec.xattrs, rec.target)
    elif kind == "D":
        rec.size = 0
        rec.hash = hash_bytes(mode, rec.uid, rec.gid, rec.rdev, 0, rec.xattrs,
                              man_path.encode("utf-8", "surrogateescape"))
    elif not stat.S_ISREG(mode):
        # devices and fifos: hashed as a file with empty data, never opened (§9.3)
        rec.hash = hash_bytes(mode, rec.uid, rec.gid, rec.rdev, rec.size, rec.xattrs, b"")
    return rec


def hash_file_batch(jobs: list[tuple[str, bytes, int]]) -> list[str]:
    """Worker: hash regular files given (disk path, HMAC key, expected size).

    Refuses a file whose length changed under us: its hash would match no real state.
    """
    out = []
    for disk, key, size in jobs:
        mac = hmac.new(key, b"", hashlib.sha256)
        seen = 0
        with open(disk, "rb") as f:
            while chunk := f.read(CHUNK):
                mac.update(chunk)
                seen += len(chunk)
        if seen != size:
            raise BuildError(f"{disk} changed size while it was being hashed "
                             f"({size} -> {seen} bytes)",
                             hint="do not modify the image tree while a build runs")
        out.append(mac.hexdigest())
    return out


def scan_tree(root: Path, reporter: Reporter, *, executor: Executor | None = None,
              cache_file: Path | None = None, racy_ns: int = RACY_NS) -> ScanResult:
    """Records of every path below ``root`` with their hashes (§3).

    ``executor`` hashes regular files in parallel (None: inline); ``cache_file`` is read
    before and rewritten after hashing.
    """
    scan_start = time.time_ns()
    reporter.step(f"scanning {root}")
    if not root.is_dir():
        raise BuildError(f"{root} is not a directory", hint="extract the rootfs first")
    records: dict[str, Record] = {}
    meta = load_meta(root)
    if meta is None:
        reporter.info(f"{root} has no metadata record (stored before records existed): its "
                      "owners, modes and xattrs are read from the tree as this process sees it")
    for rec in walk(root, reporter, meta):
        records[rec.path] = rec
    result = ScanResult(records)
    cache = hashcache.load(cache_file) if cache_file else {}
    todo: list[Record] = []
    kept: set[str] = set()
    for rec in records.values():
        if not rec.is_regular:
            continue
        hit = cache.get(rec.path)
        if hit is not None and hit[:-1] == rec.cache_key():
            rec.hash = str(hit[-1])
            kept.add(rec.path)
        else:
            todo.append(rec)
    result.cached = len(kept)
    del cache
    result.hashed = len(todo)
    reporter.step("hashing files", total=len(todo))
    jobs = batch_records(todo, _BATCH_FILES, _BATCH_BYTES)
    for batch, digests in _run_batches(jobs, executor):
        for rec, digest in zip(batch, digests, strict=True):
            rec.hash = digest
        reporter.advance(len(batch))
    if cache_file is not None:
        entries = {r.path: [*r.cache_key(), r.hash] for r in records.values()
                   if r.is_regular and r.hash}
        hashcache.save_scanned(cache_file, entries, scan_start, racy_ns, keep=kept)
    return result


def batch_records(todo: list[Record], max_files: int, max_bytes: int
                  ) -> Iterator[list[Record]]:
    """Pool jobs of several records, so per-job overhead stays small against the work; a
    record of ``max_bytes`` or more is a job of its own, so big files spread over workers."""
    batch: list[Record] = []
    size = 0
    for rec in todo:
        if rec.size >= max_bytes:
            yield [rec]
            continue
        batch.append(rec)
        size += rec.size
        if len(batch) >= max_files or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _job(rec: Record) -> tuple[str, bytes, int]:
    return (rec.disk, rec.hmac_key(), rec.size)


def _run_batches(batches: Iterator[list[Record]], executor: Executor | None
                 ) -> Iterator[tuple[list[Record], list[str]]]:
    # 64 batches in flight: bounds memory of queued jobs, keeps every worker busy
    jobs = ((batch, ([_job(r) for r in batch],)) for batch in batches)
    return bounded_map(executor, hash_file_batch, jobs, 64)
