"""A pack tarball written as concatenated, independent xz streams over stable member groups.

Why: the os-core zero pack holds the whole tree, and compressing it from scratch every version
costs as much as the first build. A tar archive may be split anywhere between members, and
every xz reader (``xz -d``, GNU tar ``-J``/auto-detect, libarchive, Python :mod:`lzma`)
decodes concatenated streams as one byte sequence, so a pack made of one stream per member
group is an ordinary ``.tar`` (xz) to clients. A group whose members did not change is then
copied byte for byte instead of being compressed again: from the storage's stream store
(:mod:`.streamstore`), whichever pack compressed it first, or from the previous zero pack.

Groups are planned from the member order alone (see :func:`plan_spans`): a cut after a
member is decided by that member's own hash and weight, never by its neighbours, so removing
or adding a member dirties only the group it lives in. Large members get a group of their own,
and members of different eras (versions of last change) never share one. Two sizes: large
*spans* (a good ratio) made of small *pieces*; a span that changed is written piece by piece
from then on, so content that keeps changing is re-compressed in small pieces while content
that never changes keeps its large span (see :func:`_choose`). By default the two sizes are
equal (see :data:`PIECE`): smaller pieces made the packs of a tree after random changes
larger than the pack bytes target allows.

Groups that are mostly x86 ELF code get the x86 BCJ filter before LZMA2 (see
:func:`_wants_bcj`): about 2 % fewer bytes on /usr, which is what brings 256-320 KiB groups
within 5 % of one solid stream.

The sidecar index ``.<pack name>.index.json`` beside the pack maps each group's key (a digest
of its member names, their sources and the compression settings) to its byte range; it lets a
storage without a stream store (deleted, or from before it) still reuse the previous pack.
It lives in the published ``www/<V>/`` tree (a dotfile; it names only public content) because
the pack itself is there and both are moved into place together; a missing or stale index
just means no reuse.

Only the two zero blocks after the last group end the archive, so the concatenation is one
tar archive. Groups are compressed in a process pool; each job writes its streams to its own
part file, and the parent assembles the pack in group order (copy_file_range, no buffering).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import lzma
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import BuildError
from ..progress import Reporter
from ..storage import atomic_write_bytes, fsync_dir, temp_path
from .fullfiles import END_OF_ARCHIVE, member_headers, padding
from .streamstore import StreamStore
from .workpool import bounded_map

#: xz preset of the pack streams (what ``tar -J`` used in the container).
PRESET = 6
#: Version of the filter rule (:func:`_wants_bcj`), part of every group key: a stream made
#: under another rule has other bytes, so it is never mixed into a pack made under this one.
#: Change it with :data:`BCJ_SHARE`, :data:`_X86_MACHINES` or :func:`is_x86_elf`.
FILTER_RULE = "bcj1"
#: A group's stream gets the x86 BCJ filter before LZMA2 when at least this share of its
#: members' data bytes is x86 or x86-64 ELF (see :func:`_wants_bcj`).
BCJ_SHARE = 0.5
#: ELF ``e_machine`` values the x86 BCJ filter is made for: EM_386 and EM_X86_64. Other
#: architectures' filters are left out on purpose: ARM64's exists only since xz 5.4.
_X86_MACHINES = (3, 62)
#: Bytes of a member's data read ahead to classify it (the ELF header's e_machine is at 18).
_HEAD = 20
#: A member whose weight (compressed fullfile size) reaches this gets a group of its own.
BIG_MEMBER = 1024 * 1024
#: Mean weight of a group of small members; a cut follows member m with chance weight/TARGET.
#: Large on purpose (issue 16): one stream per 8 KiB made the zero pack 8 % larger than one
#: solid xz stream of the same tar (26 % on a Debian tree). Measured on a third of a 220 MiB
#: sample of /usr (x86 BCJ on code groups, see :func:`_wants_bcj`), against one solid
#: stream: 64 KiB 8.0 %, 128 KiB 5.9 %, 256 KiB 4.8 %, 320 KiB 4.2 %, 512 KiB 2.4 %. The
#: price: a group is copied from the stream store only while none of its members changed,
#: so 5 % of files changed at random re-compress about 38 % of the bytes at 320 KiB (36 %
#: at 256 KiB, 46 % at 512 KiB; big members stand alone and only count when they change);
#: a package's files sit together, so its update dirties few.
TARGET_GROUP = 320 * 1024
#: Mean weight of a *piece*: what a span is split into once it changed (see
#: :func:`plan_spans` and :func:`_choose`). A piece's stream is reused while none of its
#: members changed, so a span that changed once is re-compressed piece by piece afterwards.
#: Equal to :data:`TARGET_GROUP` (every span is one piece, never split) because the pack
#: bytes target (5 % above one solid stream) holds for pieces too: after random changes a
#: third or more of a zero pack is pieces. Measured as above: 64 KiB pieces in 256 KiB
#: spans re-compressed 26 % of the bytes at the second random 5 % (instead of 36 %), but
#: made the zero packs after the first and the second 7.5 % and 7.7 % above one solid
#: stream; 128 KiB pieces 5.8 % and 5.9 %. A tree whose groups compress better may set a
#: smaller piece.
PIECE = TARGET_GROUP
#: Hard cap on a small-member group (rarely reached; keeps one stream's work bounded).
MAX_GROUP = 4 * 1024 * 1024
#: A compression job takes groups up to this much weight, so pool overhead stays small...
_JOB_WEIGHT = 4 * 1024 * 1024
#: ...but the work is split into at least this many jobs per worker, so that an incremental
#: pack (a few MiB of fresh groups) keeps every core busy instead of leaving one idle.
_JOBS_PER_WORKER = 8
_MIN_JOB_WEIGHT = 64 * 1024
#: Below this much fresh weight a pack's groups are compressed without a process pool.
_INLINE_WEIGHT = 512 * 1024
_INDEX_FORMAT = 2
_XZ_MAGIC = b"\xfd7zXZ\x00"
_XZ_FOOTER_MAGIC = b"YZ"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackMember:
    """One member to archive: ``kind`` is ``dir`` (a pack directory), ``fullfile`` (the single
    member of ``source``, a fullfile tar, re-emitted as ``name``) or ``file`` (the regular
    file ``source``, e.g. a delta, owned by 0/0)."""

    name: str
    kind: str
    source: str = ""
    weight: int = 0
    cut: str = ""  # hex digest that decides group cuts (the member's hash)
    mtime: int = 0
    #: what else decides the member's bytes: the source file's size and mtime_ns (a
    #: fullfile's header carries its mtime; a rewritten source is a new identity)
    ident: str = ""
    #: members of different eras (e.g. last_change versions) never share a group, so the
    #: groups of a delta pack's staged members line up with the zero pack's
    era: int = 0


# --------------------------------------------------------------------------- planning (pure)

def plan_spans(members: Sequence[PackMember]) -> list[list[list[PackMember]]]:
    """Split the ordered members into spans of pieces, every boundary decided by one member.

    A *piece* ends after a member with chance weight/:data:`PIECE`, a *span* (what a pack
    normally compresses as one stream) with chance weight/:data:`TARGET_GROUP`, from the
    same draw of the member's hash: every span cut is a piece cut, so a span is a run of
    whole pieces. A cut depends on that member alone, so removing or adding a member changes
    only the piece and span it lives in. Large members stand alone; eras never mix.
    """
    spans: list[list[list[PackMember]]] = []
    pieces: list[list[PackMember]] = []
    current: list[PackMember] = []
    weight = span_weight = 0

    def end_piece() -> None:
        nonlocal current, weight
        if current:
            pieces.append(current)
            current, weight = [], 0

    def end_span() -> None:
        nonlocal pieces, span_weight
        end_piece()
        if pieces:
            spans.append(pieces)
            pieces, span_weight = [], 0

    for m in members:
        last = current[-1] if current else pieces[-1][-1] if pieces else None
        if last is not None and last.era != m.era:
            end_span()
        if m.weight >= BIG_MEMBER:
            end_span()
            spans.append([[m]])
            continue
        if (current or pieces) and m.weight >= TARGET_GROUP:
            # A member that would end its span anyway (see _draw) also starts one, so it
            # stands alone: when its content changes, its new hash re-compresses only
            # itself, not the light members that happened to precede it.
            end_span()
        current.append(m)
        weight += m.weight
        span_weight += m.weight
        draw = _draw(m)
        if draw * TARGET_GROUP < max(m.weight, 512) or span_weight >= MAX_GROUP:
            end_span()
        elif draw * PIECE < max(m.weight, 512) or weight >= MAX_GROUP:
            end_piece()
    end_span()
    return spans


def plan_groups(members: Sequence[PackMember]) -> list[list[PackMember]]:
    """The spans of :func:`plan_spans` as plain groups (each span's pieces joined)."""
    return [[m for piece in span for m in piece] for span in plan_spans(members)]


def whole(groups: Sequence[Sequence[PackMember]]) -> list[list[list[PackMember]]]:
    """Groups as spans of one piece each (never split)."""
    return [[list(g)] for g in groups if g]


def _draw(m: PackMember) -> float:
    return int(m.cut[:8], 16) / 0x1_0000_0000 if m.cut else 1.0


def group_key(group: Sequence[PackMember]) -> str:
    """Identity of a group's compressed bytes: member names, kinds, sources and settings.

    The filter chain is decided from the members' data (:func:`_wants_bcj`), which the
    sources identify, so the key need only name the rule (:data:`FILTER_RULE`)."""
    h = hashlib.sha256(f"v{_INDEX_FORMAT} xz{PRESET} {FILTER_RULE}\n".encode())
    for m in group:
        h.update(f"{m.kind}\0{m.name}\0{m.mtime if m.kind == 'dir' else m.ident}\n"
                 .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def index_path(pack: Path) -> Path:
    return pack.with_name(f".{pack.name}.index.json")


def load_index(pack: Path | None) -> dict[str, tuple[int, int]]:
    """Reusable ranges of ``pack``; empty when there is no pack, no index or a stale one."""
    if pack is None:
        return {}
    try:
        data = json.loads(index_path(pack).read_text())
        if data.get("format") != _INDEX_FORMAT or data.get("size") != pack.stat().st_size:
            return {}
        return {k: (int(v[0]), int(v[1])) for k, v in data["groups"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


# --------------------------------------------------------------------------- compression (worker)

def _xz_filters(size: int, bcj: bool = False) -> list[dict[str, int]]:
    """Preset 6 with the dictionary shrunk to the input (as ``xz`` does for small files), so
    a small stream does not allocate and clear a full 8 MiB dictionary's match finder;
    ``bcj``: the x86 BCJ filter first (every xz and libarchive since their first releases
    decode it; ``xz -d``, ``tar -J`` and the swupd client read the stream as any other)."""
    dict_size = 4096
    while dict_size < size and dict_size < 8 << 20:
        dict_size <<= 1
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": PRESET, "dict_size": dict_size}
    return [{"id": lzma.FILTER_X86}, lzma2] if bcj else [lzma2]


def is_x86_elf(head: bytes) -> bool:
    """Whether data starting with ``head`` is an x86 or x86-64 ELF file (magic, then
    ``e_machine`` at offset 18 in the byte order ``EI_DATA`` names)."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return False
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big") in _X86_MACHINES


def _wants_bcj(sources: Sequence[_Source]) -> bool:
    """The filter rule: BCJ when x86 ELF members hold at least :data:`BCJ_SHARE` of the
    group's data bytes. A pure function of the members' bytes, so a group key (which
    identifies them) identifies the stream. BCJ turns the relative addresses of x86 call
    and jump instructions into absolute ones, which repeat and so compress better (about
    2 % on /usr); on other data it rewrites stray E8/E9 bytes and costs a little (see
    README, "Storage directory")."""
    total = sum(s.size for s in sources)
    elf = sum(s.size for s in sources if is_x86_elf(s.head))
    return total > 0 and elf >= BCJ_SHARE * total


class _Source:
    """An opened member: headers now, data streamed later (fullfiles are never unpacked)."""

    def __init__(self, m: PackMember) -> None:
        self.member = m
        self.tar: tarfile.TarFile | None = None
        self.data: BinaryIO | None = None
        self.head = b""  # the data's first bytes, read ahead (see _wants_bcj)
        if m.kind == "dir":
            self.headers = member_headers(m.name.encode() + b"/", mode=0o750, uid=0, gid=0,
                                          size=0, mtime=m.mtime, typeflag=b"5")
            self.size = 0
        elif m.kind == "file":
            st = os.stat(m.source)
            self.size = st.st_size
            self.headers = member_headers(m.name.encode(), mode=0o644, uid=0, gid=0,
                                          size=st.st_size, mtime=int(st.st_mtime),
                                          typeflag=b"0")
            self.data = open(m.source, "rb")  # noqa: SIM115 - closed in close()
        else:
            self._open_fullfile(m)
        if self.data is not None:
            self.head = self.data.read(min(_HEAD, self.size))

    def _open_fullfile(self, m: PackMember) -> None:
        expected = m.name.rsplit("/", 1)[-1]
        try:
            self.tar = tarfile.open(m.source, "r:*")  # noqa: SIM115 - closed in close()
            info = self.tar.next()
            if info is None or self.tar.next() is not None:
                raise BuildError(f"fullfile {m.source} must hold exactly one member")
        except (OSError, tarfile.TarError, EOFError, lzma.LZMAError) as exc:
            raise BuildError(f"cannot read fullfile {m.source}: {exc}",
                             hint="rebuild this version with --force") from exc
        if info.name.rstrip("/") != expected:
            raise BuildError(f"fullfile {m.source} holds {info.name!r}, expected {expected!r}")
        name = m.name.encode("utf-8", "surrogateescape")
        kw = dict(mode=info.mode, uid=info.uid, gid=info.gid, mtime=int(info.mtime),
                  xattrs=_xattrs(info))
        self.size = 0
        if info.isdir():
            self.headers = member_headers(name + b"/", size=0, typeflag=b"5", **kw)
        elif info.issym():
            self.headers = member_headers(name, size=0, typeflag=b"2",
                                          linkname=info.linkname.encode("utf-8",
                                                                        "surrogateescape"),
                                          **kw)
        elif info.isreg():
            self.size = info.size
            self.headers = member_headers(name, size=info.size, typeflag=b"0", **kw)
            self.data = self.tar.extractfile(info)
        elif info.ischr() or info.isblk() or info.isfifo():
            self.headers = member_headers(name, size=0, typeflag=info.type,
                                          rdev=os.makedev(info.devmajor, info.devminor), **kw)
        else:
            raise BuildError(f"fullfile {m.source}: unsupported member type {info.type!r}")

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        if self.tar is not None:
            self.tar.close()


def _xattrs(info: tarfile.TarInfo) -> dict[bytes, bytes]:
    """Raw xattrs from the pax records: ``SCHILY.xattr.*`` (raw value) wins over bsdtar's
    ``LIBARCHIVE.xattr.*`` (base64), which the container's fullfiles also carry."""
    out: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            name = key[len("LIBARCHIVE.xattr."):].encode("utf-8", "surrogateescape")
            raw = value.encode("ascii")
            out.setdefault(name, base64.b64decode(raw + b"=" * (-len(raw) % 4)))
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")
            out[name] = value.encode("utf-8", "surrogateescape")
    return out


def _compress_group(group: Sequence[PackMember], out: BinaryIO, final: bool) -> int:
    """Write one xz stream holding ``group`` (and the end-of-archive blocks when ``final``)."""
    sources = [_Source(m) for m in group]
    try:
        total = sum(len(s.headers) + s.size + len(padding(s.size)) for s in sources)
        comp = lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                   filters=_xz_filters(total + (1024 if final else 0),
                                                       _wants_bcj(sources)))
        start = out.tell()
        for s in sources:
            out.write(comp.compress(s.headers))
            if s.data is not None:
                out.write(comp.compress(s.head))
                left = s.size - len(s.head)
                while left:
                    chunk = s.data.read(min(_CHUNK, left))
                    if not chunk:
                        raise BuildError(f"{s.member.source} is shorter than its header says")
                    left -= len(chunk)
                    out.write(comp.compress(chunk))
                out.write(comp.compress(padding(s.size)))
        if final:
            out.write(comp.compress(END_OF_ARCHIVE))
        out.write(comp.flush())
        return out.tell() - start
    finally:
        for s in sources:
            s.close()


def compress_job(groups: list[list[PackMember]], finals: list[bool], part: str) -> list[int]:
    """Pool job: compress ``groups`` one after another into the file ``part``; their lengths."""
    with open(part, "wb") as out:
        return [_compress_group(g, out, f) for g, f in zip(groups, finals, strict=True)]


# --------------------------------------------------------------------------- assembly (parent)

@dataclass
class _Slot:
    key: str
    reuse: tuple[int, int] | None = None  # range in the previous pack
    stored: bool = False  # in the stream store
    part: str = ""  # part file and offset of freshly compressed bytes
    offset: int = 0
    length: int = 0


def write_pack(out: Path, spans: list[list[list[PackMember]]], *, previous: Path | None,
               workers: int, reporter: Reporter, label: str,
               keep_index: bool, store: StreamStore | None = None,
               pool: Executor | None = None, fresh_era: int | None = None
               ) -> tuple[int, int]:
    """Write the pack ``out`` atomically; returns (streams reused, streams compressed).

    ``spans`` come from :func:`plan_spans` (or :func:`whole`); :func:`_choose` decides
    which are written as one stream and which piece by piece. A stream comes from ``store``
    when it holds the group's key, else from ``previous`` (a pack with an index) when that
    has it, else it is compressed and added to ``store``. The last group always carries the
    end-of-archive blocks, so it is compressed afresh (it is tiny: the final group is a
    dedicated empty one).

    ``pool``: an executor shared with other work (see :class:`.workpool.SharedPool`) to
    compress in; without one a pool of ``workers`` is started when the work is worth it.
    ``fresh_era``: members of this era and later are new content (see :func:`_choose`).
    """
    reusable = load_index(previous)

    def known(key: str) -> bool:
        return (store is not None and store.has(key)) or key in reusable

    groups = [*_choose(spans, known, fresh_era if reusable else None), []]  # + the end
    slots = [_Slot(group_key(g) if g else "end") for g in groups]
    todo: list[int] = []
    for i, slot in enumerate(slots):
        if i == len(groups) - 1:
            todo.append(i)
            continue
        if store is not None and store.has(slot.key):
            slot.stored = True
            continue
        rng = reusable.get(slot.key)
        if rng is not None and previous is not None and _is_stream(previous, *rng):
            slot.reuse = rng
        else:
            todo.append(i)
    reporter.step(label, total=len(groups))
    reporter.advance(len(groups) - len(todo))
    parts_dir = temp_path(out.parent, f"{out.name}.parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out.parent, out.name)
    try:
        _compress_all(groups, todo, slots, parts_dir, workers, reporter, pool)
        index = _assemble(tmp, slots, groups, previous, store)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)  # never hides the error that got here
        if tmp.exists():
            tmp.unlink()
    if keep_index:
        data = {"format": _INDEX_FORMAT, "size": out.stat().st_size, "groups": index}
        ipath = index_path(out)
        atomic_write_bytes(ipath, json.dumps(data, separators=(",", ":")).encode(),
                           durable=False)
    return len(groups) - len(todo), len(todo)


def _choose(spans: list[list[list[PackMember]]], known: Callable[[str], bool],
            fresh_era: int | None) -> list[list[PackMember]]:
    """The groups to write: each span whole, or its pieces.

    A span is written whole when its stream is known (stored, or in the previous pack),
    and when it is new content. It is written piece by piece when one of its pieces is
    known (it was split before: the pieces that did not change are copied), and, once,
    when it *changed*: a span of an era before ``fresh_era`` (old content; None: no such
    rule, e.g. no previous pack to tell what changed) whose stream is not known lost or
    gained members since the previous pack. Its pieces cost the same to compress now as the
    span would, and from then on a change there re-compresses one piece, not the span.
    Ratio is paid only where content changes: content that never changes keeps its span.
    """
    chosen: list[list[PackMember]] = []
    for pieces in spans:
        members = [m for piece in pieces for m in piece]
        if len(pieces) == 1 or known(group_key(members)):
            chosen.append(members)
        elif any(known(group_key(piece)) for piece in pieces) or (
                fresh_era is not None and members[0].era < fresh_era):
            chosen.extend(pieces)
        else:
            chosen.append(members)
    return chosen


def _jobs(groups: list[list[PackMember]], todo: list[int], workers: int = 1
          ) -> Iterator[list[int]]:
    """Consecutive fresh groups batched into jobs of about equal weight."""
    weights = [sum(m.weight for m in groups[i]) + 1024 for i in todo]
    limit = min(_JOB_WEIGHT, max(_MIN_JOB_WEIGHT,
                                 sum(weights) // (_JOBS_PER_WORKER * max(1, workers))))
    job: list[int] = []
    weight = 0
    for i, w in zip(todo, weights, strict=True):
        job.append(i)
        weight += w
        if weight >= limit:
            yield job
            job, weight = [], 0
    if job:
        yield job


def _compress_all(groups: list[list[PackMember]], todo: list[int], slots: list[_Slot],
                  parts_dir: Path, workers: int, reporter: Reporter,
                  shared: Executor | None = None) -> None:
    last = len(groups) - 1
    jobs = list(_jobs(groups, todo, workers))

    def call(n: int, job: list[int]) -> tuple[tuple[list[int], str], tuple]:
        part = str(parts_dir / f"{n}")
        return (job, part), ([groups[i] for i in job], [i == last for i in job], part)

    calls = (call(n, job) for n, job in enumerate(jobs))
    # a few small fresh groups (an incremental version) compress faster than a pool starts
    fresh = sum(m.weight for i in todo for m in groups[i])
    parallel = workers > 1 and len(jobs) > 1 and fresh >= _INLINE_WEIGHT
    own = ProcessPoolExecutor(max_workers=workers) if parallel and shared is None else None
    with own if own is not None else contextlib.nullcontext():
        pool = (shared or own) if parallel else None
        for (job, part), lengths in bounded_map(pool, compress_job, calls, 4 * workers):
            offset = 0
            for i, length in zip(job, lengths, strict=True):
                slots[i].part, slots[i].offset, slots[i].length = part, offset, length
                offset += length
            reporter.advance(len(job))


def _is_stream(path: Path, offset: int, length: int) -> bool:
    """Cheap sanity check that a recorded range still is one whole xz stream."""
    if length < 32:
        return False
    with open(path, "rb") as f:
        head = os.pread(f.fileno(), 6, offset)
        tail = os.pread(f.fileno(), 2, offset + length - 2)
    return head == _XZ_MAGIC and tail == _XZ_FOOTER_MAGIC


def _assemble(tmp: Path, slots: list[_Slot], groups: list[list[PackMember]],
              previous: Path | None, store: StreamStore | None) -> dict[str, list[int]]:
    """Concatenate the streams in group order; fresh ones are also added to ``store``."""
    index: dict[str, list[int]] = {}
    prev = open(previous, "rb") if previous is not None else None  # noqa: SIM115
    try:
        with open(tmp, "w+b") as out:  # readable: a recompressed stream is stored from it
            pos = 0
            for slot, group in zip(slots, groups, strict=True):
                length = None
                if slot.stored:
                    assert store is not None
                    length = store.copy_into(slot.key, out)
                    if length is None:  # damaged since it was looked up: compress again
                        length = _compress_group(group, out, False)
                        out.flush()
                        store.put(slot.key, out.fileno(), pos, length)
                elif slot.reuse is not None:
                    assert prev is not None
                    _copy(prev, slot.reuse[0], slot.reuse[1], out)
                    length = slot.reuse[1]
                    if store is not None:  # a storage from before the store: fill it
                        store.put(slot.key, prev.fileno(), *slot.reuse)
                else:
                    with open(slot.part, "rb") as part:
                        _copy(part, slot.offset, slot.length, out)
                        if store is not None and slot.key != "end":
                            store.put(slot.key, part.fileno(), slot.offset, slot.length)
                    length = slot.length
                if slot.key != "end":
                    index[slot.key] = [pos, length]
                pos += length
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
    finally:
        if prev is not None:
            prev.close()
    return index


def _copy(src: BinaryIO, offset: int, length: int, dst: BinaryIO) -> None:
    dst.flush()
    out_fd, in_fd = dst.fileno(), src.fileno()
    while length:
        try:
            n = os.copy_file_range(in_fd, out_fd, min(length, 1 << 30), offset)
        except OSError:
            n = 0
        if n <= 0:  # not supported here: plain copy
            data = os.pread(in_fd, min(length, _CHUNK), offset)
            if not data:
                raise BuildError(f"{src.name} ended early while copying a pack group")
            n = os.write(out_fd, data)
        offset += n
        length -= n
    dst.seek(0, os.SEEK_END)
