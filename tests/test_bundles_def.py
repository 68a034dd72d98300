"""Bundle definitions and their resolution into ``image/<V>/os-core.bundles`` (issue 15).

Real images: the rootfs trees of tests/bundle_trees.py (a dpkg database in a merged-/usr tree,
an opkg one) made into ``.dsk`` files with sgdisk and mkfs.ext4 -d, published and extracted by
the ``swupd-repo`` command in its own process. The rules themselves are also checked on plain
directories (resolve() reads any tree), where a test needs a tree no image would hold.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from bundle_trees import make_dpkg_tree, make_opkg_tree
from dsk import make_dsk
from helpers_cli import publish, swupd_repo
from swupd_repo import treemeta
from swupd_repo.bundles.assignment import Assignment, assignment_path, read_assignment
from swupd_repo.bundles.definitions import BundleDef, from_cli
from swupd_repo.bundles.resolve import TreeLinks, resolve
from swupd_repo.bundles.tracking import store_split
from swupd_repo.errors import BackendError, BundleError, SettingsError
from swupd_repo.progress import NullReporter
from swupd_repo.settings import load_settings, make_settings
from swupd_repo.storage import Storage

DEBUG_BY_PACKAGES = ("--bundle-packages", "debug=gdb,strace")
DOCS_BY_GLOBS = ("--bundle-globs", "docs=/usr/share/doc/**")

#: What the two definitions above make of the dpkg tree: /lib/libgdbx.so.1 and /bin/strace of
#: the lists are /usr/lib/... and /usr/bin/... in the merged tree; /usr/share/gdb is wholly
#: gdb's; /usr, /usr/bin, /usr/lib, /usr/share and the /lib symlink stay os-core's.
EXPECTED = {
    "debug": {"/usr/bin/gdb", "/usr/bin/strace", "/usr/lib/libgdbx.so.1", "/usr/share/gdb",
              "/usr/share/gdb/python", "/usr/share/gdb/python/gdb.py",
              "/usr/share/clear/bundles/debug"},
    "docs": {"/usr/share/doc", "/usr/share/doc/base-files",
             "/usr/share/doc/base-files/copyright", "/usr/share/clear/bundles/docs"},
}


class Warnings:
    """A reporter that keeps warnings (the CLI prints them, BitBake logs them)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def step(self, name: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    work = tmp_path_factory.mktemp("bundle-images")
    return {
        "dpkg10": make_dsk(make_dpkg_tree(work / "dpkg10", 10), work / "img", "dpkg10"),
        "dpkg20": make_dsk(make_dpkg_tree(work / "dpkg20", 20), work / "img", "dpkg20"),
        "opkg10": make_dsk(make_opkg_tree(work / "opkg10", 10), work / "img", "opkg10"),
    }


def extract(storage: Path, image: tuple[Path, Path], *extra: str):
    dsk, layout = image
    return swupd_repo("extract", "--dsk", dsk, "--layout", layout, "--storage", storage,
                      "--version", "10", *extra)


def split(assignment: Assignment) -> dict[str, set[str]]:
    return {name: set(paths) for name, paths in assignment.bundles.items()}


def one_line_error(done) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    # progress lines come first on stderr; the error is one line, the last
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("swupd-repo: error: "), done.stderr
    assert done.stderr.rstrip("\n").endswith(errors[0])
    return errors[0]


# ---------------------------------------------------------------- resolution through the CLI


def test_packages_and_globs_publish_the_expected_split_and_tracking_files(images, tmp_path):
    done = publish(tmp_path, images["dpkg10"], *DEBUG_BY_PACKAGES, *DOCS_BY_GLOBS)
    assert done.returncode == 0, done.stderr
    tree = Storage(tmp_path).os_core(10)
    assert split(read_assignment(tree)) == EXPECTED
    assert json.loads(assignment_path(tree).read_text())["bundles"]["docs"] == \
        sorted(EXPECTED["docs"])
    # tracking files on disk, empty, and in the record as root:root 0644 (dirs 0755)
    record = treemeta.load(tree)  # also checks that record and tree name the same paths
    assert record is not None
    for name in ("os-core", "debug", "docs"):
        disk = tree / "usr/share/clear/bundles" / name
        assert disk.is_file() and disk.stat().st_size == 0
        meta = record.get(f"/usr/share/clear/bundles/{name}")
        assert (meta.mode, meta.uid, meta.gid) == (stat.S_IFREG | 0o644, 0, 0)
    for directory in ("/usr/share/clear", "/usr/share/clear/bundles"):
        meta = record.get(directory)
        assert (meta.mode, meta.uid, meta.gid) == (stat.S_IFDIR | 0o755, 0, 0)
    # os-core: its tracking file, the merged-/usr symlinks and every shared directory
    owned = set().union(*EXPECTED.values())
    for path in ("/usr/share/clear/bundles/os-core", "/lib", "/bin", "/usr/lib", "/usr/share",
                 "/usr/bin/sh", "/usr/share/man/man1/sh.1", "/var/lib/dpkg/status"):
        assert path in record.entries and path not in owned


def test_opkg_database_and_one_line_errors(images, tmp_path):
    done = extract(tmp_path, images["opkg10"], "--bundle-packages", "debug=gdb strace")
    assert done.returncode == 0, done.stderr
    tree = Storage(tmp_path).os_core(10)
    # opkg lists files only: the directories wholly under gdb come with its files
    assert split(read_assignment(tree)) == {"debug": EXPECTED["debug"]}
    # a package the status file says is not installed (its list is still there) is unknown
    other = tmp_path / "other"
    line = one_line_error(extract(other, images["opkg10"], "--bundle-packages",
                                  "debug=gdb,valgrind"))
    assert "bundle debug" in line and "valgrind" in line and \
        "opkg database /var/lib/opkg" in line
    assert not Storage(other).image(10).exists()


def test_unknown_and_removed_dpkg_packages_are_errors_naming_bundle_package_database(
        images, tmp_path):
    for package in ("nosuchpkg", "oldtool"):  # oldtool: "deinstall ok config-files"
        line = one_line_error(extract(tmp_path, images["dpkg10"], "--bundle-packages",
                                      f"tools={package}"))
        assert f"bundle tools names the package {package}, which is not installed" in line
        assert "dpkg database /var/lib/dpkg" in line
        assert not Storage(tmp_path).image(10).exists()  # nothing stored


def test_a_path_claimed_by_two_bundles_is_an_error_naming_both(images, tmp_path):
    line = one_line_error(extract(tmp_path, images["dpkg10"], *DEBUG_BY_PACKAGES,
                                  "--bundle-globs", "tools=/usr/bin/g*"))
    assert "/usr/bin/gdb is claimed by the bundles debug and tools" in line
    assert not Storage(tmp_path).image(10).exists()


def test_forced_rebuild_resolves_again_and_a_failed_one_keeps_the_split(images, tmp_path):
    storage = Storage(tmp_path)
    assert publish(tmp_path, images["dpkg10"], *DEBUG_BY_PACKAGES).returncode == 0
    tree = storage.os_core(10)
    assert set(read_assignment(tree).bundles) == {"debug"}
    done = publish(tmp_path, images["dpkg10"], "--version", "10", "--force",
                   *DEBUG_BY_PACKAGES, *DOCS_BY_GLOBS)
    assert done.returncode == 0, done.stderr
    assert split(read_assignment(tree)) == EXPECTED
    before = assignment_path(tree).read_bytes()
    # definitions that do not fit: the run fails and the published split stands
    line = one_line_error(publish(tmp_path, images["dpkg10"], "--version", "10", "--force",
                                  "--bundle-packages", "debug=gdb",
                                  "--bundle-globs", "tools=/usr/bin/gdb"))
    assert "claimed by the bundles debug and tools" in line
    assert assignment_path(tree).read_bytes() == before
    assert (tree / "usr/share/clear/bundles/docs").is_file()
    assert not list(storage.temporaries())
    # a run that fails after the new split was written (here: the backend, signing with a key
    # that is not one) puts the published split back with its tree
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    line = one_line_error(publish(tmp_path, images["dpkg10"], "--version", "10", "--force",
                                  "--bundle-globs", "other=/usr/bin/sh",
                                  "--signing-key", junk, "--signing-cert", junk))
    assert "signing key" in line
    assert assignment_path(tree).read_bytes() == before
    assert not (tree / "usr/share/clear/bundles/other").exists()
    # no bundles: no split file, and the tree is the image's rootfs again
    assert publish(tmp_path, images["dpkg10"], "--version", "10", "--force").returncode == 0
    assert not assignment_path(tree).exists()
    assert not (tree / "usr/share/clear").exists()
    assert read_assignment(tree) == Assignment()
    assert treemeta.load(tree) is not None


def test_a_killed_forced_rebuild_leaves_the_published_split(images, tmp_path):
    """SIGKILL after the new split was written: the next run puts the old one back."""
    from helpers_runs import kill_group, start_paused

    storage = Storage(tmp_path)
    assert publish(tmp_path, images["dpkg10"], *DEBUG_BY_PACKAGES).returncode == 0
    tree = storage.os_core(10)
    before = assignment_path(tree).read_bytes()
    proc = start_paused(tmp_path, images["dpkg10"], "writing manifests", None, "--version",
                        "10", "--force", *DOCS_BY_GLOBS)
    try:
        assert set(read_assignment(tree).bundles) == {"docs"}  # the new split, not committed
    finally:
        kill_group(proc.pid)
        proc.wait()
    done = swupd_repo("prune", "--storage", tmp_path, "--dry-run")  # any run cleans first
    assert done.returncode == 0, done.stderr
    assert assignment_path(tree).read_bytes() == before
    assert not (tree / "usr/share/clear/bundles/docs").exists()
    assert treemeta.load(tree) is not None


def test_revert_copies_the_split_with_the_tree(images, tmp_path):
    storage = Storage(tmp_path)
    for image in ("dpkg10", "dpkg20"):
        done = publish(tmp_path, images[image], *DEBUG_BY_PACKAGES, *DOCS_BY_GLOBS)
        assert done.returncode == 0, done.stderr
    done = swupd_repo("revert", "--to", "10", "--storage", tmp_path)
    assert done.returncode == 0, done.stderr
    assert assignment_path(storage.os_core(30)).read_bytes() == \
        assignment_path(storage.os_core(10)).read_bytes()
    assert treemeta.load(storage.os_core(30)) is not None


# ---------------------------------------------------------------- the rules on plain trees


def tracking_of(tree: Path, names: list[str]) -> dict[str, str]:
    """Tracking files made on disk (a tree without a record), as store_split adds them."""
    from swupd_repo.bundles.tracking import add_tracking_files, tracking_path

    add_tracking_files(tree, names)
    return {tracking_path(n): n for n in names}


def test_symlinks_are_followed_inside_the_tree_only(tmp_path):
    tree = make_dpkg_tree(tmp_path / "t", 10)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/gdb").write_text("host file\n")
    (tree / "opt").mkdir()
    (tree / "opt/up").symlink_to("../../../../outside")  # .. stops at the tree's root
    (tree / "opt/abs").symlink_to("/usr/bin")  # absolute: the tree's /usr/bin
    (tree / "opt/loop").symlink_to("loop")
    links = TreeLinks(tree)
    assert links.resolve("/lib/libgdbx.so.1", follow_last=False) == "/usr/lib/libgdbx.so.1"
    assert links.resolve("/lib", follow_last=True) == "/usr/lib"
    assert links.resolve("/lib", follow_last=False) == "/lib"
    assert links.resolve("/opt/abs/gdb", follow_last=False) == "/usr/bin/gdb"
    assert links.resolve("/opt/up/gdb", follow_last=False) is None  # /outside/gdb: not here
    assert links.resolve("/opt/loop/x", follow_last=False) is None
    assert links.resolve("/usr/bin/nothere", follow_last=False) is None


def test_directory_rule_conflicts_and_empty_bundles(tmp_path):
    tree = make_dpkg_tree(tmp_path / "t", 10)
    (tree / "usr/share/doc/gdb").mkdir()
    (tree / "usr/share/doc/gdb/NEWS").write_text("news\n")
    tracking = tracking_of(tree, ["os-core", "docs", "gdbdocs", "nothing"])
    reporter = Warnings()
    result = split(resolve(tree, [
        BundleDef("docs", globs=("/usr/share/doc/base-files/**",)),
        BundleDef("gdbdocs", globs=("/usr/share/doc/gdb/*",)),
        BundleDef("nothing", globs=("/usr/share/nowhere/**",)),
    ], tracking=tracking, reporter=reporter))
    # /usr/share/doc holds both bundles' directories: os-core keeps it; each subdirectory
    # is wholly one bundle's (gdbdocs claims /usr/share/doc/gdb as NEWS's parent)
    assert result["docs"] == {"/usr/share/doc/base-files", "/usr/share/doc/base-files/copyright",
                              "/usr/share/clear/bundles/docs"}
    assert result["gdbdocs"] == {"/usr/share/doc/gdb", "/usr/share/doc/gdb/NEWS",
                                 "/usr/share/clear/bundles/gdbdocs"}
    assert result["nothing"] == {"/usr/share/clear/bundles/nothing"}
    assert len(reporter.warnings) == 1 and "bundle nothing has no content" in \
        reporter.warnings[0]
    # a glob over another bundle's tracking file claims nothing there; files conflict
    result = split(resolve(tree, [BundleDef("docs", globs=("/usr/share/clear/**",
                                                           "/usr/share/doc/**"))],
                           tracking=tracking_of(tree, ["os-core", "docs"])))
    assert "/usr/share/clear/bundles/os-core" not in result["docs"]
    assert "/usr/share/clear/bundles" not in result["docs"]
    with pytest.raises(BundleError, match="/usr/share/doc/gdb/NEWS is claimed by the bundles "
                                          "a and b"):
        resolve(tree, [BundleDef("a", globs=("/usr/share/doc/**",)),
                       BundleDef("b", globs=("/usr/share/doc/gdb/NEWS",))], tracking={})


def test_packages_without_a_database_say_how_to_keep_it(tmp_path):
    tree = make_dpkg_tree(tmp_path / "t", 10)
    shutil.rmtree(tree / "var/lib/dpkg")
    with pytest.raises(BundleError) as caught:
        resolve(tree, [BundleDef("debug", packages=("gdb",))], tracking={})
    assert "has no package database" in str(caught.value)
    assert "package-management" in str(caught.value)
    # globs need none
    assert resolve(tree, [BundleDef("b", globs=("/usr/bin/gdb",))], tracking={}).bundles == \
        {"b": frozenset({"/usr/bin/gdb"})}


def test_no_bundles_store_nothing(tmp_path):
    tree = make_dpkg_tree(tmp_path / "t", 10)
    assignment_path(tree).write_text("stale\n")
    assert store_split(tree, (), NullReporter()) == Assignment()
    assert not assignment_path(tree).exists()
    assert not (tree / "usr/share/clear").exists()


def test_rpm_database_read_with_the_rpm_tool(tmp_path, monkeypatch):
    """A real rpm database: rpmbuild makes a package, rpm --justdb installs it in the tree."""
    import subprocess

    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed (scripts/install-deps installs rpm)")
    top = tmp_path / "rpmbuild"
    spec = top / "SPECS/hello.spec"
    spec.parent.mkdir(parents=True)
    spec.write_text("Name: hello\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\n"
                    "BuildArch: noarch\n%description\nd\n%install\n"
                    "mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/hello\n"
                    "echo hi > %{buildroot}/usr/bin/hello\n"
                    "echo data > %{buildroot}/usr/share/hello/data\n"
                    "%files\n/usr/bin/hello\n/usr/share/hello\n")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True,
                   capture_output=True)
    package = next(top.glob("RPMS/noarch/hello-1-1.noarch.rpm"))
    tree = make_opkg_tree(tmp_path / "t", 10)
    shutil.rmtree(tree / "var/lib/opkg")
    (tree / "usr/share/hello").mkdir()
    (tree / "usr/bin/hello").write_text("hi\n")
    (tree / "usr/share/hello/data").write_text("data\n")
    subprocess.run(["rpm", "--root", str(tree), "--dbpath", "/var/lib/rpm", "-i", "--justdb",
                    "--nodeps", "--noscripts", str(package)], check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)  # a storage given as a relative path
    result = resolve(Path("t"), [BundleDef("hello", packages=("hello",))], tracking={})
    assert split(result) == {"hello": {"/usr/bin/hello", "/usr/share/hello",
                                       "/usr/share/hello/data"}}
    with pytest.raises(BundleError, match="bundle hello names the package nope, which is not "
                                          "installed in the image \\(rpm database /var/lib/rpm"):
        resolve(tree, [BundleDef("hello", packages=("nope",))], tracking={})


