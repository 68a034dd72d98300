"""File deltas in Clear Linux's bsdiff format (bsdiff-format.md), both directions.

The client applies ``www/<T>/delta/<F>-<T>-<H>`` to the live old file (format3 §5.3). Its
patcher is libbsdiff 1.0.1, which reads only the ``BSDIFF4U``/``BSDIFF4V`` layout: little-endian
packed headers, two's-complement control values and one encoding per block. The match search
comes from PyPI ``bsdiff4`` (same algorithm as libbsdiff 1.0.1, so the triples are identical);
everything around it (small-file and FULLV20U rules, control overflow, block encodings, the 90%
rule, header choice) follows §9 of the spec, so our deltas equal Clear's byte for byte (the xz
blocks too, when liblzma can be called directly, see :func:`_xz`).

:func:`make_delta` and :func:`apply_delta` are pure (bytes in, bytes out); the caller does I/O.
Memory: the suffix sort needs ~18 bytes per old byte. :func:`delta_memory` estimates a job's
peak so a pool can be bounded, and :data:`DELTA_SIZE_LIMIT` keeps one job under ~700 MiB:
files larger than that get no delta (the client downloads the fullfile, which is always valid).
"""

from __future__ import annotations

import bz2
import ctypes
import ctypes.util
import lzma
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import bsdiff4.core

from ..errors import SwupdRepoError

MAGIC_V20 = b"BSDIFF4U"
MAGIC_V21 = b"BSDIFF4V"
FULLDL = b"FULLV20U"
DIRDL = b"DIR_V20U"

_HDR_V20 = struct.Struct("<8sBIQQQQQIIIH")  # 67 bytes
_HDR_V21 = struct.Struct("<8sBBHHHHIIIH")  # 32 bytes

# Block encodings, numbered as libbsdiff's enum (ANY=0 is the encoder's "choose").
NONE, BZIP2, GZIP, XZ, ZEROS = 1, 2, 3, 4, 5
_ENC_NAMES = {NONE: "none", BZIP2: "bzip2", GZIP: "gzip", XZ: "xz", ZEROS: "zeros"}
# First bit of each block in the u16 encoding word; a block's bits follow in this order.
_CTRL_SHIFT, _DIFF_SHIFT, _EXTRA_SHIFT = 0, 5, 10
_BIT_ORDER = (NONE, BZIP2, GZIP, XZ, ZEROS)  # reader's preference when several bits are set

SMALLFILE_LIMIT = 65536  # both files below this -> compact header allowed
MIN_NEW_SIZE = 200  # smaller new files always get FULLV20U
MAX_NEW_SIZE = 512 * 1024 * 1024  # the patcher refuses larger results
XZ_MEMLIMIT = 80 * 1024 * 1024  # the patcher's xz decoder limit
# Largest old or new file we make a delta for. bsdiff needs ~18x the old size (two int64
# suffix arrays), so 32 MiB means ~600 MiB for one job; bigger files are sent whole.
DELTA_SIZE_LIMIT = 32 * 1024 * 1024

_MIB = 1024 * 1024


class DeltaError(SwupdRepoError):
    """A delta file is not one the swupd client's patcher would apply."""


@dataclass(frozen=True)
class DeltaHeader:
    """The decoded header of a BSDIFF4U/BSDIFF4V file."""

    magic: bytes
    offset: int
    control_length: int
    diff_length: int
    extra_length: int
    old_size: int
    new_size: int
    mode: int
    uid: int
    gid: int
    encoding: int


# --------------------------------------------------------------------------- memory budget

def delta_memory(old_size: int, new_size: int) -> int:
    """Estimated peak bytes of one :func:`make_delta` call, for sizing a process pool.

    bsdiff: suffix arrays 16 B per old byte plus both inputs and the three blocks; then the
    xz -9e pass over the biggest block: ~64 MiB hash table plus ~9 B per input byte.
    """
    diff_phase = 18 * old_size + 3 * new_size
    xz_phase = old_size + 3 * new_size + 64 * _MIB + 9 * new_size
    return max(diff_phase, xz_phase) + 16 * _MIB


def delta_wanted(old_size: int, new_size: int, limit: int = DELTA_SIZE_LIMIT) -> bool:
    """Whether a delta is worth computing at all (cheap checks before reading the files)."""
    return 0 < old_size <= limit and MIN_NEW_SIZE <= new_size <= min(limit, MAX_NEW_SIZE)


# --------------------------------------------------------------------------- encoder

#: Windows of the new file looked up in the old one by :func:`delta_may_pay`.
_SAMPLES = 64
_SAMPLE_WIDTH = 16
#: Below this share of windows found, the files are called unrelated...
_UNRELATED = 0.1
#: ...and at this zlib-1 ratio or above, the new file is called incompressible.
_INCOMPRESSIBLE = 0.97


