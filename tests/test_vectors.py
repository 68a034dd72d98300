"""Acceptance: the native generator reproduces real swupd-server 2.53 output (vectors/basic).

Built from ``rootfs-10.tar`` then ``rootfs-20.tar`` (extracted as root, as the vectors'
README says), the plain manifests equal the reference line for line except ``timestamp:``;
the fullfile sets are equal and every fullfile holds the same member name, type, mode, owner,
xattrs and data; pack member sets are equal; every delta applied to its old file gives the
new file's hash. A storage published by the real container (its ``www/10``) is continued.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import copy_tree
from swupd_repo.pipeline import build_version
from swupd_repo.progress import RecordingReporter
from swupd_repo.settings import make_settings
from swupd_repo.storage import Storage
from swupd_repo.swupd.hashing import hash_bytes, read_xattrs
from swupd_repo.swupd.manifest import manifest_hash, parse_manifest

VERSIONS = (10, 20)
REFERENCE_TIME = 1456790400  # the vectors' fixed clock (their README)
MANIFESTS = ("MoM", "os-core", "full")


def build(storage: Path, version: int) -> RecordingReporter:
    reporter = RecordingReporter()
    # "smallest" is the container's policy; the delta pack's keep/skip rule compares each
    # delta with its fullfile's compressed size, so the member sets only match with it
    settings = make_settings({"storage_dir": storage, "jobs": 2, "compression": "smallest"})
    assert build_version(settings, reporter, version) == version
    return reporter


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory,
          rootfs_trees: dict[int, Path]) -> Iterator[Path]:
    """A storage built by us from both rootfs tarballs, with the reference's clock.

    With ``SOURCE_DATE_EPOCH`` at the vectors' fixed time even ``timestamp:`` and the MoM's
    ``M`` hash (which covers the os-core manifest's timestamp) must be equal.
    """
    storage = tmp_path_factory.mktemp("fresh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", str(REFERENCE_TIME))
        for v in VERSIONS:
            copy_tree(rootfs_trees[v], storage / "image" / str(v) / "os-core")
            build(storage, v)
    yield storage


@pytest.fixture(scope="module")
def continued(tmp_path_factory: pytest.TempPathFactory, vectors: Path,
              rootfs_trees: dict[int, Path]) -> Path:
    """The container's www/10 (and markers) continued by us with version 20."""
    storage = tmp_path_factory.mktemp("continued")
    for v in VERSIONS:
        copy_tree(rootfs_trees[v], storage / "image" / str(v) / "os-core")
    shutil.copytree(vectors / "www" / "10", storage / "www" / "10")
    Storage(storage).write_markers(10)
    build(storage, 20)
    return storage


def _strip_timestamp(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if not line.startswith(b"timestamp:\t")]


def _without_m_hash(lines: list[bytes]) -> list[bytes]:
    """MoM lines with the ``M`` hash blanked: it covers the bundle manifest's timestamp."""
    return [b"\t".join((line.split(b"\t")[0], b"-", *line.split(b"\t")[2:]))
            if line.startswith(b"M...\t") else line for line in lines]


def _member(path: Path) -> dict[str, object]:
    """What a client gets from a one-member tar: name, type, mode, owner, xattrs, data."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert len(members) == 1, f"{path} has {len(members)} members"
        return _describe(tar, members[0])


def _describe(tar: tarfile.TarFile, m: tarfile.TarInfo) -> dict[str, object]:
    data: object = None
    if m.isreg():
        f = tar.extractfile(m)
        assert f is not None
        data = f.read()
    elif m.issym():
        data = m.linkname
    xattrs = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    return {"name": m.name.rstrip("/") + ("/" if m.isdir() else ""), "type": m.type,
            "mode": m.mode, "uid": m.uid, "gid": m.gid, "xattrs": xattrs, "data": data}


@pytest.mark.parametrize("which", ["fresh", "continued"])
@pytest.mark.parametrize("name", MANIFESTS)
def test_plain_manifests_equal_reference(request, vectors: Path, which: str, name: str) -> None:
    storage: Path = request.getfixturevalue(which)
    for v in VERSIONS:
        ours = (storage / "www" / str(v) / f"Manifest.{name}").read_bytes()
        ref = (vectors / "manifests" / str(v) / f"Manifest.{name}").read_bytes()
        if which == "fresh":
            # with the reference clock even the M hashes (which cover the bundle
            # manifest's timestamp line) are equal
            assert _strip_timestamp(ours) == _strip_timestamp(ref), f"Manifest.{name}@{v}"
            continue
        if v == 10:
            assert ours == ref  # the container's own files, untouched
        got, want = _strip_timestamp(ours), _strip_timestamp(ref)
        if name == "MoM":
            lines = parse_manifest(ours).entries
            assert lines, f"Manifest.MoM@{v} has no bundle lines"
            for line in lines:
                plain = storage / "www" / str(line.last_change) / f"Manifest.{line.path}"
                assert line.hash == manifest_hash(plain.read_bytes()), f"M hash of {line.path}"
            got, want = _without_m_hash(got), _without_m_hash(want)
        assert got == want, f"Manifest.{name}@{v}"


@pytest.mark.parametrize("which", ["fresh", "continued"])
def test_fullfiles_equal_reference(request, vectors: Path, which: str) -> None:
    storage: Path = request.getfixturevalue(which)
    for v in VERSIONS:
        ours = sorted(p.name for p in (storage / "www" / str(v) / "files").iterdir())
        ref = sorted(p.name for p in (vectors / "www" / str(v) / "files").iterdir())
        assert ours == ref, f"fullfile set of {v}"
        for name in ours:
            got = _member(storage / "www" / str(v) / "files" / name)
            want = _member(vectors / "www" / str(v) / "files" / name)
            assert got == want, f"www/{v}/files/{name}"


@pytest.mark.parametrize("which", ["fresh", "continued"])
def test_manifest_tars_hold_the_plain_manifest(request, which: str) -> None:
    storage: Path = request.getfixturevalue(which)
    www = storage / "www" / "20"
    for name in MANIFESTS:
        member = _member(www / f"Manifest.{name}.tar")
        assert member["name"] == f"Manifest.{name}"
        assert (member["mode"], member["uid"], member["gid"]) == (0o644, 0, 0)
        assert member["data"] == (www / f"Manifest.{name}").read_bytes()
        assert (www / f"Manifest.{name}").stat().st_mode & 0o7777 == 0o644


def _pack_members(path: Path) -> dict[str, dict[str, object]]:
    with tarfile.open(path) as tar:
        return {m.name.rstrip("/"): _describe(tar, m) for m in tar.getmembers()}


@pytest.mark.parametrize("which", ["fresh", "continued"])
def test_pack_member_sets_equal_reference(request, vectors: Path, which: str) -> None:
    storage: Path = request.getfixturevalue(which)
    packs = [(20, "pack-os-core-from-0.tar"), (20, "pack-os-core-from-10.tar")]
    if which == "fresh":
        packs.append((10, "pack-os-core-from-0.tar"))
    for v, name in packs:
        ours = _pack_members(storage / "www" / str(v) / name)
        ref = _pack_members(vectors / "www" / str(v) / name)
        assert sorted(ours) == sorted(ref), f"members of www/{v}/{name}"
        for member, got in ours.items():
            if member.startswith("staged/"):
                want = ref[member]
                assert got == want, f"{member} of www/{v}/{name}"


@pytest.mark.parametrize("which", ["fresh", "continued"])
def test_every_delta_gives_the_new_hash(request, which: str) -> None:
    from swupd_repo.swupd.delta import apply_delta

    storage: Path = request.getfixturevalue(which)
    new = parse_manifest((storage / "www/20/Manifest.os-core").read_bytes())
    old = parse_manifest((storage / "www/10/Manifest.os-core").read_bytes())
    old_by_path = old.by_path()
    deltas = sorted((storage / "www/20/delta").iterdir())
    assert deltas, "no deltas were written"
    for delta in deltas:
        frm, to, digest = delta.name.split("-", 2)
        entry = next(e for e in new.entries if e.hash == digest and e.last_change == int(to))
        assert old_by_path[entry.path].last_change == int(frm)
        old_file = storage / "image" / frm / "os-core" / entry.path.lstrip("/")
        new_file = storage / "image" / to / "os-core" / entry.path.lstrip("/")
        data, mode, uid, gid = apply_delta(delta.read_bytes(), old_file.read_bytes())
        assert hash_bytes(mode, uid, gid, 0, len(data), read_xattrs(new_file), data) == digest


def test_layout_files_and_markers(fresh: Path) -> None:
    storage = Storage(fresh)
    assert storage.latest() == 20
    for v in VERSIONS:
        assert (fresh / "www" / str(v) / "format").read_text() == "3\n"
        assert (fresh / "www" / str(v) / "swupd-server-src-version").read_text() == "3.0.0\n"
        full = fresh / "image" / str(v) / "full"
        assert full.is_symlink() and full.resolve() == (fresh / "image" / str(v) / "os-core")
    # nothing temporary is left behind
    for parent in (fresh, fresh / "www", fresh / "image"):
        assert not [p for p in parent.iterdir() if p.name.startswith(".swupd-repo-tmp-")]
