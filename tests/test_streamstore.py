"""The storage's stream store: packs assembled from it equal packs compressed afresh, a damaged
entry is detected, dropped and recomputed, and the store stays within its bound."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers_trees import packs_repo
from swupd_repo.progress import NullReporter
from swupd_repo.swupd import packs, packstream
from swupd_repo.swupd.manifest import Manifest, parse_manifest
from swupd_repo.swupd.streamstore import STORE_DIR, StreamStore


@pytest.fixture(scope="module")
def repo(vectors: Path, rootfs_trees: dict[int, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vectors' www without packs and deltas, plus the extracted images (as test_packs)."""
    return packs_repo(tmp_path_factory.mktemp("store"), vectors, rootfs_trees)


def _manifest(www: Path, version: int) -> Manifest:
    return parse_manifest((www / str(version) / "Manifest.os-core").read_bytes())


def _zero(repo: Path, out: Path, store: StreamStore | None) -> None:
    packs.write_zero_pack(repo / "www", "os-core", _manifest(repo / "www", 20), out,
                          previous_pack=None, workers=2, reporter=NullReporter(), store=store)


def _delta(repo: Path, out: Path, store: StreamStore | None) -> None:
    www = repo / "www"
    packs.write_delta_pack(www, "os-core", _manifest(www, 10), _manifest(www, 20), out,
                           image_dir=repo / "image", workers=2, reporter=NullReporter(),
                           store=store)


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_packs_from_the_store_equal_fresh_ones(repo: Path, tmp_path: Path) -> None:
    plain_zero, plain_delta = tmp_path / "z0.tar", tmp_path / "d0.tar"
    _zero(repo, plain_zero, None)
    _delta(repo, plain_delta, None)
    store = StreamStore(tmp_path / "store")
    _zero(repo, tmp_path / "z1.tar", store)
    assert store.hits == 0 and any(store.root.rglob("*.xz"))
    _delta(repo, tmp_path / "d1.tar", store)
    assert store.hits > 0  # the delta pack's staged groups came from the zero pack's
    assert (tmp_path / "z1.tar").read_bytes() == plain_zero.read_bytes()
    assert (tmp_path / "d1.tar").read_bytes() == plain_delta.read_bytes()
    # a later build of the same packs compresses nothing but the end-of-archive stream
    again = StreamStore(tmp_path / "store")
    _zero(repo, tmp_path / "z2.tar", again)
    groups = len(packstream.plan_groups(packs._staged(repo / "www", packs._live(
        _manifest(repo / "www", 20))))) + 1
    assert again.hits == groups
    assert (tmp_path / "z2.tar").read_bytes() == plain_zero.read_bytes()


def test_damaged_entry_is_dropped_and_recomputed(repo: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean.tar"
    store = StreamStore(tmp_path / "store")
    _zero(repo, clean, store)
    entries = sorted(store.root.rglob("*.xz"), key=lambda p: -p.stat().st_size)
    flipped, truncated = entries[0], entries[1]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0x40  # inside the stream: only the checksum can tell
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    again = StreamStore(tmp_path / "store")
    out = tmp_path / "again.tar"
    _zero(repo, out, again)
    assert out.read_bytes() == clean.read_bytes()
    assert again.dropped == 1  # the flipped one; the truncated one failed the cheap look
    for entry in (flipped, truncated):  # both compressed again and stored whole
        key = entry.name.removesuffix(".xz")
        assert again.has(key)
        with open(tmp_path / "copy", "wb") as f:
            assert again.copy_into(key, f) is not None


def test_prune_keeps_the_bound_and_what_the_build_used(tmp_path: Path) -> None:
    store = StreamStore(tmp_path / "store", limit=0)
    src = tmp_path / "src"
    stream = bytes.fromhex("fd377a585a00") + b"x" * 200
    src.write_bytes(stream)
    with open(src, "rb") as f:
        for key in ("aa" * 32, "bb" * 32, "cc" * 32):
            store.put(key, f.fileno(), 0, len(stream))
    later = StreamStore(tmp_path / "store", limit=0)
    with open(tmp_path / "out", "wb") as f:
        assert later.copy_into("bb" * 32, f) == len(stream)
    later.prune()
    assert [p.name for p in store.root.rglob("*.xz")] == [f"{'bb' * 32}.xz"]


def test_publish_keeps_the_store_outside_www(tmp_path: Path) -> None:
    from swupd_repo.pipeline import build_version
    from swupd_repo.progress import RecordingReporter
    from test_builder import BASE, _settings, _storage_with

    storage = _storage_with(tmp_path, 10, BASE)
    build_version(_settings(storage), RecordingReporter(), 10)
    assert any((storage / STORE_DIR).rglob("*.xz"))
    assert not [p for p in (storage / "www").rglob("*") if STORE_DIR.split("/")[0] in str(p)]


def _as_user(uid: int, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child that has become ``uid`` (real permission checks, as a
    later non-root run meets them); its result or exception comes back pickled."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result: object = ("ok", fn())
        except BaseException as exc:  # reported to the parent
            result = ("error", repr(exc))
        with os.fdopen(write, "wb") as f:
            pickle.dump(result, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        status, value = pickle.load(f)
    os.waitpid(pid, 0)
    assert status == "ok", value
    return value


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make the store another owner's")
def test_another_owners_damaged_entry_is_a_miss(repo: Path) -> None:
    """Entries root made (the Docker backend's container runs as root) meet a non-root run:
    it reads what it can, and a damaged entry it may not remove is a miss for the rest of the
    run instead of failing or being checked again by every pack."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="store-owner-"))  # traversable by nobody
    try:
        base.chmod(0o755)
        shutil.copytree(repo / "www", base / "www", symlinks=True)
        store_root = base / "store"
        clean = base / "clean.tar"
        _zero(base, clean, StreamStore(store_root))  # as root: root's entries and dirs
        entry = max(store_root.rglob("*.xz"), key=lambda p: p.stat().st_size)
        key = entry.name.removesuffix(".xz")
        data = bytearray(entry.read_bytes())
        data[len(data) // 3] ^= 0x40
        entry.write_bytes(bytes(data))
        user_dir = base / "user"
        user_dir.mkdir()
        os.chown(user_dir, nobody, nobody)

        def run() -> tuple[bytes, int, set[str], bool, bool]:
            store = StreamStore(store_root)
            out = user_dir / "zero.tar"
            packs.write_zero_pack(base / "www", "os-core", _manifest(base / "www", 20), out,
                                  previous_pack=None, workers=1, reporter=NullReporter(),
                                  store=store)
            store.prune()
            return (out.read_bytes(), store.dropped, store.skipped, store.has(key),
                    store.has(next(k for k in (p.name.removesuffix(".xz")
                                               for p in store_root.rglob("*.xz")) if k != key)))

        pack, dropped, skipped, has_bad, has_good = _as_user(nobody, run)  # type: ignore[misc]
        assert pack == clean.read_bytes()
        assert (dropped, skipped) == (0, {key})
        assert not has_bad and has_good  # the bad one is a miss, the others still hits
        assert entry.exists() and not list(store_root.rglob(".tmp-*"))
    finally:
        shutil.rmtree(base)
