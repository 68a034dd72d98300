"""Several bundles, judged byte for byte against a reference derived from the real server.

The vectors (tests/data/vectors/basic) are 2.53's output for one bundle. There is no real
multi-bundle output among them, and format3 §2.9 shows only shortened lines of its run, so the
reference here is our own, derived from the vectors with the server's bundle rules (§2.6-§2.8)
applied to its real manifests:

* a split that moves nothing between versions changes no last_change: ``Manifest.full`` is the
  vectors' byte for byte (timestamp aside), each bundle manifest holds the vectors' lines of its
  paths, os-core holds the rest; ``filecount`` counts them and ``contentsize`` sums the sizes of
  their entries changed in V, sizes taken from the server's own image listing (``image-V.lst``);
* a path that moves from a bundle into os-core at 20 without changing becomes a deletion
  (``.d..`` at 20) in the bundle and a new entry (at 20) in os-core, and ``Manifest.full``'s
  line for it is raised from 10 to 20 (the maximum over the bundles, §2.7);
* a bundle without a changed entry keeps its MoM line (version and hash) and gets no manifest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from swupd_repo.progress import RecordingReporter
from swupd_repo.swupd import builder
from swupd_repo.swupd.manifest import manifest_hash
from swupd_repo.swupd.scan import scan_tree

TIME = 1456790400
DOCS = "/usr/share/doc"
TOOL = ["/opt/tool", "/opt/tool/bin", "/opt/tool/bin/tool"]
MOVED = "/usr/bin/cap-ping"  # in tool at 10, in os-core at 20; unchanged content (10 in full)


def reference_lines(vectors: Path, version: int, name: str) -> list[str]:
    text = (vectors / "manifests" / str(version) / f"Manifest.{name}").read_text()
    return text.split("\n\n", 1)[1].splitlines()


def sizes(vectors: Path, version: int) -> dict[str, int]:
    """Path -> st_size of the server's full tree (``image-V.lst``: path type mode uid gid
    size)."""
    out = {}
    for line in (vectors / "image" / f"image-{version}.lst").read_text().splitlines():
        fields = line.split("\t")
        if fields[0].startswith("full/"):
            out["/" + fields[0][len("full/"):]] = int(fields[5])
    return out


def header(version: int, previous: int, entries: list[str], size: int) -> str:
    return (f"MANIFEST\t3\nversion:\t{version}\nprevious:\t{previous}\n"
            f"filecount:\t{len(entries)}\ntimestamp:\t{TIME}\ncontentsize:\t{size}\n\n")


def contentsize(entries: list[str], version: int, size_of: dict[str, int]) -> int:
    total = 0
    for line in entries:
        flags, _, last_change, path = line.split("\t", 3)
        if flags[1] == "d" or int(last_change) != version:
            continue
        total += size_of[path] if flags[0] == "F" else 1024
    return total


def text(entries: list[str], version: int, previous: int, size_of: dict[str, int]) -> str:
    return header(version, previous, entries, contentsize(entries, version, size_of)) + \
        "".join(f"{line}\n" for line in entries)


def path_of(line: str) -> str:
    return line.split("\t", 3)[3]


def in_docs(path: str) -> bool:
    return path == DOCS or path.startswith(DOCS + "/")


@pytest.fixture(scope="module")
def built(rootfs_trees: dict[int, Path]) -> dict[int, builder.Built]:
    """10 and 20 of the vectors' trees, split into os-core, docs and tool (tool also owns
    /usr/bin/cap-ping at 10 only)."""
    out: dict[int, builder.Built] = {}
    previous = builder.Previous()
    for version in (10, 20):
        records = scan_tree(rootfs_trees[version], RecordingReporter()).records
        split = {"docs": {p for p in records if in_docs(p)},
                 "tool": {*TOOL, *([MOVED] if version == 10 else [])}}
        built = out[version] = builder.build_manifests(records, version, previous,
                                                       timestamp=TIME, bundles=split)
        bundles = {**previous.bundles, **built.bundles}
        previous = builder.Previous(version, {e.path: bundles[e.path]
                                              for e in built.mom.entries}, built.full)
    return out


def test_version_10_is_the_vectors_split(vectors: Path, built: dict[int, builder.Built]
                                         ) -> None:
    ref = reference_lines(vectors, 10, "os-core")
    size_of = sizes(vectors, 10)
    tool = [line for line in ref if path_of(line) in {*TOOL, MOVED}]
    docs = [line for line in ref if in_docs(path_of(line))]
    core = [line for line in ref if line not in tool and line not in docs]
    b = built[10]
    assert b.bundle_bytes["tool"].decode() == text(tool, 10, 0, size_of)
    assert b.bundle_bytes["docs"].decode() == text(docs, 10, 0, size_of)
    assert b.bundle_bytes["os-core"].decode() == text(core, 10, 0, size_of)
    full = (vectors / "manifests/10/Manifest.full").read_text().replace(
        "timestamp:\t1456790401", f"timestamp:\t{TIME}")
    assert b.full_bytes.decode() == full
    mom = [f"M...\t{manifest_hash(b.bundle_bytes[n])}\t10\t{n}" for n in
           ("tool", "os-core", "docs")]
    assert b.mom_bytes.decode() == header(10, 0, mom, sum(
        contentsize(lines, 10, size_of) for lines in (tool, docs, core))) + \
        "".join(f"{line}\n" for line in mom)


def test_version_20_moves_a_file_and_keeps_an_unchanged_bundle(
        vectors: Path, built: dict[int, builder.Built]) -> None:
    ref = reference_lines(vectors, 20, "os-core")
    size_of = sizes(vectors, 20)
    b20 = built[20]
    moved = next(line for line in ref if path_of(line) == MOVED)
    assert moved.split("\t")[2] == "10"  # unchanged in the vectors
    moved_20 = moved.replace("\t10\t", "\t20\t")
    docs = [line for line in ref if in_docs(path_of(line))]
    core = sorted([line for line in ref if line not in docs and path_of(line) not in TOOL
                   and line != moved] + [moved_20], key=_sort_key)
    # tool: only the move changed it, as a deletion at 20
    tool = sorted([line for line in reference_lines(vectors, 10, "os-core")
                   if path_of(line) in TOOL] + [f".d..\t{'0' * 64}\t20\t{MOVED}"],
                  key=_sort_key)
    assert b20.bundle_bytes["os-core"].decode() == text(core, 20, 10, size_of)
    assert b20.bundle_bytes["tool"].decode() == text(tool, 20, 10, size_of)
    assert any(line.split("\t")[2] == "20" for line in docs)
    assert b20.bundle_bytes["docs"].decode() == text(docs, 20, 10, size_of)
    # Manifest.full: the vectors', with the moved file raised to 20
    full_ref = reference_lines(vectors, 20, "full")
    full = sorted([moved_20 if line == moved else line for line in full_ref], key=_sort_key)
    assert b20.full_bytes.decode() == text(full, 20, 0, size_of)
    assert len(full) == len(full_ref)


def test_unchanged_bundle_keeps_its_mom_line(rootfs_trees: dict[int, Path],
                                             built: dict[int, builder.Built]) -> None:
    """tool without the move: nothing of it changes at 20, so no Manifest.tool at 20 and
    MoM@20 names tool at 10 with the hash of the manifest written at 10."""
    b10 = built[10]
    records = scan_tree(rootfs_trees[20], RecordingReporter()).records
    split = {"docs": {p for p in records if in_docs(p)}, "tool": {*TOOL, MOVED}}
    previous = builder.Previous(10, dict(b10.bundles), b10.full)
    b20 = builder.build_manifests(records, 20, previous, timestamp=TIME, bundles=split)
    assert "tool" not in b20.bundles and set(b20.bundles) == {"os-core", "docs"}
    lines = {e.path: (e.last_change, e.hash) for e in b20.mom.entries}
    assert lines["tool"] == (10, manifest_hash(b10.bundle_bytes["tool"]))
    assert b20.mom.contentsize == sum(m.contentsize for m in b20.bundles.values())
    assert b20.mom_bytes.decode().endswith(
        f"M...\t{lines['tool'][1]}\t10\ttool\n"
        f"M...\t{lines['os-core'][1]}\t20\tos-core\n"
        f"M...\t{lines['docs'][1]}\t20\tdocs\n")


def _sort_key(line: str) -> tuple[int, _Desc]:
    _, _, last_change, path = line.split("\t", 3)
    return int(last_change), _Desc(path.encode())


class _Desc:
    """Bytes sorting descending: 2.53 sorts paths of one last_change by strcmp, reversed."""

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __lt__(self, other: _Desc) -> bool:
        return self.b > other.b


# --- the pieces: the trees 2.53 would read, and its subtraction ------------------------------

def test_bundle_trees_add_the_directories_above() -> None:
    from swupd_repo.swupd.bundletrees import bundle_trees

    present = dict.fromkeys(["/usr", "/usr/bin", "/usr/bin/gdb", "/usr/bin/ls", "/opt",
                             "/opt/x", "/opt/x/y"])
    trees = bundle_trees(present, {"debug": {"/usr/bin/gdb", "/gone"}, "x": {"/opt/x"}})
    assert list(trees) == ["os-core", "debug", "x"]
    assert trees["debug"] == {"/usr", "/usr/bin", "/usr/bin/gdb"}  # /gone is not in the tree
    # /opt/x is x's, but os-core's /opt/x/y needs it: os-core's tree has it too
    assert trees["os-core"] == {"/usr", "/usr/bin", "/usr/bin/ls", "/opt", "/opt/x",
                                "/opt/x/y"}
    assert trees["x"] == {"/opt", "/opt/x"}


def test_subtract_keeps_the_servers_quirk() -> None:
    """§9.10: a name in both lists with another state makes the core side advance twice."""
    from swupd_repo.swupd.bundletrees import subtract
    from swupd_repo.swupd.manifest import Entry, deleted_entry

    def f(path: str) -> Entry:
        return Entry("F", "ab" * 32, 10, path)

    def d(path: str) -> Entry:
        return Entry("D", "cd" * 32, 10, path)

    core = [d("/a"), deleted_entry("/a/moved", 20), f("/a/next"), f("/a/z")]
    bundle = [d("/a"), f("/a/moved"), f("/a/next"), f("/a/z"), f("/b")]
    kept = [e.path for e in subtract(bundle, core)]
    # /a and /a/z are os-core's; /a/next survives because the walk skipped it
    assert kept == ["/a/moved", "/a/next", "/b"]
    # another type (D vs F) is kept too; the skipped core entry (/b) is in no bundle here,
    # so /c is still removed
    assert [e.path for e in subtract([f("/a"), f("/c")], [d("/a"), f("/b"), f("/c")])] == \
        ["/a"]


# --- rules on small trees (the builder alone) -------------------------------------------------

def _build(tmp_path: Path, steps: list[tuple[dict, dict]]) -> list[builder.Built]:
    """Each (files, split) as versions 10, 20, ... with the previous state in memory."""
    return _build_exact(tmp_path, [(files, split, f"VERSION_ID={10 * (i + 1)}\n")
                                   for i, (files, split) in enumerate(steps)])


def _flags(built: builder.Built, name: str) -> dict[str, tuple[str, int]]:
    return {e.path: (e.flags, e.last_change) for e in built.bundles[name].entries}


def test_a_file_moving_from_os_core_into_a_new_bundle(tmp_path: Path) -> None:
    files = {"usr/bin": None, "usr/bin/vi": "vi\n", "usr/bin/ls": "ls\n"}
    _, b20 = _build(tmp_path, [(files, {}), (files, {"editors": {"/usr/bin/vi"}})])
    assert _flags(b20, "os-core")["/usr/bin/vi"] == (".d..", 20)
    assert _flags(b20, "editors") == {"/usr/bin/vi": ("F...", 20)}
    assert b20.bundles["editors"].previous == 0
    # unchanged content, but both bundles say 20: Manifest.full follows (§2.7, §4)
    assert {e.path: e.last_change for e in b20.full.entries}["/usr/bin/vi"] == 20
    assert [(e.path, e.last_change) for e in b20.mom.entries] == [("os-core", 20),
                                                                  ("editors", 20)]


def test_a_bundle_with_nothing_to_publish_is_refused(tmp_path: Path) -> None:
    from swupd_repo.errors import BuildError

    files = {"etc": None, "etc/gdbinit": "x\n", "usr/bin": None, "usr/bin/ls": "ls\n"}
    with pytest.raises(BuildError, match="bundle debug of version 10 has nothing swupd can "
                                         "publish") as err:
        _build(tmp_path, [(files, {"debug": {"/etc/gdbinit"}})])
    assert "/usr/share/clear/bundles/debug" in (err.value.hint or "")


def test_a_bundle_that_changed_only_under_etc_keeps_its_line(tmp_path: Path) -> None:
    files = {"etc": None, "etc/gdbinit": "x\n", "usr/bin": None, "usr/bin/gdb": "gdb\n"}
    split = {"debug": {"/etc/gdbinit", "/usr/bin/gdb"}}
    _, b20 = _build(tmp_path, [(files, split), ({**files, "etc/gdbinit": "y\n"}, split)])
    assert "debug" not in b20.bundles
    assert {e.path: e.last_change for e in b20.mom.entries}["debug"] == 10


def test_a_refused_type_change_names_the_bundle(tmp_path: Path) -> None:
    from swupd_repo.errors import BuildError

    split = {"tool": {"/opt", "/opt/x"}}
    before = {"opt": None, "opt/x": None}
    after = {"opt": None, "opt/x": "now a file\n"}
    with pytest.raises(BuildError, match=r"version 20 \(bundle tool\) turns a directory"):
        _build(tmp_path, [(before, split), (after, split)])


def test_the_format_documents_example(tmp_path: Path) -> None:
    """format3 §2.9 (the real server's run with os-core and editors), re-enacted: its inputs are
    not given, so the trees here are made to fit what it shows (sizes of the changed files,
    a deleted hard link, a pruned /etc/foo, a state and a boot file, 15 entries kept from 10)
    and everything it shows must come out: os-core@20 ``filecount: 19``, ``contentsize: 65``
    (os-release 24 + new 4 + hello 37), ``previous: 10``, the listed lines' flags and versions;
    editors unchanged, so no Manifest.editors at 20 and MoM@20 keeps ``10 editors`` with the
    hash of MoM@10, listed before ``20 os-core``."""
    common = {"var": None, "var/lib": None, "var/lib/x": "state\n", "etc": None,
              "etc/foo": "config\n", "boot": None, "boot/vmlinuz": "kernel\n",
              "usr/bin": None, "usr/bin/ls": "ls\n", "usr/lib/libc.so": "libc\n",
              "usr/share": None, "usr/share/clear": None, "usr/share/clear/bundles": None,
              "usr/share/clear/bundles/os-core": "", "usr/share/clear/bundles/editors": "",
              "usr/bin/vim": "vim\n"}
    editors = {"editors": {"/usr/bin/vim", "/usr/share/clear/bundles/editors"}}
    v10 = {**common, "usr/bin/hello": "hello\n", "usr/bin/hl": "hello\n"}
    v20 = {**common, "usr/bin/hello": "hello, world, in thirty-seven bytes\n!",
           "usr/bin/new": "new\n", "etc/foo": "changed\n"}
    b10, b20 = _build_exact(tmp_path, [(v10, editors, "NAME=Test\nVERSION_ID=10\n"),
                                       (v20, editors, "NAME=Test\nVERSION_ID=20\n")])
    core = b20.bundles["os-core"]
    assert (core.filecount, core.contentsize, core.previous) == (19, 65, 10)
    flags = _flags(b20, "os-core")
    assert flags["/var/lib/x"] == ("F.s.", 10) and flags["/var/lib"] == ("D.s.", 10)
    assert flags["/var"] == ("D...", 10) and flags["/etc"] == ("D...", 10)
    assert "/etc/foo" not in flags
    assert flags["/boot/vmlinuz"] == ("F.b.", 10) and flags["/boot"] == ("D...", 10)
    assert {p: flags[p] for p in ("/usr/lib/os-release", "/usr/bin/new", "/usr/bin/hl",
                                  "/usr/bin/hello")} == {
        "/usr/lib/os-release": ("F...", 20), "/usr/bin/new": ("F...", 20),
        "/usr/bin/hl": (".d..", 20), "/usr/bin/hello": ("F...", 20)}
    tail = b20.bundle_bytes["os-core"].decode().splitlines()[-4:]
    assert [line.split("\t")[3] for line in tail] == [
        "/usr/lib/os-release", "/usr/bin/new", "/usr/bin/hl", "/usr/bin/hello"]
    assert "editors" not in b20.bundles
    mom10 = {e.path: e for e in b10.mom.entries}
    assert b20.mom_bytes.decode().splitlines()[-2:] == [
        f"M...\t{mom10['editors'].hash}\t10\teditors",
        f"M...\t{manifest_hash(b20.bundle_bytes['os-core'])}\t20\tos-core"]


def _build_exact(tmp_path: Path, steps: list[tuple[dict, dict, str]]) -> list[builder.Built]:
    """Each (files, split, os-release text) as versions 10, 20, ... with the previous state
    in memory."""
    from helpers_bundles import write_tree

    out: list[builder.Built] = []
    previous = builder.Previous()
    for i, (files, split, release) in enumerate(steps):
        version = 10 * (i + 1)
        root = write_tree(tmp_path / str(version), {"usr": None, "usr/lib": None, **files,
                                                    "usr/lib/os-release": release})
        records = scan_tree(root, RecordingReporter()).records
        built = builder.build_manifests(records, version, previous, timestamp=1, bundles=split)
        out.append(built)
        known = {**previous.bundles, **built.bundles}
        previous = builder.Previous(version, {e.path: known[e.path] for e in built.mom.entries},
                                    built.full)
    return out