# ---------------------------------------------------------------- settings: YAML, CLI, Docker


def test_yaml_bundles_and_their_errors_name_the_file(tmp_path):
    config = tmp_path / "swupd-repo.yaml"
    config.write_text("bundles:\n  debug:\n    packages: [gdb, strace]\n"
                      "  docs:\n    globs: /usr/share/doc/** /usr/share/man/**\n")
    assert load_settings(config).bundles == (
        BundleDef("debug", ("gdb", "strace")),
        BundleDef("docs", globs=("/usr/share/doc/**", "/usr/share/man/**")))
    # a copy keeps them (Settings.replace goes through dataclasses.asdict)
    assert load_settings(config).replace(jobs=1).bundles == load_settings(config).bundles
    for body, message in [
        ("bundles:\n  os-core: {globs: [/x]}\n", "'os-core', which is reserved"),
        ("bundles:\n  a.b: {globs: [/x]}\n", "'a.b', which is not a valid bundle name"),
        ("bundles:\n  a-from-1: {globs: [/x]}\n", "'a-from-1', whose '-from-' would make"),
        ("bundles:\n  a: {files: [/x]}\n", "bundles.a in {config} has unknown key(s) files"),
        ("bundles:\n  a: {}\n", "bundle 'a' of bundles in {config} has no content"),
        ("bundles:\n  a: {globs: [usr/bin]}\n", "bundles.a.globs in {config} holds 'usr/bin'"),
        ("bundles:\n  a: {packages: ['g b/c']}\n", "bundles.a.packages in {config} holds"),
        ("bundles: [1]\n", "bundles in {config} must map bundle names"),
    ]:
        config.write_text(body)
        with pytest.raises(SettingsError) as caught:
            load_settings(config)
        assert message.format(config=config) in str(caught.value), body
        assert "\n" not in str(caught.value)