def similarity(old: bytes, new: bytes) -> float:
    """Share of evenly spaced 16-byte windows of ``new`` that occur anywhere in ``old``.

    Costs at most 64 substring searches (C speed), against seconds per MB for the suffix
    sort of a full bsdiff."""
    if len(new) < _SAMPLE_WIDTH or not old:
        return 1.0
    step = max(1, (len(new) - _SAMPLE_WIDTH) // _SAMPLES)
    starts = range(0, len(new) - _SAMPLE_WIDTH + 1, step)
    hits = sum(old.find(new[p:p + _SAMPLE_WIDTH]) >= 0 for p in starts)
    return hits / len(starts)


def delta_may_pay(old: bytes, new: bytes) -> bool:
    """False only when bsdiff can give nothing but ``FULLV20U``: the files share (almost) no
    content, so the delta would be the new bytes compressed, and those bytes do not compress,
    so the 90 % rule would discard it. An unrelated but compressible new file still goes
    through bsdiff, because Clear publishes such a "delta" (the vectors have several).

    The one miss: data whose redundancy lies beyond zlib's 32 KiB window, which xz -9e in a
    delta could still shrink below 90 %; then the client downloads the fullfile instead.
    """
    if similarity(old, new) >= _UNRELATED:
        return True
    return len(zlib.compress(new, 1)) < _INCOMPRESSIBLE * len(new)


def make_delta(old: bytes, new: bytes, mode: int, uid: int, gid: int) -> bytes | None:
    """The delta file Clear's ``bsdiff`` writes for old -> new, or None when it writes none
    or only ``FULLV20U`` (swupd-server discards those, so they are never published).

    ``mode`` is the new file's full ``st_mode`` (type bits included), ``uid``/``gid`` its
    owner: the patcher applies them and the client's hash check covers them. A pair that
    :func:`delta_may_pay` rules out gets None without the search.
    """
    if not delta_may_pay(old, new):
        return None
    result = encode_delta(old, new, mode, uid, gid)
    return None if result is None or result == FULLDL else result


def encode_delta(old: bytes, new: bytes, mode: int, uid: int, gid: int) -> bytes | None:
    """Exactly what ``make_bsdiff_delta(..., ANY)`` produces: the delta, the 8-byte
    ``FULLV20U`` marker, or None where it returns -1 (control overflow) and writes nothing."""
    if not old or len(new) < MIN_NEW_SIZE:
        return FULLDL
    smallfile = len(old) < SMALLFILE_LIMIT and len(new) < SMALLFILE_LIMIT
    control_sm, diff, extra = bsdiff4.core.diff(old, new)
    if len(control_sm) > len(new) + 25:  # 24 * triples > newsize + 25
        return None
    control = _control_to_twos(control_sm)
    c_enc, c_data = _encode_block(control, zeros_allowed=False)
    d_enc, d_data = _encode_block(diff, zeros_allowed=True)
    e_enc, e_data = _encode_block(extra, zeros_allowed=True)
    encoding = (_bit(c_enc, _CTRL_SHIFT) | _bit(d_enc, _DIFF_SHIFT)
                | _bit(e_enc, _EXTRA_SHIFT))
    clen, dlen, elen = len(c_data), len(d_data), len(e_data)
    mode &= 0xFFFFFFFF
    if smallfile and clen < 256 and dlen < 65536 and elen < 65536:
        header = _HDR_V21.pack(MAGIC_V21, _HDR_V21.size, clen, dlen, elen, len(old),
                               len(new), mode, uid, gid, encoding)
    else:
        header = _HDR_V20.pack(MAGIC_V20, _HDR_V20.size, clen, dlen, elen, len(old),
                               len(new), 0, mode, uid, gid, encoding)
    if len(header) + clen + dlen + elen > 0.90 * len(new):
        return FULLDL
    return header + c_data + d_data + e_data


def _bit(enc: int, shift: int) -> int:
    return 1 << (shift + _BIT_ORDER.index(enc))


def _control_to_twos(control: bytes) -> bytes:
    """bsdiff4 writes sign-magnitude int64 (bit 63 = sign); Clear uses two's complement."""
    values = struct.unpack(f"<{len(control) // 8}Q", control)
    out = [(-(v & ~(1 << 63))) & 0xFFFFFFFFFFFFFFFF if v >> 63 else v for v in values]
    return struct.pack(f"<{len(out)}Q", *out)


def _control_to_sign_magnitude(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *((-v) | (1 << 63) if v < 0 else v for v in values))


def _encode_block(data: bytes, *, zeros_allowed: bool) -> tuple[int, bytes]:
    """libbsdiff's ``make_small`` for enc=ANY: keep the plain bytes unless a compressor beats
    them by its margin (gzip: any; xz: 1% + 64 B; bzip2: 5% + 512 B, no 512 for zeros)."""
    if not data:
        return NONE, data
    best_enc, best = NONE, data
    bzip_penalty = 512
    if data.count(0) == len(data):
        if zeros_allowed:
            return ZEROS, struct.pack("<Q", len(data))
        bzip_penalty = 0
    gz = _gzip(data)
    if len(gz) < len(best):
        best_enc, best = GZIP, gz
    xz = _xz(data)
    if xz is not None and 1.01 * len(xz) + 64 < len(best):
        best_enc, best = XZ, xz
    bz = bz2.compress(data, 9)
    if 1.05 * len(bz) + bzip_penalty < len(best):
        best_enc, best = BZIP2, bz
    return best_enc, best


def _gzip(data: bytes) -> bytes:
    """zlib level 9, windowBits 31 (gzip wrapper, mtime 0, OS 3), memLevel 8, as Clear."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
    return comp.compress(data) + comp.flush()


_LZMA_PRESET_EXTREME = 0x80000000
_LZMA_CHECK_CRC32 = 1


@cache
def _liblzma() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("lzma")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        fn = lib.lzma_easy_buffer_encode
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                   ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                   ctypes.c_size_t]
    return lib


def _xz(data: bytes) -> bytes | None:
    """xz -9e, CRC32, one stream. liblzma's buffer encoder records both sizes in the block
    header exactly like Clear; Python's :mod:`lzma` (the fallback) omits them, which the
    patcher accepts just the same. None when the output would not fit (Clear: L + 1000)."""
    lib = _liblzma()
    if lib is None:
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             preset=9 | lzma.PRESET_EXTREME)
    size = len(data) + 1000
    out = ctypes.create_string_buffer(size)
    pos = ctypes.c_size_t(0)
    ret = lib.lzma_easy_buffer_encode(9 | _LZMA_PRESET_EXTREME, _LZMA_CHECK_CRC32, None,
                                      data, len(data), out, ctypes.byref(pos), size)
    if ret != 0:
        return None
    return out.raw[:pos.value]


# --------------------------------------------------------------------------- decoder

def parse_header(delta: bytes) -> DeltaHeader:
    """Magic and header checks of §8 steps 1-4."""
    if len(delta) < 8:
        raise DeltaError(f"delta is {len(delta)} bytes, shorter than the 8-byte magic")
    magic = delta[:8]
    if magic == FULLDL:
        raise DeltaError("delta is a FULLV20U marker (no delta; fetch the full file)")
    if magic == DIRDL:
        raise DeltaError("delta is a DIR_V20U marker, which the patcher refuses")
    if magic not in (MAGIC_V20, MAGIC_V21):
        raise DeltaError(f"unknown delta magic {magic!r} (expected BSDIFF4U or BSDIFF4V)")
    if magic == MAGIC_V20:
        if len(delta) < _HDR_V20.size:
            raise DeltaError("BSDIFF4U header truncated")
        (_, offset, clen, dlen, elen, old_size, new_size, _mtime, mode, uid, gid,
         encoding) = _HDR_V20.unpack_from(delta)
        header_size = _HDR_V20.size
    else:
        if len(delta) < _HDR_V21.size:
            raise DeltaError("BSDIFF4V header truncated")
        (_, offset, clen, dlen, elen, old_size, new_size, mode, uid, gid,
         encoding) = _HDR_V21.unpack_from(delta)
        header_size = _HDR_V21.size
    for name, value in (("diff", dlen), ("extra", elen), ("old size", old_size),
                        ("new size", new_size)):
        if value >= 1 << 63:
            raise DeltaError(f"delta header: {name} is negative")
    if offset < header_size:
        raise DeltaError(f"delta header: first block at {offset}, inside the header")
    if len(delta) != offset + clen + dlen + elen:
        raise DeltaError(f"delta is {len(delta)} bytes but its header adds up to "
                         f"{offset + clen + dlen + elen}")
    return DeltaHeader(magic, offset, clen, dlen, elen, old_size, new_size, mode, uid, gid,
                       encoding)


def block_encoding(encoding: int, shift: int, *, zeros_allowed: bool) -> int:
    """The block's encoding: the first set bit in the order none, bzip2, gzip, xz, zeros."""
    for i, enc in enumerate(_BIT_ORDER[:4]):
        if encoding & (1 << (shift + i)):
            return enc
    if zeros_allowed and encoding & (1 << (shift + 4)):
        return ZEROS
    raise DeltaError(f"delta encoding word {encoding:#06x} has no encoding for a block")


def apply_delta(delta: bytes, old: bytes) -> tuple[bytes, int, int, int]:
    """Apply a delta like the client's ``bspatch``: returns (new data, mode, uid, gid).

    Every check of §8 is made; a delta the patcher would refuse raises :class:`DeltaError`.
    """
    hdr = parse_header(delta)
    c_enc = block_encoding(hdr.encoding, _CTRL_SHIFT, zeros_allowed=False)
    d_enc = block_encoding(hdr.encoding, _DIFF_SHIFT, zeros_allowed=True)
    e_enc = block_encoding(hdr.encoding, _EXTRA_SHIFT, zeros_allowed=True)
    if len(old) != hdr.old_size:
        raise DeltaError(f"old file is {len(old)} bytes, the delta expects {hdr.old_size}")
    if not old:
        raise DeltaError("old file is empty; the patcher cannot use it")
    if hdr.new_size > MAX_NEW_SIZE:
        raise DeltaError(f"new size {hdr.new_size} exceeds the patcher's 512 MiB limit")
    pos = hdr.offset
    c_raw = delta[pos:pos + hdr.control_length]
    pos += hdr.control_length
    d_raw = delta[pos:pos + hdr.diff_length]
    pos += hdr.diff_length
    e_raw = delta[pos:pos + hdr.extra_length]
    control = _decode_block("control", c_enc, c_raw)
    assert isinstance(control, bytes)
    triples, diff_used, extra_used = _walk_control(control, len(old), hdr.new_size)
    diff = _take("diff", _decode_block("diff", d_enc, d_raw), diff_used)
    extra = _take("extra", _decode_block("extra", e_enc, e_raw), extra_used)
    flat = [v for t in triples for v in t]
    try:
        new = bsdiff4.core.patch(old, hdr.new_size, _control_to_sign_magnitude(flat),
                                 diff, extra)
    except (ValueError, MemoryError) as exc:  # pragma: no cover - _walk_control checks first
        raise DeltaError(f"delta does not apply: {exc}") from exc
    return new, hdr.mode, hdr.uid, hdr.gid


def _walk_control(control: bytes, old_size: int, new_size: int
                  ) -> tuple[list[tuple[int, int, int]], int, int]:
    """The per-triple checks of §7; returns the triples used and the diff/extra bytes used."""
    triples: list[tuple[int, int, int]] = []
    newpos = oldpos = diff_used = extra_used = 0
    count = len(control) // 24
    while newpos < new_size:
        if len(triples) >= count:
            raise DeltaError(f"control block ends at triple {len(triples)} before the new "
                             f"file is complete ({newpos} of {new_size} bytes)")
        x, y, z = struct.unpack_from("<qqq", control, 24 * len(triples))
        if x < 0 or newpos + x > new_size:
            raise DeltaError(f"control triple {len(triples)}: diff length {x} out of range")
        newpos += x
        oldpos += x
        if y < 0 or newpos + y > new_size:
            raise DeltaError(f"control triple {len(triples)}: extra length {y} out of range")
        if not 0 <= oldpos + z <= old_size:
            raise DeltaError(f"control triple {len(triples)}: seek {z} leaves the old file")
        newpos += y
        oldpos += z
        diff_used += x
        extra_used += y
        triples.append((x, y, z))
    return triples, diff_used, extra_used


class _Zeros(int):
    """A zeros block: a budget of N zero bytes, never materialised beyond what is used."""


def _decode_block(name: str, enc: int, raw: bytes) -> bytes | _Zeros:
    try:
        if enc == NONE:
            return raw
        if enc == ZEROS:
            if len(raw) < 8:
                raise DeltaError(f"{name} block: zeros count needs 8 bytes, has {len(raw)}")
            return _Zeros(struct.unpack_from("<Q", raw)[0])
        if enc == BZIP2:
            return bz2.BZ2Decompressor().decompress(raw)  # first stream only, like Clear
        if enc == GZIP:
            return _gunzip(raw)
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        data = dec.decompress(raw)
        if dec.check == lzma.CHECK_NONE:
            raise DeltaError(f"{name} block: xz stream without integrity check")
        return data
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
        raise DeltaError(f"{name} block ({_ENC_NAMES[enc]}) does not decode: {exc}") from exc


def _gunzip(raw: bytes) -> bytes:
    """zlib ``gzread``: concatenated members; data without the gzip magic passes through."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    out = []
    while raw[:2] == b"\x1f\x8b":
        dec = zlib.decompressobj(31)
        out.append(dec.decompress(raw))
        if not dec.eof:
            raise DeltaError("gzip block is truncated")
        raw = dec.unused_data
    return b"".join(out)


def _take(name: str, block: bytes | _Zeros, used: int) -> bytes:
    if isinstance(block, _Zeros):
        if used > block:
            raise DeltaError(f"{name} block: needs {used} zero bytes, budget is {int(block)}")
        return bytes(used)
    if len(block) < used:
        raise DeltaError(f"{name} block: needs {used} bytes, holds {len(block)}")
    return block[:used]
