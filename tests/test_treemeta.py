"""The metadata record of a stored tree: its format, its checks, and that everything reading a
stored tree takes owners, modes, devices and xattrs from it, not from the files on disk.

The stored trees here are real extractions of the vectors' .dsk images whose files on disk
are then given to uid/gid 65534 and stripped of every xattr (what any user's extraction
leaves, and more): a reader that looked at the disk would publish other hashes.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import copy_tree
from helpers_trees import disown
from swupd_repo import treemeta
from swupd_repo.cli import main as cli_main
from swupd_repo.errors import StorageError
from swupd_repo.extract import extract_rootfs
from swupd_repo.gpt import find_partition
from swupd_repo.layout import load_layout
from swupd_repo.progress import NullReporter, RecordingReporter
from swupd_repo.swupd.scan import scan_tree
from swupd_repo.treemeta import Meta, RecordWriter, read_record, record_path
from test_vectors import (
    REFERENCE_TIME,
    VERSIONS,
    _member,
    _pack_members,
    _strip_timestamp,
    build,
)

NOBODY = 65534


def stored_tree(dsk: Path, layout: Path, dest: Path) -> Path:
    """Extract ``dsk`` into ``dest``, then make the disk say nothing true about metadata."""
    extent = find_partition(dsk, load_layout(layout).rootfs(), NullReporter())
    extract_rootfs(dsk, extent.offset, extent.size, dest, RecordingReporter())
    return disown(dest, NOBODY)


def hashes(tree: Path) -> dict[str, str]:
    return {p: r.hash for p, r in scan_tree(tree, NullReporter()).records.items()}


# ---------------------------------------------------------------- the format


def test_record_round_trip_of_awkward_names_and_values(tmp_path: Path) -> None:
    tree = tmp_path / "os-core"
    names = ["/", "/a b", "/tab\there", "/new\nline", "/per%cent", "/ünï", "/raw\udcff",
             "/c,=d"]
    metas = [Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}),
             Meta(stat.S_IFREG | 0o4755, 1000, 1001, 0,
                  {b"security.ima": b"\x00\x01\xff", b"user.empty": b"", b"user.a,b=c": b"="}),
             Meta(stat.S_IFCHR | 0o666, 0, 0, os.makedev(4000, 1_000_000), {}),
             Meta(stat.S_IFLNK | 0o777, 70000, 70001, 0, {b"trusted.big": b"x" * 3000}),
             Meta(stat.S_IFIFO | 0o600, 1, 2, 0, {}),
             Meta(stat.S_IFBLK | 0o660, 0, 6, os.makedev(8, 1), {}),
             Meta(stat.S_IFREG | 0o000, 0, 0, 0, {}),
             Meta(stat.S_IFSOCK | 0o755, 3, 4, 0, {})]
    with RecordWriter(tree) as writer:
        for name, meta in zip(names, metas, strict=True):
            writer.add(name, meta)
        writer.install()
    assert read_record(record_path(tree)) == dict(zip(names, metas, strict=True))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".swupd-repo-tmp-")]


def test_xattr_names_as_the_ext4_reader_gives_them_are_recorded_raw(tmp_path: Path) -> None:
    """The reader yields str names, surrogate-escaped where the bytes are not UTF-8 (a fuzzed
    image gave one): the record holds the raw bytes, not a UnicodeEncodeError."""
    tree = tmp_path / "os-core"
    meta = Meta(stat.S_IFREG | 0o644, 0, 0, 0, {"user.\udcff\udcfe": b"v", "user.ok": b"w"})
    with RecordWriter(tree) as writer:
        writer.add("/f", meta)
        writer.install()
    assert read_record(record_path(tree))["/f"].xattrs == {b"user.\xff\xfe": b"v",
                                                            b"user.ok": b"w"}


def test_an_interrupted_writer_leaves_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "os-core"
    with pytest.raises(RuntimeError), RecordWriter(tree) as writer:
        writer.add("/", Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, why", [
    (lambda data: data[:-1], "incomplete"),  # end line cut
    (lambda data: data[: data.rindex(b"end\t")], "incomplete"),  # no end line
    (lambda data: data + b"/x\t100644\t0\t0\t0\t\n", "incomplete"),  # data after the end
    (lambda data: data.replace(b"\t1000\t", b"\t1001\t", 1), "checksum"),
    (lambda data: data.replace(b"swupd-repo", b"swupd-repx", 1), "header"),
])
def test_a_damaged_record_is_refused(tmp_path: Path, damage, why: str) -> None:
    tree = tmp_path / "os-core"
    with RecordWriter(tree) as writer:
        writer.add("/", Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}))
        writer.add("/f", Meta(stat.S_IFREG | 0o644, 1000, 1000, 0, {}))
        writer.install()
    path = record_path(tree)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StorageError, match=why) as err:
        read_record(path)
    assert str(path) in str(err.value) and "extract this version again" in str(err.value)


# ---------------------------------------------------------------- checked against the tree


@pytest.fixture
def stored10(vector_images, tmp_path: Path) -> Path:
    return stored_tree(*vector_images[10], tmp_path / "image" / "10" / "os-core")


def test_record_and_tree_must_agree(stored10: Path) -> None:
    assert treemeta.load(stored10) is not None
    extra = stored10 / "usr" / "added-later"
    extra.write_text("x")
    with pytest.raises(StorageError, match="/usr/added-later is on disk but not in the record"):
        treemeta.load(stored10)
    extra.unlink()
    victim = next(p for p in stored10.rglob("*") if p.is_file() and not p.is_symlink())
    victim.unlink()
    with pytest.raises(StorageError, match="is in the record but not on disk"):
        treemeta.load(stored10)
    victim.mkdir()
    with pytest.raises(StorageError, match="is a directory on disk, the record says mode 1"):
        treemeta.load(stored10)


def test_stored_tree_scans_like_the_tree_extracted_as_root(stored10: Path, rootfs_trees,
                                                           tmp_path: Path) -> None:
    """The record gives every path the hash lstat/getxattr of a root-made tree gives."""
    legacy = copy_tree(rootfs_trees[10], tmp_path / "legacy" / "os-core")
    want = hashes(legacy)
    assert len(want) > 20
    assert hashes(stored10) == want


def test_record_command_converts_a_tree_stored_without_one(rootfs_trees, tmp_path: Path,
                                                           capsys) -> None:
    """``swupd-repo record`` (as root here) writes the record; from then on the files on disk
    may say anything about owners and xattrs."""
    storage = tmp_path / "storage"
    tree = copy_tree(rootfs_trees[10], storage / "image" / "10" / "os-core")
    want = hashes(tree)
    assert cli_main(["record", "--storage", str(storage)]) == 0
    assert "recorded" in capsys.readouterr().out
    assert record_path(tree).is_file()
    subprocess.run(["chown", "-hR", f"{NOBODY}:{NOBODY}", str(tree)], check=True)
    assert hashes(tree) == want
    assert cli_main(["record", "--storage", str(storage)]) == 0
    assert "every stored tree has its record" in capsys.readouterr().out


# ---------------------------------------------------------------- the whole generator


@pytest.fixture(scope="module")
def stored_storage(tmp_path_factory, vector_images) -> Path:
    """Versions 10 and 20 published from stored trees (records, disk metadata wrong)."""
    storage = tmp_path_factory.mktemp("stored")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", str(REFERENCE_TIME))
        for v in VERSIONS:
            stored_tree(*vector_images[v], storage / "image" / str(v) / "os-core")
            build(storage, v)
    return storage


def test_stored_trees_publish_the_reference_repository(stored_storage: Path,
                                                       vectors: Path) -> None:
    """Manifests, fullfiles and packs (deltas included) equal swupd-server's."""
    for v in VERSIONS:
        for name in ("MoM", "os-core", "full"):
            ours = (stored_storage / "www" / str(v) / f"Manifest.{name}").read_bytes()
            ref = (vectors / "manifests" / str(v) / f"Manifest.{name}").read_bytes()
            assert _strip_timestamp(ours) == _strip_timestamp(ref), f"Manifest.{name}@{v}"
        files = sorted((stored_storage / "www" / str(v) / "files").iterdir())
        assert [p.name for p in files] == sorted(
            p.name for p in (vectors / "www" / str(v) / "files").iterdir())
        for path in files:
            assert _member(path) == _member(vectors / "www" / str(v) / "files" / path.name)
    for v, name in ((20, "pack-os-core-from-0.tar"), (20, "pack-os-core-from-10.tar")):
        ours = _pack_members(stored_storage / "www" / str(v) / name)
        ref = _pack_members(vectors / "www" / str(v) / name)
        assert sorted(ours) == sorted(ref), f"members of www/{v}/{name}"
        for member, got in ours.items():
            if member.startswith("staged/"):
                assert got == ref[member], member


