"""Write the ext4 rootfs of a partition into ``image/<V>/os-core``, every byte of metadata kept.

What needs privileges is not put on disk: owners, modes, device numbers and xattrs of every
path go into the tree's metadata record (``image/<V>/os-core.meta``, :mod:`.treemeta`), and the
tree on disk is the extracting user's, with plain modes and device nodes as empty placeholder
files. So extraction needs no root, no ``[fakeroot]`` and no pseudo, and any later process
reads the same metadata. Times are set on disk (any owner may); a directory gets them only
after everything inside it exists, so its mtime sticks.

Safety: the tree is built in a temporary sibling of ``dest`` and renamed into place only when
complete. All creation is relative to directory file descriptors opened with ``O_NOFOLLOW``;
names containing ``/`` or NUL, the names ``.``/``..``, duplicate names and directory cycles are
errors, so a crafted image cannot make us write outside the target. File data is copied in
bounded chunks (``pread``/``pwrite``), holes stay holes.

Every regular file's swupd hash (format3 §3) is computed from the bytes as they are copied:
its key (mode, owner, size, xattrs) is known from the inode before the data is read. The
hashes go into the tree's side file (:mod:`.swupd.hashcache`), so the build that follows, in
this process or another, and the sharing with the previous version read no file again.

Given the previous version's stored tree (``share_with``), a file whose content that tree
already holds at the same path is not written at all: its bytes are read and hashed, and when
the hash, the metadata it is keyed with, size and mtime equal the previous file's proven ones
(:mod:`.swupd.hashcache`), the new path becomes a hard link to the previous inode (made
read-only on disk, as :mod:`.dedup` does). Nothing is written for it, nothing is renamed
later, and a killed extraction drops the links with its temporary tree.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Ext4Error, ExtractError
from .ext4 import Ext4Reader, Inode
from .progress import Reporter
from .storage import remove_tree, temp_path
from .swupd import hashcache
from .swupd.hashing import object_key
from .treemeta import Meta, RecordWriter, TreeMeta, disk_mode, is_placeholder, record_path
from .treemeta import load as load_meta

_ROOT_INODE = 2
_MAX_DEPTH = 400
_COPY_CHUNK = 8 << 20
_ZEROS = bytes(1 << 20)
#: A file with more holes than this is not hashed here (it would cost time for nothing the
#: image holds, e.g. a damaged inode claiming a terabyte); the build hashes it if it must.
_HASH_HOLES_MAX = 64 << 20
_ADVANCE_EVERY = 256
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ExtractStats:
    """What an extraction wrote (for the report line and for tests)."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    sockets: int = 0
    xattrs: int = 0
    bytes: int = 0
    hashed: int = 0  # regular files whose hash went into the side file
    shared: int = 0  # regular files linked to the previous tree's inode instead of written
    seconds: float = 0.0
    skipped_lost_found: int = 0
    warnings: list[str] = field(default_factory=list)


