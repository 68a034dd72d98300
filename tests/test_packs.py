"""Zero and delta packs against the vectors' packs, stream reuse, and pack_maker's walk."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers_trees import packs_repo
from swupd_repo.progress import NullReporter, RecordingReporter
from swupd_repo.swupd import packs, packstream
from swupd_repo.swupd.delta import apply_delta
from swupd_repo.swupd.hashing import hash_path
from swupd_repo.swupd.manifest import Manifest, bundle_line, parse_manifest
from swupd_repo.swupd.streamstore import StreamStore


@pytest.fixture(scope="module")
def repo(vectors: Path, rootfs_trees: dict[int, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the vectors' www (deltas and packs removed) plus extracted images."""
    return packs_repo(tmp_path_factory.mktemp("packs"), vectors, rootfs_trees)


def _manifest(www: Path, version: int) -> Manifest:
    return parse_manifest((www / str(version) / "Manifest.os-core").read_bytes())


def _members(path: Path) -> dict[str, tuple]:
    out = {}
    with tarfile.open(path) as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            out[info.name.rstrip("/")] = (info.type, info.mode, info.uid, info.gid,
                                         info.linkname, packstream._xattrs(info),
                                         f.read() if f else b"")
    return out


def _zero(repo: Path, version: int, out: Path, previous: Path | None = None) -> None:
    packs.write_zero_pack(repo / "www", "os-core", _manifest(repo / "www", version), out,
                          previous_pack=previous, workers=2, reporter=NullReporter())


@pytest.mark.parametrize("version", [10, 20])
def test_zero_pack_equals_reference(repo: Path, vectors: Path, version: int) -> None:
    out = repo / f"zero-{version}.tar"
    _zero(repo, version, out)
    ours, ref = _members(out), _members(vectors / f"www/{version}/pack-os-core-from-0.tar")
    assert ours.keys() == ref.keys()
    for name, member in ref.items():
        if name in ("delta", "staged"):
            assert ours[name][:4] == (tarfile.DIRTYPE, 0o750, 0, 0)
        else:
            assert ours[name] == member, name
    with tarfile.open(out) as tar:  # numeric owner only, as the client's tar needs
        assert {(m.uname, m.gname) for m in tar} == {("", "")}


def test_gnu_tar_reads_concatenated_streams(repo: Path, tmp_path: Path) -> None:
    out = repo / "zero-gnu.tar"
    _zero(repo, 20, out)
    data = out.read_bytes()
    assert data.count(b"\xfd7zXZ\x00") > 3  # really several xz streams
    listing = subprocess.run(["tar", "-tJf", str(out)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(listing) == len(_members(out))
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-C", str(dest), "-p", "--xattrs", "--xattrs-include=*", "-xf",
                    str(out)], check=True, capture_output=True)
    manifest = _manifest(repo / "www", 20)
    for entry in manifest.entries:
        if not entry.deleted:
            staged = dest / "staged" / entry.hash
            assert hash_path(staged, entry.path) == entry.hash, entry.path
    subprocess.run(["xz", "-t", str(out)], check=True)


def test_reuse_copies_unchanged_groups(repo: Path) -> None:
    first, second, again = repo / "r10.tar", repo / "r20.tar", repo / "r20b.tar"
    _zero(repo, 10, first)
    rep = RecordingReporter()
    packs.write_zero_pack(repo / "www", "os-core", _manifest(repo / "www", 20), second,
                          previous_pack=first, workers=2, reporter=rep)
    idx1 = json.loads(packstream.index_path(first).read_text())["groups"]
    idx2 = json.loads(packstream.index_path(second).read_text())["groups"]
    shared = set(idx1) & set(idx2)
    assert shared and len(shared) < len(idx2)
    a, b = first.read_bytes(), second.read_bytes()
    for key in shared:
        (o1, n1), (o2, n2) = idx1[key], idx2[key]
        assert a[o1:o1 + n1] == b[o2:o2 + n2]
    assert any("reused" in m and " 0 reused" not in m for m in rep.infos)
    # the same manifest again: everything but the end stream is copied, bytes identical
    _zero(repo, 20, again, previous=second)
    assert again.read_bytes() == second.read_bytes()
    assert _members(second) == _members(again)
    assert not [p for p in repo.iterdir() if p.name.startswith(".swupd-repo-tmp")]