def test_the_docker_copy_streams_the_record_not_the_disk(stored10: Path) -> None:
    """What the engine unpacks for the container: owners, modes, devices and xattrs of the
    record (the disk here says 65534 and no xattrs for everything)."""
    import io
    import tarfile

    from swupd_repo.backends.materialise import needs_copy, tree_tar
    from swupd_repo.storage import Storage

    record = treemeta.load(stored10)
    assert record is not None
    assert needs_copy(Storage(stored10.parents[2]), 10)
    stream = io.BytesIO(b"".join(tree_tar(stored10)))
    with tarfile.open(fileobj=stream) as tar:
        members = tar.getmembers()
    assert len(members) == len(record.entries) - 1  # the root itself is not a member
    labelled = 0
    for member in members:
        meta = record.get("/" + member.name.rstrip("/"))
        assert (member.uid, member.gid) == (meta.uid, meta.gid), member.name
        if not member.issym():
            assert member.mode == stat.S_IMODE(meta.mode), member.name
        assert member.isdir() == stat.S_ISDIR(meta.mode), member.name
        assert member.ischr() == stat.S_ISCHR(meta.mode), member.name
        xattrs = {k.removeprefix("SCHILY.xattr."): v for k, v in member.pax_headers.items()
                  if k.startswith("SCHILY.xattr.")}
        assert xattrs.keys() == {os.fsdecode(k) for k in meta.xattrs}, member.name
        labelled += bool(xattrs)
    assert labelled and any(m.uid != NOBODY for m in members)


def test_a_copy_made_as_root_matches_its_record(tmp_path: Path) -> None:
    """The Docker backend's copy has real device nodes and no sockets (tar cannot carry
    them): the record still describes it; a missing regular file is still refused."""
    tree = tmp_path / "os-core"
    (tree / "dev").mkdir(parents=True)
    os.mknod(tree / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (tree / "f").write_text("x")
    with RecordWriter(tree) as writer:
        writer.add("/", Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}))
        writer.add("/dev", Meta(stat.S_IFDIR | 0o755, 0, 0, 0, {}))
        writer.add("/dev/null", Meta(stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3), {}))
        writer.add("/dev/log", Meta(stat.S_IFSOCK | 0o666, 0, 0, 0, {}))
        writer.add("/f", Meta(stat.S_IFREG | 0o644, 0, 0, 0, {}))
        writer.install()
    assert treemeta.load(tree) is not None
    (tree / "f").unlink()
    with pytest.raises(StorageError, match="/f is in the record but not on disk"):
        treemeta.load(tree)
