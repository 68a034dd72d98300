"""Clear bsdiff deltas: the vectors' deltas decode, apply and re-encode byte for byte."""

from __future__ import annotations

import random
import struct
import tarfile
from pathlib import Path

import pytest

from swupd_repo.errors import SwupdRepoError
from swupd_repo.swupd import delta as d
from swupd_repo.swupd.hashing import hash_bytes
from swupd_repo.swupd.manifest import parse_manifest
from swupd_repo.swupd.packstream import _xattrs


def _fullfile(vectors: Path, version: int, digest: str) -> tuple[tarfile.TarInfo, bytes]:
    with tarfile.open(vectors / "www" / str(version) / "files" / f"{digest}.tar") as tar:
        info = tar.next()
        assert info is not None
        f = tar.extractfile(info)
        return info, f.read() if f else b""


def _vector_cases(vectors: Path):
    old = parse_manifest((vectors / "manifests/10/Manifest.full").read_bytes()).by_path()
    new = {e.hash: e for e in
           parse_manifest((vectors / "manifests/20/Manifest.full").read_bytes()).entries}
    for path in sorted((vectors / "www/20/delta").iterdir()):
        frm, to, digest = path.name.split("-", 2)
        entry = new[digest]
        prev = old[entry.path]
        assert (int(frm), int(to)) == (prev.last_change, entry.last_change)
        yield path, prev, entry


def test_vector_deltas_apply_and_reencode_identically(vectors: Path) -> None:
    cases = list(_vector_cases(vectors))
    assert len(cases) == 24
    for path, prev, entry in cases:
        blob = path.read_bytes()
        _, old_data = _fullfile(vectors, prev.last_change, prev.hash)
        info, new_expected = _fullfile(vectors, entry.last_change, entry.hash)
        new, mode, uid, gid = d.apply_delta(blob, old_data)
        assert new == new_expected, path.name
        # the header carries the new file's full st_mode and owner: the hash must come out
        assert mode >> 12 == 0o10
        assert hash_bytes(mode, uid, gid, 0, len(new), _xattrs(info), new) == entry.hash
        assert d.make_delta(old_data, new, mode, uid, gid) == blob, path.name


def test_vectors_use_both_headers(vectors: Path) -> None:
    magics = {p.read_bytes()[:8] for p in (vectors / "www/20/delta").iterdir()}
    assert magics == {d.MAGIC_V20, d.MAGIC_V21}


def test_worked_example_byte_exact() -> None:
    old = b"".join(f"line {i}: the quick brown foxx\n".encode() for i in range(8))
    assert len(old) == 232
    blob = d.make_delta(old, old + b"v2!\n", 0o100640, 1000, 1000)
    assert blob == bytes.fromhex(
        "4253444946463456" "20" "18" "0800" "0400" "e800" "ec00" "a0810000" "e8030000"
        "e8030000" "0106" "e800000000000000" "0400000000000000" "ffffffffffffffff"
        "e800000000000000" "7632210a")
    assert d.apply_delta(blob, old) == (old + b"v2!\n", 0o100640, 1000, 1000)


def test_fullv20u_rules() -> None:
    rnd = random.Random(3)
    data = rnd.randbytes(5000)
    assert d.encode_delta(b"", data, 0o100644, 0, 0) == d.FULLDL  # empty old
    assert d.encode_delta(data, data[:199], 0o100644, 0, 0) == d.FULLDL  # new < 200
    assert d.encode_delta(data, rnd.randbytes(5000), 0o100644, 0, 0) == d.FULLDL  # 90% rule
    assert d.make_delta(data, rnd.randbytes(5000), 0o100644, 0, 0) is None
    assert d.make_delta(data, data[:199], 0o100644, 0, 0) is None


def test_control_overflow_writes_nothing() -> None:
    old = random.Random(1).randbytes(208)
    new = b"".join(reversed([old[i:i + 16] for i in range(0, 208, 16)]))
    assert d.encode_delta(old, new, 0o100644, 0, 0) is None


