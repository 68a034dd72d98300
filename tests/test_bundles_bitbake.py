"""Bundle variables in the layer: SWUPD_REPO_BUNDLES and its varflags through real BitBake.

The bed of tests/bitbake (see test_layer.py for what it reproduces) parses and builds
``ostro-image``; the datastore tests use BitBake's own ``bb.data`` store.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path[0:0] = [str(REPO / "tests" / "bitbake"), str(REPO / "tests" / "bitbake" / "stubs")]
import bb.data  # noqa: E402
import bed  # noqa: E402

from swupd_repo import bitbake as glue  # noqa: E402
from swupd_repo.bundles.assignment import read_assignment  # noqa: E402
from swupd_repo.bundles.definitions import BundleDef  # noqa: E402
from swupd_repo.errors import SettingsError  # noqa: E402
from swupd_repo.storage import Storage  # noqa: E402
from test_layer import parse, storage_of  # noqa: E402

BUNDLES_CONF = ('SWUPD_REPO_BUNDLES = "notes debug"\n'
                'SWUPD_REPO_BUNDLE_GLOBS[notes] = "/usr/share/ostro/**"\n'
                'SWUPD_REPO_BUNDLE_PACKAGES[debug] = "gdb strace"\n'
                'SWUPD_REPO_BUNDLE_GLOBS[debug] = "/usr/lib/debug/**"\n')


def datastore(**flags: dict[str, str]):
    d = bb.data.init()
    for variable, table in flags.items():
        for name, value in table.items():
            d.setVarFlag(variable, name, value)
    return d


def test_variables_and_varflags_become_bundle_definitions():
    d = datastore(SWUPD_REPO_BUNDLE_PACKAGES={"debug": "gdb  strace"},
                  SWUPD_REPO_BUNDLE_GLOBS={"debug": "/usr/lib/debug/**",
                                           "docs": "/usr/share/doc/**"})
    d.setVarFlag("SWUPD_REPO_BUNDLE_GLOBS", "doc", "documentation of the variable")
    d.setVar("SWUPD_REPO_BUNDLES", " docs debug ")
    assert glue.bundles_from_datastore(d) == (
        BundleDef("debug", ("gdb", "strace"), ("/usr/lib/debug/**",)),
        BundleDef("docs", (), ("/usr/share/doc/**",)))
    assert glue.bundle_vardeps(d).split() == [
        "SWUPD_REPO_BUNDLE_PACKAGES[docs]", "SWUPD_REPO_BUNDLE_GLOBS[docs]",
        "SWUPD_REPO_BUNDLE_PACKAGES[debug]", "SWUPD_REPO_BUNDLE_GLOBS[debug]"]


@pytest.mark.parametrize(("names", "flags", "message"), [
    ("debug", {"SWUPD_REPO_BUNDLE_GLOBS": {"dbug": "/x/**"}},
     "SWUPD_REPO_BUNDLE_GLOBS[dbug] is set, but dbug is not in SWUPD_REPO_BUNDLES"),
    ("debug", {}, "bundle 'debug' of SWUPD_REPO_BUNDLES has no content (set "
                  "SWUPD_REPO_BUNDLE_PACKAGES[debug] or SWUPD_REPO_BUNDLE_GLOBS[debug])"),
    ("os-core", {"SWUPD_REPO_BUNDLE_GLOBS": {"os-core": "/x"}},
     "SWUPD_REPO_BUNDLES names the bundle 'os-core', which is reserved"),
    ("debug", {"SWUPD_REPO_BUNDLE_GLOBS": {"debug": "usr/lib/debug"}},
     "SWUPD_REPO_BUNDLE_GLOBS[debug] holds 'usr/lib/debug', which is not an absolute path"),
    ("debug", {"SWUPD_REPO_BUNDLE_PACKAGES": {"debug": "gdb /usr/bin/gdb"}},
     "SWUPD_REPO_BUNDLE_PACKAGES[debug] holds '/usr/bin/gdb', which is not a package name"),
])
def test_bad_bundle_variables_name_the_variable(names, flags, message):
    d = datastore(**flags)
    d.setVar("SWUPD_REPO_BUNDLES", names)
    with pytest.raises(SettingsError) as caught:
        glue.bundles_from_datastore(d)
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def builddir(tmp_path_factory):
    return bed.make_builddir(tmp_path_factory.mktemp("bundles-parse"))


def test_parse_reads_the_bundles_and_each_varflag_is_in_the_signature(builddir):
    bed.set_local_conf(builddir, BUNDLES_CONF)
    try:
        report = parse(builddir)
        assert report["problems"] == []
        assert report["settings"]["bundles"] == [
            {"name": "debug", "packages": ["gdb", "strace"], "globs": ["/usr/lib/debug/**"]},
            {"name": "notes", "packages": [], "globs": ["/usr/share/ostro/**"]}]
        deps = set(report["taskdeps"]["do_swupd_repo"])
        assert {"SWUPD_REPO_BUNDLES", "SWUPD_REPO_BUNDLE_GLOBS[notes]",
                "SWUPD_REPO_BUNDLE_PACKAGES[debug]"} <= deps
        base = report["basehashes"]["do_swupd_repo"]
        bed.set_local_conf(builddir, BUNDLES_CONF.replace('"gdb strace"', '"gdb"'))
        assert parse(builddir)["basehashes"]["do_swupd_repo"] != base
        bed.set_local_conf(builddir, BUNDLES_CONF.replace("/usr/share/ostro/**",
                                                          "/usr/share/**"))
        assert parse(builddir)["basehashes"]["do_swupd_repo"] != base
    finally:
        bed.set_local_conf(builddir, "")
    assert parse(builddir)["settings"]["bundles"] == []


def test_a_build_stores_the_split_of_its_bundles(tmp_path):
    builddir = bed.make_builddir(tmp_path, 'SWUPD_REPO_BUNDLES = "notes"\n'
                                           'SWUPD_REPO_BUNDLE_GLOBS[notes] = '
                                           '"/usr/share/ostro/**"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    storage: Storage = storage_of(builddir)
    tree = storage.os_core(10)
    assert read_assignment(tree).bundles == {"notes": frozenset({
        "/usr/share/ostro", "/usr/share/ostro/release-notes", "/usr/share/clear/bundles/notes"})}
    assert (tree / "usr/share/clear/bundles/os-core").is_file()
    assert json.loads((storage.root / "report.json").read_text())["versions"][0]["version"] == 10