def test_cli_definitions_replace_the_config_files(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("bundles:\n  docs: {globs: [/usr/share/doc/**]}\n")
    cli = from_cli(["debug=gdb,strace", "debug=ltrace"], ["debug=/usr/lib/debug/**"])
    assert load_settings(config, {"bundles": cli}).bundles == (
        BundleDef("debug", ("gdb", "strace", "ltrace"), ("/usr/lib/debug/**",)),)
    assert load_settings(config, {"bundles": from_cli(None, None)}).bundles == \
        (BundleDef("docs", globs=("/usr/share/doc/**",)),)
    with pytest.raises(SettingsError, match="--bundle-packages 'gdb' is not NAME=ITEMS"):
        from_cli(["gdb"], None)
    with pytest.raises(SettingsError, match="'MoM', which is reserved"):
        from_cli(None, ["MoM=/x"])
    # the flags exist on publish and extract, with help
    for command in ("publish", "extract"):
        done = swupd_repo(command, "--help")
        assert "--bundle-packages NAME=PKG[,PKG...]" in done.stdout
        assert "--bundle-globs NAME=GLOB[,GLOB...]" in done.stdout


def test_docker_backend_refuses_bundles_naming_the_variable_and_native(tmp_path):
    with pytest.raises(SettingsError) as caught:
        make_settings({"backend": "docker", "bundles": {"docs": {"globs": ["/usr/**"]}}})
    assert "SWUPD_REPO_BUNDLES" in str(caught.value) and "native" in str(caught.value)
    # a tree stored with bundles (swupd-repo build of it): refused before any engine is asked
    from swupd_repo.backends.docker import DockerBackend
    from swupd_repo.bundles.assignment import write_assignment

    storage = Storage(tmp_path)
    tree = make_dpkg_tree(storage.os_core(10), 10)
    write_assignment(tree, Assignment({"docs": frozenset({"/usr/share/doc"})}))
    settings = make_settings({"backend": "docker", "docker_host": "tcp://127.0.0.1:9"})
    with pytest.raises(BackendError, match=r"stored with the bundles docs .* native backend"):
        DockerBackend().build(storage, 10, settings, NullReporter())


def test_glob_semantics():
    from swupd_repo.bundles.resolve import GlobMatcher

    cases = {
        "/usr/share/doc/**": {"/usr/share/doc": True, "/usr/share/doc/a/.b/c": True,
                              "/usr/share/docs": False, "/usr/share": False},
        "/us?/bin/*": {"/usr/bin/gdb": True, "/usr/bin": False, "/usr/bin/x/y": False},
        "/**/*.py": {"/usr/share/gdb/python/gdb.py": True, "/x.py": True, "/x.pyc": False},
        "/usr/lib/[a-c]*": {"/usr/lib/bfd": True, "/usr/lib/gdb": False},
        "/usr/bin/gdb": {"/usr/bin/gdb": True, "/usr/bin/gdbserver": False},
    }
    for glob, expected in cases.items():
        matcher = GlobMatcher([glob])
        assert {p: matcher.matches(p) for p in expected} == expected, glob


def test_build_uses_the_stored_split_and_says_so_when_bundles_are_configured(images, tmp_path):
    storage = Storage(tmp_path / "s")
    assert extract(storage.root, images["dpkg10"], *DEBUG_BY_PACKAGES).returncode == 0
    before = assignment_path(storage.os_core(10)).read_bytes()
    config = tmp_path / "c.yaml"
    config.write_text("bundles:\n  docs: {globs: [/usr/share/doc/**]}\n")
    done = swupd_repo("build", "--storage", storage.root, "--version", "10", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "version 10 is built with the split stored in" in done.stderr
    assert assignment_path(storage.os_core(10)).read_bytes() == before
    assert "--bundle-globs" not in swupd_repo("build", "--help").stdout


def test_os_release_stays_in_os_core_whatever_a_bundle_claims(images, tmp_path):
    """The client reads the version a device runs from /usr/lib/os-release: a bundle that
    claimed it (here by a glob over /usr/lib) would leave a device with os-core alone unable
    to tell its version, and version 20's os-core without the change every version makes
    (the build failed saying os-core did not change)."""
    libs = ("--bundle-globs", "libs=/usr/lib/**")
    for name in ("dpkg10", "dpkg20"):
        done = publish(tmp_path, images[name], *libs)
        assert done.returncode == 0, done.stderr
    storage = Storage(tmp_path)
    for version in (10, 20):
        libs_paths = read_assignment(storage.os_core(version)).bundles["libs"]
        assert "/usr/lib/os-release" not in libs_paths
        assert "/usr/lib/libgdbx.so.1" in libs_paths  # the glob still claims the rest
        core = (storage.www(version) / "Manifest.os-core").read_text()
        assert f"\t{version}\t/usr/lib/os-release\n" in core