@pytest.mark.parametrize("seed", range(12))
def test_round_trip_random_edits(seed: int) -> None:
    rnd = random.Random(seed)
    old = rnd.randbytes(rnd.choice([4000, 20000, 70000, 300000]))
    new = bytearray(old)
    for _ in range(rnd.randrange(1, 12)):
        pos = rnd.randrange(len(new))
        op = rnd.randrange(3)
        if op == 0:
            new[pos:pos + 4] = rnd.randbytes(4)
        elif op == 1:
            new[pos:pos] = rnd.randbytes(rnd.randrange(1, 600))
        else:
            del new[pos:pos + rnd.randrange(1, 300)]
    mode = 0o104755 if seed % 2 else 0o100600
    blob = d.make_delta(old, bytes(new), mode, seed, 2 * seed)
    assert blob is not None
    assert d.apply_delta(blob, old) == (bytes(new), mode, seed, 2 * seed)
    small = len(old) < 65536 and len(new) < 65536
    assert blob[:8] == (d.MAGIC_V21 if small else d.MAGIC_V20)


def test_every_block_encoding_decodes() -> None:
    """Force each encoding by re-packing a real delta's blocks, then apply."""
    old = random.Random(9).randbytes(3000)
    new = old[:1000] + b"X" * 50 + old[1000:] + b"tail" * 20
    blob = d.make_delta(old, new, 0o100644, 0, 0)
    assert blob is not None
    hdr = d.parse_header(blob)
    raw = []
    pos = hdr.offset
    for n, shift in ((hdr.control_length, 0), (hdr.diff_length, 5), (hdr.extra_length, 10)):
        enc = d.block_encoding(hdr.encoding, shift, zeros_allowed=shift > 0)
        block = d._decode_block("x", enc, blob[pos:pos + n])
        raw.append(bytes(block) if isinstance(block, bytes) else bytes(int(block)))
        pos += n
    import bz2
    import lzma
    encoders = {d.NONE: lambda b: b, d.BZIP2: lambda b: bz2.compress(b), d.GZIP: d._gzip,
                d.XZ: lambda b: lzma.compress(b, check=lzma.CHECK_SHA256)}
    for enc, fn in encoders.items():
        blocks = [fn(b) for b in raw]
        word = sum(1 << (shift + d._BIT_ORDER.index(enc)) for shift in (0, 5, 10))
        head = struct.pack("<8sBIQQQQQIIIH", d.MAGIC_V20, 67, len(blocks[0]), len(blocks[1]),
                           len(blocks[2]), len(old), len(new), 0, 0o100644, 0, 0, word)
        assert d.apply_delta(head + b"".join(blocks), old)[0] == new, enc


def _small(old: bytes, new: bytes) -> bytes:
    blob = d.make_delta(old, new, 0o100644, 0, 0)
    assert blob is not None and blob[:8] == d.MAGIC_V21
    return blob


