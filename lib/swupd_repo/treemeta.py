"""The metadata record of a stored tree: ``image/<V>/os-core.meta`` beside ``image/<V>/os-core``.

A stored tree must be readable by any process: the CLI, a later BitBake build (after
``rm_work``/``clean``, from another build directory, another recipe), a container. Owners,
device nodes and ``security.*``/``trusted.*`` xattrs need root (or pseudo, whose database
belongs to one recipe's WORKDIR) to exist on disk, so they are not put there. The tree on disk
holds names, file content, symlink targets, hard links and times, owned by whoever extracted
it; everything else swupd hashes is in the record:

* path (``/`` for the root, ``/usr/bin/x``), full ``st_mode`` (type bits included), uid,
  gid, rdev and every xattr (name and raw value).
* Device nodes are empty regular placeholder files on disk (making them needs CAP_MKNOD);
  fifos and sockets are made for real (any user may). Modes on disk are plain: directories
  0755, files 0644 or 0755 (any x bit), so the owner can read everything; set-id and sticky
  bits live only in the record. Hard links stay hard links on disk, so no link identity is
  recorded.

Format (text, one line per path, streamable: a 60,000-file tree is written while it is
extracted and read line by line)::

    swupd-repo tree metadata 1
    <path>\\t<mode, octal>\\t<uid>\\t<gid>\\t<rdev>\\t<xattrs>
    ...
    end\\t<number of paths>\\t<sha256 of every byte before this line>

``<path>`` is percent-encoded (``urllib.parse.quote`` of the raw bytes, ``/`` kept);
``<xattrs>`` is ``name=hexvalue`` items joined by ``,``, names percent-encoded. A record
without its ``end`` line, with a wrong count or checksum, or naming other paths than the tree
on disk holds is refused: a reader never mixes a record with a tree it does not describe.

Trees stored before records existed (no ``os-core.meta``) are read as before, from
``lstat``/``getxattr`` of the tree itself (:func:`load` returns None); that is right where the
reading process sees what the extraction set (root, or the pseudo that made the tree).
``swupd-repo record`` writes the record of such a tree, run where that holds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from .errors import StorageError
from .storage import fsync_dir, temp_path
from .swupd.hashing import read_xattrs

SUFFIX = ".meta"
HEADER = b"swupd-repo tree metadata 1\n"
_END = b"end\t"
#: What each type may be on disk (see :func:`tree_kinds`): a device node is a placeholder
#: file in the storage and a real node in a copy made as root (the Docker backend's).
_KINDS = {stat.S_IFDIR: ("directory",), stat.S_IFLNK: ("symlink",), stat.S_IFREG: ("file",),
          stat.S_IFCHR: ("file", "other"), stat.S_IFBLK: ("file", "other"),
          stat.S_IFIFO: ("other",), stat.S_IFSOCK: ("other",)}


class Meta(NamedTuple):
    """What swupd hashes of one path, beyond its content: ``mode`` is the full ``st_mode``."""

    mode: int
    uid: int
    gid: int
    rdev: int
    xattrs: dict[bytes, bytes]


def record_path(tree: Path) -> Path:
    """Where the record of ``tree`` lives: ``image/<V>/os-core`` -> ``image/<V>/os-core.meta``."""
    return tree.with_name(tree.name + SUFFIX)


def disk_mode(mode: int) -> int:
    """The permission bits a stored tree gets on disk for an object of full mode ``mode``."""
    if stat.S_ISDIR(mode):
        return 0o755
    return 0o755 if mode & 0o111 and stat.S_ISREG(mode) else 0o644


def is_placeholder(mode: int) -> bool:
    """Objects stored as empty regular files (device nodes)."""
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def from_disk(path: str | os.PathLike[str], st: os.stat_result | None = None) -> Meta:
    """The metadata of ``path`` as this process sees it (trees without a record)."""
    st = st or os.lstat(path)
    return Meta(st.st_mode, st.st_uid, st.st_gid, st.st_rdev, read_xattrs(path))


# --------------------------------------------------------------------------- the format


def _encode_line(path: str, meta: Meta) -> bytes:
    name = quote(os.fsencode(path), safe="/")
    # The ext4 reader names xattrs as str with surrogate escapes for bytes that are not UTF-8
    # (as os.listxattr does); the record stores the raw bytes either way.
    xattrs = ",".join(f"{quote(os.fsencode(key), safe='')}={value.hex()}"
                      for key, value in sorted(meta.xattrs.items()))
    return (f"{name}\t{meta.mode:o}\t{meta.uid}\t{meta.gid}\t{meta.rdev}\t{xattrs}\n"
            .encode("ascii"))


def _decode_line(line: bytes) -> tuple[str, Meta]:
    name, mode, uid, gid, rdev, xattrs = line.rstrip(b"\n").split(b"\t")
    pairs = {}
    for item in xattrs.split(b",") if xattrs else ():
        key, _, value = item.partition(b"=")
        pairs[unquote_to_bytes(key)] = bytes.fromhex(value.decode("ascii"))
    return os.fsdecode(unquote_to_bytes(name)), Meta(int(mode, 8), int(uid), int(gid),
                                                     int(rdev), pairs)


class RecordWriter:
    """Writes a record line by line under a temporary name; :meth:`install` puts it in place.

    Use as a context manager: leaving it by an exception removes the temporary file.
    """

    def __init__(self, tree: Path) -> None:
        self.target = record_path(tree)
        self.tmp = temp_path(self.target.parent, self.target.name)
        self._file = open(self.tmp, "wb")  # noqa: SIM115  # closed by finish/abort
        self._digest = hashlib.sha256()
        self.count = 0
        self._write(HEADER)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)

    def add(self, path: str, meta: Meta) -> None:
        """One path of the tree (manifest form: ``/`` or ``/usr/bin/x``)."""
        self._write(_encode_line(path, meta))
        self.count += 1

    def install(self) -> Path:
        """Seal the record (footer, fsync) and rename it into place; returns its path."""
        footer = f"end\t{self.count}\t{self._digest.hexdigest()}\n".encode("ascii")
        self._file.write(footer)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)
        return self.target

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind, *_exc) -> None:  # type: ignore[no-untyped-def]
        if kind is not None:
            self.abort()


def read_record(path: Path) -> dict[str, Meta]:
    """Every path of a record file, after checking its header, count and checksum."""
    entries: dict[str, Meta] = {}
    digest = hashlib.sha256()
    sealed = False
    try:
        with open(path, "rb") as f:
            first = f.readline()
            if first != HEADER:
                raise _damaged(path, "it does not start with the record header")
            digest.update(first)
            for number, line in enumerate(f, 2):
                if not line.endswith(b"\n"):
                    break  # cut short: refused below as incomplete
                if line.startswith(_END):
                    _, count, checksum = line.rstrip(b"\n").split(b"\t")
                    if int(count) != len(entries) or \
                            checksum.decode("ascii") != digest.hexdigest():
                        raise _damaged(path, "its count or checksum does not match its lines")
                    sealed = f.read(1) == b""
                    break
                digest.update(line)
                try:
                    name, meta = _decode_line(line)
                except ValueError:
                    raise _damaged(path, f"line {number} is malformed") from None
                entries[name] = meta
    except OSError as exc:
        raise StorageError(f"cannot read the metadata record {path}: {exc.strerror}",
                           hint="make the storage readable by the user running the build"
                           ) from exc
    except ValueError:
        raise _damaged(path, "its end line is malformed") from None
    if not sealed:
        raise _damaged(path, "it is incomplete (no end line, or data after it)")
    return entries


def _damaged(path: Path, why: str) -> StorageError:
    return StorageError(f"the metadata record {path} is damaged: {why}",
                        hint="extract this version again (swupd-repo extract --force) or "
                             "restore the storage from a backup")


def add_entries(tree: Path, added: dict[str, Meta]) -> None:
    """Add paths just created in ``tree`` to its record, which is rewritten whole and sealed
    again (atomically: a reader sees the old record or the new one). Existing lines keep their
    order; a path already recorded takes the new metadata."""
    entries = read_record(record_path(tree))
    entries.update(added)
    with RecordWriter(tree) as writer:
        for path, meta in entries.items():
            writer.add(path, meta)
        writer.install()


# --------------------------------------------------------------------------- reading a tree


class TreeMeta:
    """The record of one stored tree, checked against the tree on disk when loaded."""

    def __init__(self, tree: Path, entries: dict[str, Meta]) -> None:
        self.tree = tree
        self.entries = entries

    def get(self, path: str) -> Meta:
        """The metadata of ``path`` (``/usr/bin/x``); a path the record lacks is an error."""
        try:
            return self.entries[path]
        except KeyError:
            raise StorageError(f"{self.tree}{path} is not in the metadata record "
                               f"{record_path(self.tree)}",
                               hint="the tree was changed after it was stored; extract this "
                                    "version again") from None

    def check_tree(self) -> None:
        """The record names exactly the paths on disk, each of a compatible kind."""
        seen = 0
        problems: list[str] = []
        for path, kind in tree_kinds(self.tree):
            seen += 1
            meta = self.entries.get(path)
            if meta is None:
                problems.append(f"{path} is on disk but not in the record")
            elif kind not in _KINDS.get(stat.S_IFMT(meta.mode), ()):
                problems.append(f"{path} is a {kind} on disk, the record says mode "
                                f"{meta.mode:o}")
            if len(problems) >= 3:
                break
        if not problems and seen != len(self.entries):
            on_disk = {p for p, _ in tree_kinds(self.tree)}
            missing = sorted(p for p in set(self.entries) - on_disk if not _unread(p, self))[:3]
            problems = [f"{p} is in the record but not on disk" for p in missing]
        if problems:
            raise StorageError(f"{self.tree} and its metadata record {record_path(self.tree)} "
                               f"disagree: {'; '.join(problems)}",
                               hint="the tree was changed after it was stored; extract this "
                                    "version again (swupd-repo extract --force)")


def _unread(path: str, meta: TreeMeta) -> bool:
    """Paths no reader takes from disk, which a copy of the tree may lack: sockets (no tar
    carries them) and names swupd refuses, with everything below them."""
    from .swupd.heuristics import refused_name

    if stat.S_ISSOCK(meta.entries[path].mode):
        return True
    return any(refused_name(name) for name in path.split("/")[1:])


def tree_kinds(tree: Path) -> Iterator[tuple[str, str]]:
    """Every path of ``tree`` on disk (root included, as ``/``) with its kind: ``directory``,
    ``symlink``, ``file`` or ``other`` (what ``_KINDS`` names)."""
    yield "/", "directory"
    stack = [(os.fspath(tree), "")]
    while stack:
        disk, prefix = stack.pop()
        try:
            entries = list(os.scandir(disk))
        except OSError as exc:
            raise StorageError(f"cannot read directory {disk}: {exc.strerror}",
                               hint="the storage must be readable by the user running the "
                                    "build") from exc
        for entry in entries:
            path = f"{prefix}/{entry.name}"
            if entry.is_symlink():
                yield path, "symlink"
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, path))
                yield path, "directory"
            elif entry.is_file(follow_symlinks=False):
                yield path, "file"
            else:
                yield path, "other"


def load(tree: Path) -> TreeMeta | None:
    """The checked record of ``tree``, or None when the tree has none (stored before records:
    read its metadata from the tree itself, see :func:`from_disk`)."""
    path = record_path(tree)
    if not path.exists() or not tree.is_dir():  # no record, or a record left without its tree
        return None
    meta = TreeMeta(tree, read_record(path))
    meta.check_tree()
    return meta


def write_from_disk(tree: Path) -> int:
    """Write the record of a tree stored without one, from what this process sees of it.

    Run as root, or under the pseudo database that made the tree (its recipe's
    ``WORKDIR/pseudo``), so owners, devices and xattrs are the extracted ones. Returns the
    number of paths recorded. The tree itself is not changed.
    """
    with RecordWriter(tree) as writer:
        writer.add("/", from_disk(tree))
        for path, _kind in tree_kinds(tree):
            if path != "/":
                writer.add(path, from_disk(os.path.join(tree, path[1:])))
        writer.install()
    return writer.count
