"""Bundles on the client's side (issue 15): ``includes:``, the installed set from tracking
files, the set arithmetic of adding, removing and losing a bundle, removal on disk, the
bundle sets ``check`` simulates; and the bundle commands against the real server's output
(os-core only) over real HTTP.

Repositories with several bundles, published by our generator, are exercised end to end in
``test_bundles_e2e.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swupd_repo.check.bundlesets import BundleSet, bundle_sets, expected
from swupd_repo.client import bundle_add, bundle_list, bundle_remove, install
from swupd_repo.client.apply import remove_entries
from swupd_repo.client.bundleset import (
    add_list,
    closure,
    dropped_deletions,
    includers,
    removal_list,
)
from swupd_repo.client.consolidate import consolidate, update_list
from swupd_repo.client.tracking import installed_bundles, tracked_bundles, write_tracking_file
from swupd_repo.errors import ClientError, ManifestError
from swupd_repo.progress import RecordingReporter
from swupd_repo.serve import serve_in_thread
from swupd_repo.swupd.manifest import Entry, Manifest, bundle_line, deleted_entry, parse_manifest

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def f(path: str, digest: str = H1, version: int = 10, modifier: str = ".") -> Entry:
    return Entry("F", digest, version, path, modifier=modifier)


def d(path: str, version: int = 10) -> Entry:
    return Entry("D", H3, version, path)


# -- includes: ------------------------------------------------------------------------------

def test_includes_round_trip_after_contentsize() -> None:
    m = Manifest(20, previous=10, contentsize=5, includes=("os-core", "editors"),
                 entries=[f("/usr/bin/vi", version=20)])
    data = m.to_bytes()
    head = data.split(b"\n\n")[0].split(b"\n")
    assert head[5:] == [b"contentsize:\t5", b"includes:\tos-core", b"includes:\teditors"]
    back = parse_manifest(data)
    assert back.includes == ("os-core", "editors") and back.to_bytes() == data
    # 2.53 writes none, and a manifest without them is written as it was
    assert b"includes" not in Manifest(20).to_bytes()
    assert parse_manifest(Manifest(20).to_bytes()).includes == ()


@pytest.mark.parametrize("bad", ["a/b", "..", ""])
def test_includes_naming_no_bundle_is_refused(bad: str) -> None:
    data = Manifest(20).to_bytes().replace(b"contentsize:\t0\n",
                                           b"contentsize:\t0\nincludes:\t" + bad.encode() + b"\n")
    with pytest.raises(ManifestError, match="includes names no bundle"):
        parse_manifest(data, "Manifest.x")


# -- the installed set ----------------------------------------------------------------------

def test_installed_set_is_os_core_plus_the_tracking_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert tracked_bundles(root) == [] and installed_bundles(root) == ["os-core"]
    directory = root / "usr/share/clear/bundles"
    directory.mkdir(parents=True)
    (directory / "editors").touch()
    (directory / "dev-tools").touch()
    (directory / "linked").symlink_to("editors")   # not the target's own file
    (directory / "a-dir").mkdir()
    assert tracked_bundles(root) == ["dev-tools", "editors"]
    # os-core first and always, even when it ships no tracking file (c42f8a3a would drop it)
    assert installed_bundles(root) == ["os-core", "dev-tools", "editors"]
    (directory / "os-core").touch()
    assert installed_bundles(root) == ["os-core", "dev-tools", "editors"]


def test_a_linked_bundles_directory_tracks_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "editors").touch()
    root = tmp_path / "root"
    (root / "usr/share/clear").mkdir(parents=True)
    (root / "usr/share/clear/bundles").symlink_to(elsewhere)
    assert installed_bundles(root) == ["os-core"]


def test_write_tracking_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = write_tracking_file(root, "editors")
    assert path == root / "usr/share/clear/bundles/editors"
    st = os.stat(path)
    assert st.st_size == 0 and st.st_mode & 0o7777 == 0o644
    assert installed_bundles(root) == ["os-core", "editors"]


# -- set arithmetic -------------------------------------------------------------------------

def test_closure_follows_includes_once_with_os_core_first() -> None:
    graph = {"dev": ("editors", "python"), "python": ("os-core", "dev"), "editors": ()}
    asked: list[str] = []

    def includes_of(name: str) -> tuple[str, ...]:
        asked.append(name)
        return graph.get(name, ())

    assert closure(["dev"], includes_of) == ["os-core", "dev", "editors", "python"]
    assert sorted(asked) == ["dev", "editors", "os-core", "python"]  # each fetched once
    assert closure([], includes_of) == ["os-core"]


def test_includers() -> None:
    manifests = {"dev": Manifest(10, includes=("editors",)), "editors": Manifest(10),
                 "ide": Manifest(10, includes=("editors", "dev"))}
    assert includers("editors", manifests) == ["dev", "ide"]
    assert includers("ide", manifests) == []


def test_add_list_installs_only_what_the_target_lacks() -> None:
    have = consolidate([Manifest(10, entries=[d("/usr"), d("/usr/bin"), f("/usr/bin/ls")])])
    new = Manifest(10, entries=[f("/usr/bin/vi"), d("/usr/share/vim"), f("/usr/bin/ls"),
                                f("/etc/vimrc", modifier="C"), deleted_entry("/usr/bin/ex", 10),
                                f("/usr/bin/clash", H2)])
    other = Manifest(10, entries=[f("/usr/bin/clash", H1)])
    merged = consolidate([*[Manifest(10, entries=list(have.entries.values()))], other, new])
    assert merged.conflicts == ["/usr/bin/clash"]
    chosen = add_list(merged.entries, [new], have.entries)
    # already there with the same hash, config, deleted and conflicting entries are not laid down
    assert [e.path for e in chosen] == ["/usr/bin/vi", "/usr/share/vim"]


def test_removal_list_keeps_what_remaining_bundles_list_or_fill() -> None:
    removed = Manifest(10, entries=[d("/opt/shared"), f("/opt/shared/gdb"), d("/opt/gdb"),
                                    f("/opt/gdb/x"), f("/usr/bin/both"),
                                    f("/etc/gdbinit", modifier="C"),
                                    deleted_entry("/opt/old", 10),
                                    f("/usr/share/clear/bundles/gdb")])
    kept = [Manifest(10, entries=[f("/opt/shared/perf"), f("/usr/bin/both")])]
    # /opt/shared stays: a remaining bundle has a file in it, even without listing it
    assert [e.path for e in removal_list([removed], kept)] == [
        "/opt/gdb", "/opt/gdb/x", "/opt/shared/gdb", "/usr/share/clear/bundles/gdb"]


def test_dropped_deletions_spare_state_and_what_moved() -> None:
    old = Manifest(10, entries=[f("/usr/bin/gdb"), f("/usr/bin/moved"),
                                f("/var/lib/gdb/cache", modifier="s"),
                                f("/usr/share/clear/bundles/gdb")])
    kept = [Manifest(20, entries=[f("/usr/bin/moved", version=20)])]
    gone = dropped_deletions([old], kept, 20)
    assert [(e.path, e.deleted, e.last_change) for e in gone] == [
        ("/usr/bin/gdb", True, 20), ("/usr/share/clear/bundles/gdb", True, 20)]


def test_update_list_takes_a_new_bundle_whole() -> None:
    entries = consolidate([Manifest(20, entries=[f("/usr/bin/old", version=10),
                                                 f("/usr/bin/new", version=20),
                                                 f("/opt/b/x", version=10),
                                                 f("/var/b", version=10, modifier="s"),
                                                 deleted_entry("/opt/b/gone", 10)])]).entries
    assert [e.path for e in update_list(entries, 10)] == ["/usr/bin/new"]
    assert [e.path for e in update_list(entries, 10, {"/opt/b/x", "/var/b", "/opt/b/gone"})] \
        == ["/opt/b/x", "/usr/bin/new", "/var/b"]


# -- removal on disk ------------------------------------------------------------------------

def test_remove_entries_removes_exactly_and_keeps_full_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt/gdb").mkdir(parents=True)
    (root / "opt/gdb/x").write_text("x")
    (root / "opt/gdb/users-file").write_text("mine")
    (root / "opt/empty").mkdir()
    (root / "opt/link").symlink_to("/nonexistent")
    (root / "var/lib/swupd").mkdir(parents=True)
    reporter = RecordingReporter()
    entries = [d("/opt/gdb"), f("/opt/gdb/x"), d("/opt/empty"), Entry("L", H1, 10, "/opt/link"),
               f("/opt/never-installed"), d("/var/lib/swupd")]
    removed = remove_entries(root, entries, state=("var", "lib", "swupd"),
                             warn=reporter.warning)
    assert removed == 3
    assert sorted(os.listdir(root / "opt")) == ["gdb"]
    assert os.listdir(root / "opt/gdb") == ["users-file"]
    assert (root / "var/lib/swupd").is_dir()
    assert any("/opt/gdb" in w and "/var/lib/swupd" in w for w in reporter.warnings)


# -- the sets check simulates ---------------------------------------------------------------

def test_bundle_sets_and_expected_paths() -> None:
    only_core = {10: Manifest(10, entries=[bundle_line("os-core", H1, 10)])}
    assert bundle_sets(only_core) == [BundleSet(False)]
    mom = Manifest(20, entries=[bundle_line("os-core", H1, 20), bundle_line("gdb", H1, 20),
                                bundle_line("editors", H1, 10)])
    manifests = {
        "os-core": Manifest(20, entries=[d("/usr"), d("/usr/bin"), f("/usr/bin/ls")]),
        "gdb": Manifest(20, includes=("editors",),
                        entries=[f("/usr/bin/gdb"), deleted_entry("/usr/bin/old", 20)]),
        "editors": Manifest(10, entries=[f("/usr/bin/vi"), d("/usr/share/vim")]),
    }
    read = {(m.version, n): m for n, m in manifests.items()}
    sets = bundle_sets({10: only_core[10], 20: mom})
    assert [(s.everything, s.label) for s in sets] == [(False, "os-core"), (True, "all bundles")]
    core, everything = (expected(mom, lambda v, n: read[(v, n)], s) for s in sets)
    assert core.bundles == ["os-core"]
    assert core.not_expected == {"/usr/bin/gdb", "/usr/bin/vi", "/usr/share/vim"}
    assert everything.bundles == ["os-core", "editors", "gdb"] and everything.not_expected == set()
    assert "/usr/bin/old" in everything.entries
    # a device of the os-core set of a bundle that includes editors keeps editors too
    gdb_only = BundleSet(True, "x")
    assert gdb_only.start(mom) == ["editors", "gdb"]


# -- the commands on the real server's (os-core only) output, over real HTTP ----------------

@pytest.fixture(scope="module")
def url(vectors: Path):
    with serve_in_thread(vectors / "www") as base:
        yield base


def test_bundle_commands_on_an_os_core_repository(url: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    root = tmp_path / "root"
    install(url, root, 10, state_dir=tmp_path / "state")
    assert bundle_list(root) == [("os-core", True)]
    assert bundle_list(root, url, all_bundles=True) == [("os-core", True)]
    stats = bundle_add(url, root, ["os-core"], state_dir=tmp_path / "state")
    assert stats.added == [] and stats.installed == 0
    with pytest.raises(ClientError, match=r"version 10 has no bundle gdb .*lists os-core\)"):
        bundle_add(url, root, ["gdb"], state_dir=tmp_path / "state")
    with pytest.raises(ClientError, match="os-core cannot be removed"):
        bundle_remove(url, root, ["os-core"])
    with pytest.raises(ClientError, match=r"gdb is not installed in .* \(installed: os-core\)"):
        bundle_remove(url, root, ["gdb"])
    with pytest.raises(ClientError, match="cannot be a bundle name"):
        bundle_add(url, root, ["../etc"])
    capsys.readouterr()
    assert main(["client", "bundle-list", "--path", str(root), "--all", "--url", url]) == 0
    assert capsys.readouterr().out == "os-core (installed)\n"
    assert main(["client", "bundle-list", "--path", str(root), "--all"]) == 2
    assert "pass --url" in capsys.readouterr().err
    assert main(["client", "bundle-add", "gdb", "--path", str(root), "--url", url,
                 "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "version 10 has no bundle gdb" in line]) == 1


def test_install_refuses_an_unknown_bundle(url: str, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="cannot install gdb: version 10 has no such bundle"):
        install(url, tmp_path / "root", 10, bundles=["gdb"])
    assert not (tmp_path / "root").exists()


def test_cli_help_names_the_bundle_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    with pytest.raises(SystemExit):
        main(["client", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("bundle-add", "bundle-remove", "bundle-list"))
    with pytest.raises(SystemExit):
        main(["client", "bundle-remove", "--help"])
    assert "a remaining bundle includes are refused" in capsys.readouterr().out.replace("\n", " ")