def _patch_header(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    return blob[:offset] + struct.pack(fmt, value) + blob[offset + struct.calcsize(fmt):]


def test_patcher_checks() -> None:
    old = b"".join(f"line {i}: the quick brown foxx\n".encode() for i in range(8))
    new = old + b"v2!\n"
    blob = _small(old, new)

    def refused(data: bytes, base: bytes = old, match: str = "") -> None:
        with pytest.raises(d.DeltaError, match=match) as info:
            d.apply_delta(data, base)
        assert isinstance(info.value, SwupdRepoError)

    refused(b"BSDIF", match="shorter than")
    refused(d.FULLDL, match="FULLV20U")
    refused(d.DIRDL + bytes(40), match="DIR_V20U")
    refused(b"BSDIFF40" + blob[8:], match="unknown delta magic")
    refused(blob[:20], match="truncated")
    refused(blob + b"\0", match="adds up")
    refused(blob[:-1], match="adds up")
    refused(blob, old[:-1], match="old file is 231")
    refused(_patch_header(blob, 14, "<H", 0), b"", match="empty")
    refused(_patch_header(blob, 30, "<H", 0x0600), match="no encoding")  # control: no bit
    # zeros budget smaller than the diff bytes the control asks for
    refused(blob[:0x38] + struct.pack("<Q", 231) + blob[0x40:], match="budget")
    # final triple's seek leaves [0, oldsize]
    refused(blob[:0x30] + struct.pack("<q", 5) + blob[0x38:], match="seek")
    # control asks for more diff bytes than the new file has
    refused(blob[:0x20] + struct.pack("<q", 300) + blob[0x28:], match="diff length")
    # control runs out before the new file is complete
    refused(_patch_header(blob, 16, "<H", 300), match="control block ends")
    # an xz block without integrity check is refused
    import lzma
    plain_ctrl = blob[0x20:0x38]
    xz_none = lzma.compress(plain_ctrl, check=lzma.CHECK_NONE)
    word = (1 << 3) | (1 << 9) | (1 << 10)
    head = struct.pack("<8sBBHHHHIIIH", d.MAGIC_V21, 32, len(xz_none), 8, 4, 232, 236,
                       0o100640, 0, 0, word)
    refused(head + xz_none + blob[0x38:], match="integrity")
    # padding between header and first block is accepted (larger offset)
    padded = _patch_header(blob, 8, "B", 40)
    assert d.apply_delta(padded[:32] + bytes(8) + padded[32:], old)[0] == new


def test_large_new_size_refused() -> None:
    blob = struct.pack("<8sBIQQQQQIIIH", d.MAGIC_V20, 67, 0, 0, 0, 4, d.MAX_NEW_SIZE + 1, 0,
                       0o100644, 0, 0, 0x0421)
    with pytest.raises(d.DeltaError, match="512 MiB"):
        d.apply_delta(blob, b"abcd")


def test_memory_estimate_and_size_limit() -> None:
    mib = 1 << 20
    assert d.delta_memory(10 * mib, 10 * mib) >= 18 * 10 * mib
    assert d.delta_memory(32 * mib, 32 * mib) < 1024 * mib
    assert d.delta_memory(2 * mib, 1 * mib) < d.delta_memory(4 * mib, 1 * mib)
    assert d.delta_wanted(1000, 1000)
    assert not d.delta_wanted(0, 1000)
    assert not d.delta_wanted(1000, 199)
    assert not d.delta_wanted(d.DELTA_SIZE_LIMIT + 1, 1000)
    assert not d.delta_wanted(1000, d.DELTA_SIZE_LIMIT + 1)


def test_xz_blocks_come_from_liblzma() -> None:
    """Byte identity with Clear needs liblzma's buffer encoder (the fallback differs)."""
    assert d._liblzma() is not None
    data = bytes(range(256)) * 64
    import lzma
    assert lzma.decompress(d._xz(data)) == data


def test_similarity_estimate_keeps_every_vector_delta(vectors: Path) -> None:
    """The cheap estimate never skips a pair for which Clear's bsdiff made a delta (the
    vectors hold similar pairs and unrelated but compressible ones)."""
    for path, prev, entry in _vector_cases(vectors):
        _, old_data = _fullfile(vectors, prev.last_change, prev.hash)
        _, new_data = _fullfile(vectors, entry.last_change, entry.hash)
        assert d.delta_may_pay(old_data, new_data), path.name


def test_similarity_estimate_skips_unrelated_incompressible_file(monkeypatch) -> None:
    """A completely new, incompressible file can only give FULLV20U (90 % rule): the full
    bsdiff search (seconds per MB) is never entered for it."""
    rng = random.Random(5)
    old = rng.randbytes(300_000)
    new = rng.randbytes(310_000)
    assert d.encode_delta(old, new, 0o100755, 0, 0) == d.FULLDL  # what bsdiff would say
    assert not d.delta_may_pay(old, new)

    def refuse(*_args):  # a spy: the search must not run
        raise AssertionError("bsdiff search entered for an unrelated file")

    monkeypatch.setattr(d.bsdiff4.core, "diff", refuse)
    assert d.make_delta(old, new, 0o100755, 0, 0) is None
    # similar content still goes through the search
    with pytest.raises(AssertionError, match="search entered"):
        d.make_delta(old, old[:1000] + b"edit" + old[1000:], 0o100755, 0, 0)