def extract_rootfs(dsk: Path, offset: int, size: int, dest: Path, reporter: Reporter, *,
                   max_file_size: int | None = None,
                   share_with: Path | None = None) -> ExtractStats:
    """Extract the ext4 filesystem at ``[offset, offset + size)`` of ``dsk`` into ``dest``,
    its metadata into ``dest``'s record (:func:`~.treemeta.record_path`).

    ``dest`` must not exist. On any error nothing is left behind. The record and the side file
    of hashes are renamed into place before the tree, so a stored tree never lacks its
    record. A regular file larger than ``max_file_size`` (apparent size) is refused:
    extracting it is cheap (holes stay holes), but every later step reads all of its bytes.
    ``share_with``: the previous version's stored tree (see the module docstring).
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise ExtractError(f"{dest} already exists",
                           hint="remove it first; extraction never merges into a tree")
    start = time.monotonic()
    try:
        reader = Ext4Reader.open(Path(dsk), offset, size)
    except FileNotFoundError:
        raise ExtractError(f"disk image {dsk} does not exist",
                           hint="set SWUPD_REPO_DISK_IMAGE / --dsk") from None
    except OSError as exc:
        raise ExtractError(f"cannot read disk image {dsk}: {exc.strerror}") from exc
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    tmp = temp_path(dest.parent, dest.name)
    installed = False
    hashes = hashcache.cache_path(dest)
    hashed = False
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(tmp):
                remove_tree(tmp)
            os.mkdir(tmp, 0o700)
        except OSError as exc:
            raise ExtractError(f"cannot create {tmp}: {exc.strerror}",
                               hint="set SWUPD_REPO_STORAGE_DIR / --storage to a writable "
                                    "directory with free space") from exc
        with RecordWriter(dest) as record:
            writer = _Writer(reader, tmp, reporter, record, max_file_size,
                             _Previous.load(share_with) if share_with is not None else None)
            stats = writer.run()
            record.install()
            installed = True
        entries = writer.hash_entries()
        hashed = True
        stats.hashed = hashcache.save_written(hashes, entries)
        del entries
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        if installed:
            record_path(dest).unlink(missing_ok=True)
        if hashed:
            hashes.unlink(missing_ok=True)
        for directory in created:  # innermost first; only the ones we made, if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    finally:
        reader.close()
    stats.seconds = time.monotonic() - start
    reporter.info(f"extracted {stats.files} files, {stats.directories} directories, "
                  f"{stats.symlinks} symlinks, {stats.hardlinks} hard links "
                  f"({stats.bytes / 1e6:.1f} MB) into {dest} in {stats.seconds:.1f} s"
                  + (f"; {stats.shared} files unchanged since {share_with}, linked instead "
                     "of written" if share_with is not None else ""))
    return stats


@dataclass
class _Previous:
    """The previous stored tree, its record and its proven hashes (sharing needs all three)."""

    tree: bytes
    meta: TreeMeta
    hashes: dict[str, hashcache.Entry]

    @classmethod
    def load(cls, tree: Path) -> _Previous | None:
        meta = load_meta(tree)
        if meta is None:  # a tree without a record keeps its own inodes (see dedup)
            return None
        hashes = hashcache.load(hashcache.cache_path(tree))
        return cls(os.fsencode(tree), meta, hashes) if hashes else None


def _file_digest(path: bytes, key: bytes) -> str | None:
    """The swupd hash (keyed by ``key``) of the file at ``path`` as it is now; None when it
    cannot be read."""
    mac = hmac.new(key, b"", hashlib.sha256)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                mac.update(chunk)
    except OSError:
        return None
    return mac.hexdigest()


@dataclass
class _Frame:
    fd: int
    node: Inode
    rel: bytes
    entries: Iterator[tuple[bytes, int]]
    write: bool


class _Writer:
    """One extraction: depth-first over directories, one open fd per level."""

    def __init__(self, fs: Ext4Reader, root: Path, reporter: Reporter,
                 record: RecordWriter, max_file_size: int | None = None,
                 previous: _Previous | None = None) -> None:
        self.fs = fs
        self.previous = previous
        self.record = record
        self.max_file_size = max_file_size
        self.root = root
        self.root_b = os.fsencode(root)
        self.reporter = reporter
        self.stats = ExtractStats()
        self.reached = bytearray((fs.sb.inodes_count + 8) // 8 + 1)
        self.links: dict[int, tuple[bytes, Meta]] = {}
        self.buffer = bytearray(_COPY_CHUNK)
        # side file entries: final for files of one link; (path, rel, meta, hash) for the
        # others, whose ctime moves with every link and is read when the tree is complete
        self.entries: dict[str, hashcache.Entry] = {}
        self.linked: list[tuple[str, bytes, Meta, str]] = []
        self.digests: dict[int, str] = {}
        self.linked_meta: dict[int, Meta] = {}
        self.pending_advance = 0
        self.used: list[int] = []
        self.reserved: list[int] = []
        self.img_fd = fs.fd
        self.dev = os.stat(root).st_dev
        self._root = -1
        fs.on_ea_inode = self._mark

    # --- bookkeeping -----------------------------------------------------------------------

    def _mark(self, number: int) -> bool:
        """Mark ``number`` reached; False when it already was."""
        byte, bit = divmod(number - 1, 8)
        if self.reached[byte] & (1 << bit):
            return False
        self.reached[byte] |= 1 << bit
        self.pending_advance += 1
        if self.pending_advance >= _ADVANCE_EVERY:
            self.reporter.advance(self.pending_advance)
            self.pending_advance = 0
        return True

    def _error(self, rel: bytes, exc: OSError, action: str) -> ExtractError:
        path = os.fsdecode(os.path.join(self.root_b, rel)) if rel else str(self.root)
        hint = None
        if exc.errno in (errno.EPERM, errno.EACCES):
            hint = "the storage directory must be writable by the user running the extraction"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "free space in the storage directory"
        elif exc.errno == errno.EOPNOTSUPP:
            hint = "the storage filesystem must support fifos, sockets and hard links"
        return ExtractError(f"cannot {action} {path}: {exc.strerror}", hint=hint)

    # --- the walk ------------------------------------------------------------------------------

    def run(self) -> ExtractStats:
        fs = self.fs
        self.used = [fs.inode_bitmap(g) for g in range(fs.sb.group_count)]
        self.reserved = self._reserved_masks()
        total = sum((u & ~r).bit_count() for u, r in zip(self.used, self.reserved, strict=True))
        self.reporter.step(f"extracting {fs.where}", total=total)
        root = fs.inode(_ROOT_INODE)
        if not stat.S_ISDIR(root.mode):
            raise Ext4Error(f"the root inode of {fs.where} is not a directory",
                            hint="the filesystem is damaged: rebuild the image")
        self._mark(_ROOT_INODE)
        self.record.add("/", self._meta(root))
        root_fd = os.open(self.root, _O_DIR)
        self._root = root_fd
        stack = [_Frame(root_fd, root, b"", fs.entries(root), True)]
        try:
            while stack:
                frame = stack[-1]
                entry = next(frame.entries, None)
                if entry is None:
                    stack.pop()
                    if frame.write:
                        try:
                            self._finish(frame.fd, frame.node, frame.rel, directory=True)
                        finally:
                            os.close(frame.fd)
                    continue
                child = self._entry(frame, *entry, depth=len(stack))
                if child is not None:
                    stack.append(child)
        finally:
            for frame in stack:
                if frame.write:
                    os.close(frame.fd)
        self.reporter.advance(self.pending_advance)
        self._check_complete()
        return self.stats

    def _entry(self, frame: _Frame, name: bytes, number: int, depth: int) -> _Frame | None:
        if name in (b".", b".."):
            return None
        rel = frame.rel + b"/" + name if frame.rel else name
        if b"/" in name or b"\0" in name:
            raise Ext4Error(f"{self.fs.where}: directory {_show(frame.rel)} holds an entry "
                            f"named {name!r}, which is not a valid file name",
                            hint="the image is damaged or crafted; rebuild it")
        node = self.fs.inode(number)
        if node.links == 0:
            raise Ext4Error(f"{self.fs.where}: {_show(rel)} refers to deleted inode {number}",
                            hint="the filesystem is damaged: run e2fsck -fy or rebuild it")
        first = self._mark(number)
        if stat.S_ISDIR(node.mode):
            if not first:
                raise Ext4Error(f"{self.fs.where}: directory inode {number} is reached twice "
                                f"(again at {_show(rel)}): a directory cycle or hard-linked "
                                "directory", hint="the image is damaged or crafted; rebuild it")
            if depth >= _MAX_DEPTH:
                raise Ext4Error(f"{self.fs.where}: directories nest deeper than {_MAX_DEPTH} "
                                f"levels at {_show(rel)}", hint="the image is damaged")
        write = frame.write and not (frame.rel == b"" and name == b"lost+found")
        if not write:
            if frame.write:  # lost+found itself
                self._skipped_lost_found(node)
                return None
            return (_Frame(-1, node, rel, self.fs.entries(node), False)
                    if stat.S_ISDIR(node.mode) else None)
        if not first:
            return self._hardlink(frame, name, rel, node)
        meta = self._meta(node)
        self.record.add(_manifest_path(rel), meta)
        if node.links > 1 and not stat.S_ISDIR(node.mode):
            self.links[number] = (rel, meta)
        try:
            return self._create(frame.fd, name, rel, node, meta)
        except FileExistsError:
            raise Ext4Error(f"{self.fs.where}: directory {_show(frame.rel)} has two entries "
                            f"named {name!r}",
                            hint="the image is damaged or crafted; rebuild it") from None

    def _skipped_lost_found(self, node: Inode) -> None:
        """lost+found is not part of the OS; walk it only to account for its inodes."""
        if not stat.S_ISDIR(node.mode):
            return
        sub = _Frame(-1, node, b"lost+found", self.fs.entries(node), False)
        stack = [sub]
        while stack:
            entry = next(stack[-1].entries, None)
            if entry is None:
                stack.pop()
                continue
            child = self._entry(stack[-1], *entry, depth=len(stack) + 1)
            if entry[0] not in (b".", b".."):
                self.stats.skipped_lost_found += 1
            if child is not None:
                stack.append(child)
        if self.stats.skipped_lost_found:
            message = (f"lost+found in {self.fs.where} holds {self.stats.skipped_lost_found} "
                       "entries; they are not extracted")
            self.stats.warnings.append(message)
            self.reporter.warning(message)

    def _hardlink(self, frame: _Frame, name: bytes, rel: bytes, node: Inode) -> None:
        known = self.links.get(node.number)
        if known is None:
            raise Ext4Error(f"{self.fs.where}: inode {node.number} is linked at {_show(rel)} "
                            "and elsewhere, but its link count is 1",
                            hint="the filesystem is damaged: run e2fsck -fy or rebuild it")
        target, meta = known
        try:
            os.link(target, name, src_dir_fd=self._root, dst_dir_fd=frame.fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise Ext4Error(f"{self.fs.where}: directory {_show(frame.rel)} has two entries "
                            f"named {name!r}",
                            hint="the image is damaged or crafted; rebuild it") from None
        except OSError as exc:
            raise self._error(rel, exc, "link") from exc
        self.record.add(_manifest_path(rel), meta)
        digest = self.digests.get(node.number)
        if digest is not None:
            self.linked.append((_manifest_path(rel), rel, self.linked_meta[node.number], digest))
        self.stats.hardlinks += 1

    # --- creating ----------------------------------------------------------------------------

    def _create(self, dfd: int, name: bytes, rel: bytes, node: Inode,
                meta: Meta) -> _Frame | None:
        kind = stat.S_IFMT(node.mode)
        if kind == stat.S_IFDIR:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                fd = os.open(name, _O_DIR, dir_fd=dfd)
            except FileExistsError:
                raise
            except OSError as exc:
                raise self._error(rel, exc, "create directory") from exc
            self.stats.directories += 1
            return _Frame(fd, node, rel, self.fs.entries(node), True)
        if kind == stat.S_IFREG:
            self._regular(dfd, name, rel, node, meta)
            return None
        try:
            if kind == stat.S_IFLNK:
                os.symlink(self.fs.symlink_target(node), name, dir_fd=dfd)
                self.stats.symlinks += 1
            else:
                if is_placeholder(node.mode):  # its number is in the record
                    os.close(os.open(name, _O_NEW, 0o600, dir_fd=dfd))
                else:  # fifos and sockets need no privilege
                    os.mknod(name, kind | 0o600, 0, dir_fd=dfd)
                if kind == stat.S_IFIFO:
                    self.stats.fifos += 1
                elif kind == stat.S_IFSOCK:
                    self.stats.sockets += 1
                else:
                    self.stats.devices += 1
        except FileExistsError:
            raise
        except OSError as exc:
            raise self._error(rel, exc, "create") from exc
        self._finish_path(dfd, name, rel, node)
        return None

    def _regular(self, dfd: int, name: bytes, rel: bytes, node: Inode, meta: Meta) -> None:
        if self.max_file_size is not None and node.size > self.max_file_size:
            raise ExtractError(
                f"{_show(rel)} (inode {node.number}) in {self.fs.where} is {node.size} bytes "
                f"({node.size / (1 << 30):.1f} GiB, holes included), more than max_file_size "
                f"({self.max_file_size} bytes)",
                hint="publishing reads every byte of it several times; raise "
                     "SWUPD_REPO_MAX_FILE_SIZE / --max-file-size if it is meant to ship")
        if meta.xattrs:  # names as the record gives them back (bytes), for key and entry
            meta = meta._replace(xattrs={os.fsencode(k): v for k, v in meta.xattrs.items()})
        if self.previous is not None and node.links == 1 and self._share(dfd, name, rel,
                                                                          node, meta):
            self.stats.files += 1
            self.stats.bytes += node.size
            self.stats.shared += 1
            return
        try:
            fd = os.open(name, _O_NEW, 0o600, dir_fd=dfd)
        except FileExistsError:
            raise
        except OSError as exc:
            raise self._error(rel, exc, "create") from exc
        mac: hmac.HMAC | None = hmac.new(object_key(meta.mode, meta.uid, meta.gid, meta.rdev,
                                                   node.size, meta.xattrs), b"", hashlib.sha256)
        try:
            try:
                if node.size:
                    if self.fs.is_inline(node):
                        data = self.fs.inline_data(node)
                        _write_all(fd, data, 0)
                        mac.update(data)
                    elif not self._copy(fd, node, mac):
                        mac = None
                    os.ftruncate(fd, node.size)
            except OSError as exc:
                raise self._error(rel, exc, "write") from exc
            self._finish(fd, node, rel, directory=False)
        except BaseException:
            os.close(fd)
            raise
        try:
            if mac is not None:
                self._hashed(fd, node, rel, meta, mac.hexdigest())
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += node.size

    def _hashed(self, fd: int, node: Inode, rel: bytes, meta: Meta, digest: str) -> None:
        """Keep a written file's hash for the side file; a hard-linked one is keyed when the
        tree is complete (every further link moves its ctime)."""
        path = _manifest_path(rel)
        if node.links > 1:
            self.digests[node.number] = digest
            self.linked_meta[node.number] = meta
            self.linked.append((path, rel, meta, digest))
        else:
            self.entries[path] = [*hashcache.entry_key(os.fstat(fd), meta), digest]

    def _share(self, dfd: int, name: bytes, rel: bytes, node: Inode, meta: Meta) -> bool:
        """Link ``name`` to the previous tree's file at the same path when its proven hash,
        keyed alike, equals this file's, and the inode already carries this size, mtime and
        disk mode. False: nothing was created, write the file."""
        previous = self.previous
        assert previous is not None
        path = _manifest_path(rel)
        entry = previous.hashes.get(path)
        other = previous.meta.entries.get(path)
        if entry is None or other is None or not stat.S_ISREG(other.mode):
            return False
        if entry[2] != node.size or entry[3] != node.mtime_ns or \
                not hashcache.keyed_alike(entry, meta):
            return False  # cheap refusals first: no system call
        old = os.path.join(previous.tree, rel)
        try:
            ost = os.lstat(old)
        except OSError:
            return False
        if ost.st_dev != self.dev or \
                stat.S_IMODE(ost.st_mode) | 0o222 != disk_mode(node.mode) | 0o222:
            return False
        # Only the ctime moved (a link to the inode came or went: another version shared or
        # a pruned tree dropped it): the entry proves nothing, the old bytes are read instead.
        unproven = hashcache.proven(entry, ost, other) is None
        if unproven and not hashcache.same_but_ctime(entry, ost, other):
            return False
        key = object_key(meta.mode, meta.uid, meta.gid, meta.rdev, node.size, meta.xattrs)
        mac = hmac.new(key, b"", hashlib.sha256)
        if self.fs.is_inline(node):
            mac.update(self.fs.inline_data(node))
        elif not self._copy(None, node, mac):
            return False
        digest = mac.hexdigest()
        if digest != entry[-1] or (unproven and _file_digest(old, key) != digest):
            return False
        try:
            if ost.st_mode & 0o222:
                os.chmod(old, stat.S_IMODE(ost.st_mode) & ~0o222)
            os.link(old, name, dst_dir_fd=dfd)
        except FileExistsError:
            raise
        except OSError:  # EMLINK, EXDEV, EPERM...: keep a copy of our own
            return False
        self.linked.append((path, rel, meta, digest))
        return True

    def _copy(self, out: int | None, node: Inode, mac: hmac.HMAC) -> bool:
        """Copy the mapped runs into ``out`` (None: only hash them) and feed the whole
        content, holes as zeros, to ``mac``; holes are never written, so they stay holes.
        False: the file has more than :data:`_HASH_HOLES_MAX` of holes and ``mac`` was given
        up on (the copy is complete)."""
        bs = self.fs.block_size
        size = node.size
        pos = 0  # bytes fed to mac
        holes = 0
        hashing: hmac.HMAC | None = mac
        for logical, physical, count in self.fs.runs(node):
            dst = logical * bs
            if dst < pos:
                raise Ext4Error(f"{self.fs.where}: inode {node.number} maps logical block "
                                f"{logical} twice", hint="the filesystem is damaged")
            holes += dst - pos
            if hashing is not None and holes > _HASH_HOLES_MAX:
                hashing = None
            _feed_zeros(hashing, dst - pos)
            length = min(count * bs, size - dst)
            src = self.fs.file_offset(physical)
            pos = dst + length
            while length > 0:
                n = self._copy_chunk(out, src, dst, min(length, _COPY_CHUNK), hashing)
                src += n
                dst += n
                length -= n
        if holes + size - pos > _HASH_HOLES_MAX:
            return False
        _feed_zeros(hashing, size - pos)
        return hashing is not None

    def _copy_chunk(self, out: int | None, src: int, dst: int, length: int,
                    mac: hmac.HMAC | None) -> int:
        view = memoryview(self.buffer)[:length]
        n = os.preadv(self.img_fd, [view], src)
        if n == 0:
            raise Ext4Error(f"{self.fs.where}: the image file ends inside file data",
                            hint="the image is truncated: copy it again")
        if mac is not None:
            mac.update(view[:n])
        if out is not None:
            _write_all(out, view[:n], dst)
        return n

    def hash_entries(self) -> dict[str, hashcache.Entry]:
        """The side file's entries of every regular file, once the tree is complete."""
        entries = self.entries
        for path, rel, meta, digest in self.linked:
            st = os.lstat(os.path.join(self.root_b, rel))
            entries[path] = [*hashcache.entry_key(st, meta), digest]
        self.linked = []
        return entries

    # --- metadata ----------------------------------------------------------------------------

    def _meta(self, node: Inode) -> Meta:
        """What the record keeps of ``node``: full mode, owner, device number, xattrs."""
        kind = stat.S_IFMT(node.mode)
        rdev = os.makedev(*node.rdev()) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        xattrs = dict(self.fs.xattrs(node))
        self.stats.xattrs += len(xattrs)
        return Meta(kind | node.permissions, node.uid, node.gid, rdev, xattrs)

    def _finish(self, fd: int, node: Inode, rel: bytes, directory: bool) -> None:
        """Plain mode and times of an open file or directory (the rest is in the record)."""
        try:
            os.fchmod(fd, disk_mode(node.mode))
            os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
        except OSError as exc:
            raise self._error(rel, exc, "set the times of") from exc

    def _finish_path(self, dfd: int, name: bytes, rel: bytes, node: Inode) -> None:
        """The same for symlinks and special files, which we must not open."""
        try:
            if not stat.S_ISLNK(node.mode):
                os.chmod(name, disk_mode(node.mode), dir_fd=dfd)
            os.utime(name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dfd,
                     follow_symlinks=False)
        except OSError as exc:
            raise self._error(rel, exc, "set the times of") from exc

    # --- completeness --------------------------------------------------------------------------

    def _reserved_masks(self) -> list[int]:
        """Per group, the used-but-unreachable-by-design inodes (journal, quota, ...)."""
        sb = self.fs.sb
        ipg = sb.inodes_per_group
        masks = [0] * sb.group_count
        for number in (*range(1, sb.first_ino), *sb.special_inodes):
            if number != _ROOT_INODE:
                group, index = divmod(number - 1, ipg)
                masks[group] |= 1 << index
        return masks

    def _check_complete(self) -> None:
        """Every used inode must have been reached, and every reached inode must be used."""
        fs = self.fs
        ipg = fs.sb.inodes_per_group
        missing: list[int] = []
        dangling: list[int] = []
        reached_all = int.from_bytes(self.reached, "little")
        for group, (used, reserved) in enumerate(zip(self.used, self.reserved, strict=True)):
            reached = (reached_all >> (group * ipg)) & ((1 << ipg) - 1)
            first = group * ipg + 1
            missing.extend(_bits(used & ~reached & ~reserved, first, 5 - len(missing)))
            dangling.extend(_bits(reached & ~used, first, 5 - len(dangling)))
        if dangling:
            raise Ext4Error(f"{fs.where}: directory entries point at free inodes "
                            f"({', '.join(map(str, dangling))})",
                            hint="the filesystem is damaged: run e2fsck -fy or rebuild it")
        if missing:
            raise Ext4Error(f"{fs.where}: used inodes not reachable from the root directory "
                            f"({', '.join(map(str, missing))}...) would be lost",
                            hint="the filesystem is damaged or has orphans: run e2fsck -fy on "
                                 "the partition, or rebuild the image")


def _feed_zeros(mac: hmac.HMAC | None, count: int) -> None:
    """A hole (or unwritten extent) reads as zeros: hash them without writing them."""
    while mac is not None and count > 0:
        n = min(count, len(_ZEROS))
        mac.update(_ZEROS[:n] if n < len(_ZEROS) else _ZEROS)
        count -= n


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _bits(value: int, first: int, limit: int) -> Iterator[int]:
    index = 0
    while value and limit > 0:
        if value & 1:
            yield first + index
            limit -= 1
        value >>= 1
        index += 1


def _show(rel: bytes) -> str:
    return "/" + os.fsdecode(rel) if rel else "/"


def _manifest_path(rel: bytes) -> str:
    """``usr/bin/x`` (bytes) -> ``/usr/bin/x``, the form scans and the record use."""
    return "/" + os.fsdecode(rel)
