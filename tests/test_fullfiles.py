"""Fullfiles (format3 §4): one member, numeric owner with empty names, pax xattrs, policies.

Each fullfile is also extracted with GNU tar exactly as the client does (as root, ``-p
--xattrs --xattrs-include='*'``) and the result must hash to the fullfile's name.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from swupd_repo.errors import BuildError
from swupd_repo.progress import RecordingReporter
from swupd_repo.swupd.fullfiles import pax_record, write_fullfile, write_fullfiles
from swupd_repo.swupd.hashing import hash_path
from swupd_repo.swupd.scan import Record, scan_tree

#: cap_net_raw+ep as a VFS_CAP_REVISION_2 value (the vectors' cap-ping)
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Record]:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "text").write_bytes(b"".join(b"line %d\n" % (i * 7919 % 10007) for i in range(3000)))
    (root / "random").write_bytes(os.urandom(50_000))  # not compressible
    (root / "empty").write_bytes(b"")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    os.chown(root / "suid", 1000, 1001)
    os.chmod(root / "dir", 0o1777)
    os.setxattr(root / "dir", "user.d", b"on-a-dir")
    os.setxattr(root / "text", "security.capability", CAP)  # binary value
    os.setxattr(root / "text", "user.z", b"\xff\xfe")
    os.symlink("text", root / "link")
    os.symlink("x" * 150, root / "longlink")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "tty", 0o620 | stat.S_IFCHR, os.makedev(4, 1))
    return scan_tree(root, RecordingReporter()).records


def _client_extract(tar: Path, dest: Path) -> Path:
    dest.mkdir(exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-p", "--xattrs", "--xattrs-include=*", "-xf",
                    str(tar)], check=True, capture_output=True)
    listing = subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    assert len(listing) == 1  # the client's check_tarfile_content
    return dest / listing[0].rstrip("/")


@pytest.mark.parametrize("policy", ["gzip", "xz", "smallest"])
def test_client_extraction_reproduces_the_hash(tree: dict[str, Record], tmp_path: Path,
                                               policy: str) -> None:
    out = tmp_path / f"files-{policy}"
    assert write_fullfiles(tree.values(), out, policy, RecordingReporter()) == len(tree)
    for path, rec in tree.items():
        tar = out / f"{rec.hash}.tar"
        with tarfile.open(tar) as t:
            (m,) = t.getmembers()
            assert m.name == rec.hash
            assert (m.uname, m.gname, m.uid, m.gid) == ("", "", rec.uid, rec.gid)
            assert m.mode == stat.S_IMODE(rec.mode) and m.mtime == rec.mtime
        staged = _client_extract(tar, tmp_path / f"staged-{policy}")
        assert hash_path(staged, path) == rec.hash, path


def test_member_types_and_xattrs(tree: dict[str, Record], tmp_path: Path) -> None:
    out = tmp_path / "files"
    write_fullfiles(tree.values(), out, "gzip", RecordingReporter())

    def member(path: str) -> tarfile.TarInfo:
        with tarfile.open(out / f"{tree[path].hash}.tar") as t:
            return t.getmembers()[0]

    assert member("/dir").isdir() and member("/dir").name == tree["/dir"].hash
    raw = (out / f"{tree['/dir'].hash}.tar").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert member("/link").linkname == "text"
    assert member("/longlink").linkname == "x" * 150
    assert member("/fifo").isfifo()
    tty = member("/tty")
    assert tty.ischr() and (tty.devmajor, tty.devminor) == (4, 1)
    assert member("/dir").pax_headers["SCHILY.xattr.user.d"] == "on-a-dir"
    cap = member("/text").pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP
    odd = member("/text").pax_headers["SCHILY.xattr.user.z"]
    assert odd.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_smallest_is_never_bigger_and_directories_are_gzip(tree: dict[str, Record],
                                                           tmp_path: Path) -> None:
    sizes = {}
    for policy in ("smallest", "gzip", "xz"):
        out = tmp_path / policy
        write_fullfiles(tree.values(), out, policy, RecordingReporter())
        sizes[policy] = {p: (out / f"{r.hash}.tar").stat().st_size for p, r in tree.items()}
        assert (out / f"{tree['/dir'].hash}.tar").read_bytes()[:2] == b"\x1f\x8b"
        assert not list(out.glob(".*.tmp"))
    for path in tree:
        assert sizes["smallest"][path] <= min(sizes["gzip"][path], sizes["xz"][path])
    # the structured text compresses best with xz or bzip2, never with gzip
    assert sizes["smallest"]["/text"] < sizes["gzip"]["/text"]


def test_existing_fullfiles_are_not_rebuilt(tree: dict[str, Record], tmp_path: Path) -> None:
    out = tmp_path / "files"
    write_fullfiles(tree.values(), out, "gzip", RecordingReporter())
    assert write_fullfiles(tree.values(), out, "gzip", RecordingReporter()) == 0


def test_file_changed_after_hashing_is_refused(tree: dict[str, Record], tmp_path: Path) -> None:
    rec = tree["/text"]
    Path(rec.disk).write_bytes(b"x" * rec.size)  # same size, other bytes
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError, match="changed after it was hashed"):
        write_fullfile(rec, str(tmp_path / "o"), "gzip")
    assert not list((tmp_path / "o").iterdir())


def test_pax_record_length_counts_itself() -> None:
    rec = pax_record(b"SCHILY.xattr.user.a", b"v" * 90)
    length, rest = rec.split(b" ", 1)
    assert int(length) == len(rec) and rest.endswith(b"\n")
    assert pax_record(b"k", b"") == b"5 k=\n"
