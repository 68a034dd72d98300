"""The swupd hash on real files (format3 §3, §9.1-§9.4) and the scan's cache and pool."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from swupd_repo.errors import BuildError
from swupd_repo.progress import RecordingReporter
from swupd_repo.swupd.hashing import hash_path
from swupd_repo.swupd.scan import hash_file_batch, scan_tree

EMPTY = "28cb7c6cad23920f344157f48ae353caca34e9a2f5cff934a4fdaaf7509f2062"
HELLO = "f716c6cb18be9041e1748d52be544645cfc98d2c99dd7e72bdd6f702aa1ee744"
USR_BIN = "24d8955d9952c3fcb2241b0f8d225205a5861cec9757b3a075d34810da9b08af"
LINK = "73e470325111055609cd39644a852f4d7c516994eba9c2657c7c8aa208c7d9a9"
XATTR_FILE = "a784db1446d57b09fbd7a6d6579c0004b6db7646a7cec55df604a8b6dfe7ebb2"
SMACK = "c7b76ae24a171bb783ad057bdbeb5a8fcbcc105fc554327528118c98f4c368dc"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The spec's test-vector objects as real files owned by root."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    os.chmod(root / "usr", 0o755)
    os.chmod(root / "usr" / "bin", 0o755)
    for name, data, mode in (("empty", b"", 0o644), ("hello", b"hello\n", 0o644),
                             ("xf", b"xattr file\n", 0o644), ("smack", b"hello\n", 0o755)):
        p = root / name
        p.write_bytes(data)
        os.chmod(p, mode)
    os.setxattr(root / "xf", "user.test", b"val")
    os.setxattr(root / "smack", "security.SMACK64", b"_")
    os.symlink("hello", root / "link")
    for p in root.rglob("*"):
        os.lchown(p, 0, 0)
    return root


def test_spec_vectors_on_disk(tree: Path) -> None:
    assert hash_path(tree / "empty", "/empty") == EMPTY
    assert hash_path(tree / "hello", "/hello") == HELLO
    assert hash_path(tree / "usr" / "bin", "/usr/bin") == USR_BIN
    assert hash_path(tree / "link", "/link") == LINK
    assert hash_path(tree / "xf", "/xf") == XATTR_FILE
    assert hash_path(tree / "smack", "/smack") == SMACK


@pytest.mark.parametrize("workers", [1, 2])
def test_scan_matches_hash_path(tree: Path, workers: int) -> None:
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        result = scan_tree(tree, RecordingReporter(), executor=pool)
    finally:
        if pool:
            pool.shutdown()
    recs = result.records
    assert set(recs) == {"/usr", "/usr/bin", "/empty", "/hello", "/xf", "/smack", "/link"}
    assert recs["/usr/bin"].hash == USR_BIN and recs["/usr/bin"].type == "D"
    assert recs["/link"].hash == LINK and recs["/link"].type == "L"
    assert recs["/xf"].hash == XATTR_FILE and recs["/smack"].hash == SMACK
    assert result.hashed == 4 and result.cached == 0


def test_hard_links_are_separate_entries_with_one_hash(tree: Path) -> None:
    os.link(tree / "hello", tree / "hello2")
    recs = scan_tree(tree, RecordingReporter()).records
    assert recs["/hello"].hash == recs["/hello2"].hash == HELLO


def test_fifo_and_device_hash_as_empty_files(tree: Path) -> None:
    """§9.3: type bits and rdev in the key, no data; the fifo is never opened (no hang)."""
    os.mkfifo(tree / "fifo", 0o600)
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(tree / "null", 0o666)  # past the umask
    recs = scan_tree(tree, RecordingReporter()).records
    assert recs["/fifo"].type == "F" and recs["/null"].type == "F"
    # the §3 construction written out here, independent of the code under test
    fifo = _reference_hash(stat.S_IFIFO | 0o600, os.makedev(0, 0))
    null = _reference_hash(stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert recs["/fifo"].hash == hash_path(tree / "fifo", "/fifo") == fifo
    assert recs["/null"].hash == hash_path(tree / "null", "/null") == null
    assert len({fifo, null, EMPTY}) == 3


def _reference_hash(mode: int, rdev: int) -> str:
    """HMAC(HMAC(le64[mode, 0, 0, rdev, 0], no xattrs) as hex, empty data): a root-owned
    special file."""
    key = hmac.new(struct.pack("<5Q", mode, 0, 0, rdev, 0), b"", hashlib.sha256).hexdigest()
    return hmac.new(key.encode(), b"", hashlib.sha256).hexdigest()


def test_owner_and_mode_change_the_hash(tree: Path) -> None:
    before = hash_path(tree / "hello", "/hello")
    os.chown(tree / "hello", 1000, 0)
    assert hash_path(tree / "hello", "/hello") not in (before, HELLO)
    os.chown(tree / "hello", 0, 0)
    os.chmod(tree / "hello", 0o600)
    assert hash_path(tree / "hello", "/hello") != before


def test_refused_names_are_skipped_with_their_subtree(tree: Path) -> None:
    (tree / "bad;dir" / "sub").mkdir(parents=True)
    (tree / "bad;dir" / "sub" / "f").write_text("x")
    (tree / "+plus").write_text("x")
    reporter = RecordingReporter()
    recs = scan_tree(tree, reporter).records
    assert not [p for p in recs if "bad" in p or "plus" in p]
    assert len(reporter.warnings) == 2 and "bad;dir" in " ".join(reporter.warnings)


def test_newline_in_a_name_is_a_clear_error(tree: Path) -> None:
    (tree / "two\nlines").write_text("x")
    with pytest.raises(BuildError, match="newline"):
        scan_tree(tree, RecordingReporter())


def test_cache_reuses_proven_hashes_and_rehashes_changes(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    first = scan_tree(tree, RecordingReporter(), cache_file=cache, racy_ns=0)
    assert first.hashed == 4
    again = scan_tree(tree, RecordingReporter(), cache_file=cache, racy_ns=0)
    assert (again.hashed, again.cached) == (0, 4)
    assert {p: r.hash for p, r in again.records.items()} == \
        {p: r.hash for p, r in first.records.items()}
    # content (same size), xattr and owner changes all move ctime -> re-hashed
    (tree / "hello").write_bytes(b"HELLO\n")
    os.setxattr(tree / "xf", "user.test", b"other")
    os.chown(tree / "empty", 0, 1)
    third = scan_tree(tree, RecordingReporter(), cache_file=cache, racy_ns=0)
    assert (third.hashed, third.cached) == (3, 1)
    assert third.records["/hello"].hash == hash_path(tree / "hello", "/hello") != HELLO


def test_cache_does_not_store_racy_entries(tree: Path, tmp_path: Path) -> None:
    """Files changed within RACY_NS of the scan are never trusted later."""
    cache = tmp_path / "cache.json"
    scan_tree(tree, RecordingReporter(), cache_file=cache)  # files are seconds old at most
    again = scan_tree(tree, RecordingReporter(), cache_file=cache)
    assert again.cached == 0 and again.hashed == 4


def test_file_changing_size_while_hashed_is_an_error(tree: Path) -> None:
    with pytest.raises(BuildError, match="changed size"):
        hash_file_batch([(str(tree / "hello"), b"k" * 64, 5)])
