"""Manifest text (format3 §2, §11): every reference manifest round-trips byte for byte and
obeys each line of the byte-exact checklist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from swupd_repo.errors import ManifestError
from swupd_repo.swupd.heuristics import modifier
from swupd_repo.swupd.manifest import manifest_hash, parse_manifest, sort_key

ENTRY = re.compile(rb"[FDLM.][d.][Csb.][r.]\t[0-9a-f]{64}\t[1-9][0-9]*\t/?[^\n]+\n")


def _all(vectors: Path) -> list[Path]:
    found = sorted((vectors / "manifests").glob("*/Manifest.*"))
    found += sorted((vectors / "www").glob("*/Manifest.*[!r]"))  # plain files, not .tar
    return [p for p in found if not p.name.endswith(".tar")]


def test_every_reference_manifest_round_trips(vectors: Path) -> None:
    paths = _all(vectors)
    assert len(paths) >= 12
    for path in paths:
        data = path.read_bytes()
        assert parse_manifest(data, str(path)).to_bytes() == data, path


def test_checklist_header_and_entries(vectors: Path) -> None:
    for path in _all(vectors):
        data = path.read_bytes()
        lines = data.split(b"\n")
        assert data.endswith(b"\n") and b"\r" not in data
        keys = [line.split(b"\t")[0] for line in lines[:6]]
        assert keys == [b"MANIFEST", b"version:", b"previous:", b"filecount:", b"timestamp:",
                        b"contentsize:"]
        assert lines[0] == b"MANIFEST\t3" and lines[6] == b""
        assert b"includes:" not in data
        body = data.split(b"\n\n", 1)[1]
        entries = body.splitlines(keepends=True)
        assert all(ENTRY.fullmatch(e) for e in entries), path
        m = parse_manifest(data)
        assert int(lines[3].split(b"\t")[1]) == len(entries) == m.filecount
        assert m.sorted_entries() == m.entries  # written in 2.53's order
        keys_sorted = [sort_key(e) for e in m.entries]
        assert keys_sorted == sorted(keys_sorted)
        for e in m.entries:
            if e.deleted:  # deleted: no type, zero hash
                assert e.type == "." and e.hash == "0" * 64
                assert e.modifier != "b"  # deleted boot entries are dropped
            elif e.type != "M":
                assert not e.path.startswith("/etc/")  # stateless: live /etc/ entries dropped
                assert e.modifier == modifier(e.path)
            assert not e.rename


def test_checklist_previous_and_m_hash(vectors: Path) -> None:
    for v, prev in ((10, 0), (20, 10)):
        d = vectors / "manifests" / str(v)
        mom = parse_manifest((d / "Manifest.MoM").read_bytes())
        assert mom.previous == prev and all(e.flags == "M..." for e in mom.entries)
        assert parse_manifest((d / "Manifest.full").read_bytes()).previous == 0
        for e in mom.entries:
            plain = vectors / "www" / str(e.last_change) / f"Manifest.{e.path}"
            assert e.hash == manifest_hash(plain.read_bytes())


def test_sort_is_path_descending_bytewise() -> None:
    data = (b"MANIFEST\t3\nversion:\t20\nprevious:\t10\nfilecount:\t4\ntimestamp:\t1\n"
            b"contentsize:\t0\n\n"
            + b"F...\t" + b"a" * 64 + b"\t10\t/z\n"
            + b"F...\t" + b"a" * 64 + b"\t10\t/a\n"
            + b"F...\t" + b"a" * 64 + b"\t20\t/\xc3\xa9\n"
            + b"F...\t" + b"a" * 64 + b"\t20\t/b b\n")
    m = parse_manifest(data)
    m.entries.reverse()
    assert m.to_bytes() == data


@pytest.mark.parametrize("bad", [
    b"MANIFEST\t3\nversion:\t1\n",
    b"MANIFEST\t3\nversion:\t1\nprevious:\t0\nfilecount:\t1\ntimestamp:\t1\ncontentsize:\t0\n\n"
    b"Fx..\t" + b"a" * 64 + b"\t1\t/x\n",
    b"MANIFEST\t3\nversion:\t1\nprevious:\t0\nfilecount:\t2\ntimestamp:\t1\ncontentsize:\t0\n\n"
    b"F...\t" + b"a" * 64 + b"\t1\t/x\n",
])
def test_bad_manifests_are_refused(bad: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(bad, "test")