def test_stale_index_is_ignored(repo: Path) -> None:
    first, second = repo / "s10.tar", repo / "s10b.tar"
    _zero(repo, 10, first)
    with first.open("ab") as f:
        f.write(b"junk")  # size no longer matches the index
    assert packstream.load_index(first) == {}
    _zero(repo, 10, second, previous=first)
    assert len(_members(second)) > 100


def test_group_plan_is_local() -> None:
    """Removing one member changes only the group it was in."""
    import hashlib

    def member(i: int) -> packstream.PackMember:
        h = hashlib.sha256(str(i).encode()).hexdigest()
        weight = 200_000 if i % 97 == 0 else 3000 + i % 5000
        return packstream.PackMember(f"staged/{h}", "fullfile", "", weight, h)

    members = [member(i) for i in range(3000)]
    before = {packstream.group_key(g) for g in packstream.plan_groups(members)}
    after = {packstream.group_key(g)
             for g in packstream.plan_groups(members[:1500] + members[1501:])}
    assert len(before) > 50
    assert len(before - after) == 1 and len(after - before) == 1


@pytest.fixture
def split_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans of several pieces (256 KiB of 64 KiB), as a tree whose ratio allows pieces smaller
    than spans would be tuned; the defaults (see packstream.PIECE) make one piece per span."""
    monkeypatch.setattr(packstream, "TARGET_GROUP", 256 * 1024)
    monkeypatch.setattr(packstream, "PIECE", 64 * 1024)


def test_spans_never_mix_eras(split_spans: None) -> None:
    """Every span (and so every piece) holds one era, also where an era ends right after a
    piece: spans of an older era are split once they change, so a mixed one would be too."""
    import hashlib

    members = []
    for i in range(3000):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        members.append(packstream.PackMember(f"staged/{h}", "fullfile", "", 3000 + i % 5000,
                                             h, era=i // 40))
    spans = packstream.plan_spans(members)
    assert sum(len(s) > 1 for s in spans) > 5
    assert all(len({m.era for piece in s for m in piece}) == 1 for s in spans)
    assert [m for s in spans for p in s for m in p] == members


def test_delta_pack_equals_reference(repo: Path, vectors: Path) -> None:
    www = repo / "www"
    out = repo / "delta-20.tar"
    rep = RecordingReporter()
    packs.write_delta_pack(www, "os-core", _manifest(www, 10), _manifest(www, 20), out,
                           image_dir=repo / "image", workers=2, reporter=rep)
    made = sorted(p.name for p in (www / "20/delta").iterdir())
    assert made == sorted(p.name for p in (vectors / "www/20/delta").iterdir())
    ours = _members(out)
    ref = _members(vectors / "www/20/pack-os-core-from-10.tar")
    assert ours.keys() == ref.keys()
    for name, member in ref.items():
        if name.startswith("staged/"):
            assert ours[name] == member, name
    # every delta we made applies to the old image file and gives the new file's hash
    new = {e.hash: e for e in _manifest(www, 20).entries}
    old = _manifest(www, 10).by_path()
    for name in made:
        entry = new[name.split("-", 2)[2]]
        old_file = repo / "image/10/os-core" / old[entry.path].path.lstrip("/")
        data, mode, uid, gid = apply_delta((www / "20/delta" / name).read_bytes(),
                                           old_file.read_bytes())
        target = repo / "applied"
        target.write_bytes(data)
        import os
        os.chown(target, uid, gid)
        os.chmod(target, mode & 0o7777)
        for key, value in {x: os.getxattr(old_file, x) for x in os.listxattr(old_file)}.items():
            os.setxattr(target, key, value)
        assert hash_path(target, entry.path) == entry.hash, name
    # xattr-changed files got no delta and are remembered, so they are not tried again
    assert len((www / "20" / packs.NO_DELTA_FILE).read_text().split()) == 3
    # a second pack from the same source reuses the existing deltas (none rewritten)
    stamp = {p.name: p.stat().st_mtime_ns for p in (www / "20/delta").iterdir()}
    packs.write_delta_pack(www, "os-core", _manifest(www, 10), _manifest(www, 20),
                           repo / "delta-20b.tar", image_dir=repo / "image", workers=1,
                           reporter=NullReporter())
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (www / "20/delta").iterdir()}
    assert _members(repo / "delta-20b.tar").keys() == ours.keys()


def test_delta_keep_rules(repo: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    (www / "20/delta").mkdir(parents=True)
    (www / "20/files").mkdir(parents=True)
    new = _manifest(repo / "www", 20)
    old = _manifest(repo / "www", 10).by_path()
    entry = next(e for e in new.entries if e.type == "F" and e.last_change == 20
                 and e.path in old)
    prev = old[entry.path]
    (www / "20/files" / f"{entry.hash}.tar").write_bytes(b"x" * 1000)
    delta = www / "20/delta" / packs.delta_name(prev.last_change, 20, entry.hash)
    for size, kept in ((8, False), (9, True), (952, True), (953, False)):
        delta.write_bytes(b"d" * size)  # 1.05 x 952 = 999.6 < 1000; 1.05 x 953 > 1000
        assert (packs._delta_member(www, prev, entry) is not None) == kept, size
    folder = next(e for e in new.entries if e.type == "D")
    assert packs._delta_member(www, folder, folder.with_(last_change=20)) is None


def _mom(www: Path, version: int, previous: int, bundles: dict[str, int]) -> None:
    (www / str(version)).mkdir(parents=True)
    m = Manifest(version=version, previous=previous,
                 entries=[bundle_line(b, "0" * 64, v) for b, v in bundles.items()])
    (www / str(version) / "Manifest.MoM").write_bytes(m.to_bytes())


def test_delta_pack_sources_walks_previous_links(tmp_path: Path) -> None:
    www = tmp_path / "www"
    _mom(www, 10, 0, {"os-core": 10})
    _mom(www, 20, 10, {"os-core": 20, "editors": 20})
    _mom(www, 30, 20, {"os-core": 20, "editors": 30})
    # no MoM at 40 (e.g. removed): the walk steps back by 10
    _mom(www, 50, 40, {"os-core": 50, "editors": 30})
    _mom(www, 60, 50, {"os-core": 60, "editors": 60})
    assert packs.delta_pack_sources(www, "os-core", 60, 2) == [20, 50]
    assert packs.delta_pack_sources(www, "os-core", 60, 5) == [10, 20, 50]
    assert packs.delta_pack_sources(www, "editors", 60, 2) == [20, 30]
    assert packs.delta_pack_sources(www, "editors", 50, 2) == []  # unchanged in 50
    assert packs.delta_pack_sources(www, "os-core", 10, 2) == []
    assert packs.delta_pack_sources(www, "os-core", 60, 0) == []


def test_released_version_keeps_its_delta_pack_past_staged_versions(tmp_path: Path) -> None:
    www = tmp_path / "www"
    _mom(www, 10, 0, {"os-core": 10})
    _mom(www, 20, 10, {"os-core": 20})
    _mom(www, 30, 20, {"os-core": 30})
    _mom(www, 40, 30, {"os-core": 40, "editors": 30})
    sources = packs.delta_pack_sources(www, "os-core", 40, 2)
    assert sources == [20, 30]
    # devices on 10 (20 and 30 staged) get a pack too
    assert packs.with_released_source(www, "os-core", 40, sources, 10) == [10, 20, 30]
    # nothing staged: released is the previous version, already a source
    assert packs.with_released_source(www, "os-core", 40, sources, 30) == [20, 30]
    assert packs.with_released_source(www, "os-core", 40, [], 10) == []  # none wanted
    assert packs.with_released_source(www, "os-core", 40, sources, 0) == [20, 30]
    assert packs.with_released_source(www, "editors", 40, [], 10) == []  # unchanged in 40


def test_vectors_delta_pack_sources(vectors: Path) -> None:
    assert packs.delta_pack_sources(vectors / "www", "os-core", 20, 2) == [10]


def test_delta_pack_lists_each_member_once(repo: Path) -> None:
    """Two paths sharing a hash (``/usr/bin/perl`` and ``perl5.36.0``) share one delta: the
    pack carries ``delta/<F>-<T>-<H>`` once, as a tar of unique names must."""
    www = repo / "www"
    old, new = _manifest(www, 10), _manifest(www, 20)
    packs.write_delta_pack(www, "os-core", old, new, repo / "delta-once-a.tar",
                           image_dir=repo / "image", workers=1, reporter=NullReporter())
    delta_names = {p.name for p in (www / "20/delta").iterdir()}
    by_hash = {e.hash: e for e in new.entries if e.last_change == 20 and not e.deleted}
    entry = next(by_hash[n.split("-", 2)[2]] for n in sorted(delta_names))
    prev = old.by_path()[entry.path]
    twin = "/usr/bin/zz-twin-of-" + entry.path.rsplit("/", 1)[-1]
    old.entries.append(prev.with_(path=twin))
    new.entries.append(entry.with_(path=twin))
    out = repo / "delta-once-b.tar"
    packs.write_delta_pack(www, "os-core", old, new, out, image_dir=repo / "image",
                           workers=1, reporter=NullReporter())
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert len(names) == len(set(names))
    assert f"delta/{packs.delta_name(prev.last_change, 20, entry.hash)}" in names


def _text_files(root: Path, count: int, era: int, seed: int) -> list[packstream.PackMember]:
    """``count`` small compressible files (words drawn from one vocabulary, so streams of
    several files share context, as a package's files do) as pack members of ``era``."""
    import hashlib
    import os
    import random

    rng = random.Random(seed)
    words = [f"word{i}" for i in range(400)]
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        data = " ".join(rng.choice(words) for _ in range(rng.randrange(300, 900))).encode()
        digest = hashlib.sha256(data).hexdigest()
        path = root / f"{era}-{seed}-{i}"
        path.write_bytes(data)
        st = os.stat(path)
        out.append(packstream.PackMember(f"staged/{digest}", "file", str(path), len(data),
                                         digest, ident=f"{st.st_size}:{st.st_mtime_ns}",
                                         era=era))
    return out


def _pack(out: Path, members: list[packstream.PackMember], *, previous: Path | None,
          store: StreamStore | None, fresh_era: int | None) -> tuple[int, int]:
    members = sorted(members, key=lambda m: (m.era, m.source))  # as packs: era, path
    return packstream.write_pack(out, packstream.plan_spans(members), previous=previous,
                                 workers=1, reporter=NullReporter(), label="t",
                                 keep_index=True, store=store, fresh_era=fresh_era)


def test_changed_span_is_split_and_its_unchanged_pieces_reused(tmp_path: Path,
                                                                split_spans: None) -> None:
    """A span that lost a member is written piece by piece; when another of its members
    changes in a later version, only that member's piece is compressed again: the others
    are copied. Members stay once each, and the content equals a fresh compression."""
    import lzma

    store = StreamStore(tmp_path / "store")
    v10 = sorted(_text_files(tmp_path / "f", 700, 10, 1), key=lambda m: m.source)
    span = next(s for s in packstream.plan_spans(v10)
                if len(s) >= 3 and len(s[0]) >= 2 and len(s[1]) >= 2)
    x, y = span[0][0], span[1][0]
    p10, p20, p30 = tmp_path / "10.tar", tmp_path / "20.tar", tmp_path / "30.tar"
    _pack(p10, v10, previous=None, store=store, fresh_era=10)
    # 20: x changed (its old member leaves the span, the new one is era-20 content)
    v20 = [m for m in v10 if m is not x] + _text_files(tmp_path / "f", 1, 20, 2)
    _pack(p20, v20, previous=p10, store=store, fresh_era=20)
    idx20 = json.loads(packstream.index_path(p20).read_text())["groups"]
    pieces20 = [[m for m in piece if m is not x] for piece in span]
    assert {packstream.group_key(p) for p in pieces20} <= set(idx20)  # split once
    # 30: y changed: only y's piece (without y) and the new content are compressed
    before = {p.name.removesuffix(".xz") for p in store.root.rglob("*.xz")}
    y_new = _text_files(tmp_path / "f", 1, 30, 3)
    v30 = [m for m in v20 if m is not y] + y_new
    reused, made = _pack(p30, v30, previous=p20, store=store, fresh_era=30)
    fresh = {p.name.removesuffix(".xz") for p in store.root.rglob("*.xz")} - before
    assert fresh == {packstream.group_key([m for m in span[1] if m is not y]),
                     packstream.group_key(y_new)}
    assert made == 3 and reused > len(span)  # + the end-of-archive stream
    idx30 = json.loads(packstream.index_path(p30).read_text())["groups"]
    assert {packstream.group_key(p) for p in pieces20[2:]} <= set(idx30)
    # each member once, and the same tar as one compressed from scratch
    with tarfile.open(p30) as tar:
        names = tar.getnames()
    assert len(names) == len(set(names)) == len(v30)
    plain = tmp_path / "plain.tar"
    _pack(plain, v30, previous=None, store=None, fresh_era=None)
    assert lzma.decompress(p30.read_bytes()) == lzma.decompress(plain.read_bytes())


def test_unchanged_old_span_stays_whole(tmp_path: Path, split_spans: None) -> None:
    """Only spans that changed are split: an identical tree keeps every span whole (its
    ratio), and new content is compressed as whole spans."""
    store = StreamStore(tmp_path / "store")
    v10 = _text_files(tmp_path / "f", 300, 10, 4)
    p10, p20 = tmp_path / "10.tar", tmp_path / "20.tar"
    _pack(p10, v10, previous=None, store=store, fresh_era=10)
    spans = packstream.plan_spans(sorted(v10, key=lambda m: m.source))
    assert any(len(s) > 1 for s in spans)
    idx10 = json.loads(packstream.index_path(p10).read_text())["groups"]
    assert set(idx10) == {packstream.group_key([m for p in s for m in p]) for s in spans}
    reused, made = _pack(p20, v10, previous=p10, store=None, fresh_era=20)
    assert (reused, made) == (len(spans), 1)
    assert p20.read_bytes() == p10.read_bytes()


def test_bundle_packs_plan_deltas_once_and_stat_each_fullfile_once(
        vectors: Path, rootfs_trees: dict[int, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One build's delta packs share one plan of their deltas (the image records, the
    ``.delta-none`` files and the delta targets are looked at once, not once per pack) and
    one ``stat`` per fullfile, and their bytes are those of a lone :func:`write_delta_pack`."""
    import os

    repo = packs_repo(tmp_path / "repo", vectors, rootfs_trees)
    www = repo / "www"
    old, new = _manifest(www, 10), _manifest(www, 20)
    plans: list[int] = []
    real_jobs = packs._delta_jobs

    def counting_jobs(*args, **kwargs):  # the real planner, counted
        plans.append(1)
        return real_jobs(*args, **kwargs)

    stats: dict[str, int] = {}
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):  # the real stat, counted for fullfiles
        name = os.fspath(path)
        if f"{os.sep}files{os.sep}" in name:
            stats[name] = stats.get(name, 0) + 1
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(packs, "_delta_jobs", counting_jobs)
    monkeypatch.setattr(os, "stat", counting_stat)
    outs = [repo / "from-10-a.tar", repo / "from-10-b.tar"]
    packs.write_bundle_packs(www, "os-core", new, repo / "zero.tar", previous_pack=None,
                             deltas=[(old, out) for out in outs], image_dir=repo / "image",
                             workers=2, reporter=NullReporter())
    monkeypatch.undo()
    assert plans == [1]
    assert stats and max(stats.values()) == 1, sorted(n for n, c in stats.items() if c > 1)
    assert any((www / "20/delta").iterdir())
    lone = repo / "lone.tar"
    packs.write_delta_pack(www, "os-core", old, new, lone, image_dir=repo / "image",
                           workers=1, reporter=NullReporter())
    assert outs[0].read_bytes() == outs[1].read_bytes() == lone.read_bytes()


def _x86_binaries(limit: int) -> list[Path]:
    """This machine's x86 ELF executables (real compiled code, what BCJ is for), up to
    ``limit`` bytes, in name order."""
    out, total = [], 0
    for path in sorted(Path("/usr/bin").iterdir()):
        if total >= limit:
            break
        if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
            with open(path, "rb") as f:
                if packstream.is_x86_elf(f.read(20)):
                    out.append(path)
                    total += path.stat().st_size
    return out


def _block_filters(pack: Path) -> list[str]:
    """The filter chain of every xz block of ``pack``, as ``xz --list`` prints it."""
    done = subprocess.run(["xz", "--robot", "-lvv", str(pack)], capture_output=True,
                          text=True, check=True)
    return [line.split("\t")[-1] for line in done.stdout.splitlines()
            if line.startswith("block\t")]


def test_bcj_streams_decode_with_every_reader(tmp_path: Path) -> None:
    """A pack whose code groups carry the x86 BCJ filter is read, byte for byte, by Python's
    tarfile, GNU tar -xJf, xz -d and libarchive's bsdtar (what the swupd client extracts
    with), and our client installs the tree from it; text groups stay plain LZMA2."""
    import shutil

    from helpers_cli import build
    from swupd_repo.client import compare_trees, install
    from swupd_repo.serve import serve_in_thread

    binaries = _x86_binaries(3 << 20)
    if not binaries:
        pytest.skip("no x86 ELF executables in /usr/bin on this machine")
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    for b in binaries:
        shutil.copyfile(b, tree / "usr/bin" / b.name)
    for f in _text_files(tmp_path / "text", 200, 10, 5):
        (tree / "usr/share/doc").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, tree / "usr/share/doc" / Path(f.source).name)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text("NAME=bcj\nVERSION_ID=10\n")
    storage = tmp_path / "storage"
    build(storage, tree, 10)
    pack = storage / "www/10/pack-os-core-from-0.tar"

    chains = _block_filters(pack)
    assert any(c.startswith("--x86 --lzma2") for c in chains), chains
    assert any(c.startswith("--lzma2") for c in chains), chains
    manifest = parse_manifest((storage / "www/10/Manifest.os-core").read_bytes())
    want = {f"staged/{e.hash}": (tree / e.path.lstrip("/")).read_bytes()
            for e in manifest.entries if e.type == "F" and not e.deleted}
    assert len(want) > 200  # one per distinct content

    plain = lzma.decompress(pack.read_bytes())
    xz = subprocess.run(["xz", "-dc", str(pack)], capture_output=True, check=True).stdout
    assert xz == plain
    with tarfile.open(pack) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    assert got == want
    for tool in (["tar", "-xJf"], ["bsdtar", "-xf"]):
        out = tmp_path / tool[0]
        out.mkdir()
        subprocess.run([*tool, str(pack), "-C", str(out)], check=True)
        assert {n: (out / n).read_bytes() for n in want} == want, tool
        assert sorted(os.listdir(out / "staged")) == sorted(
            {e.hash for e in manifest.entries if not e.deleted})

    with serve_in_thread(storage / "www") as url:
        root = tmp_path / "root"
        stats = install(url, root, 10, state_dir=tmp_path / "state")
    assert stats.packs == ["10/pack-os-core-from-0.tar"] and stats.from_fullfile == 0
    assert compare_trees(root, tree) == []
