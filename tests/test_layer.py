"""The layer inside BitBake: meta-swupd-repo driven through the real ``bb`` library.

Every build runs ``tests/bitbake/runner.py`` in its own process (like ``bitbake``): tasks are
forked one by one, run in a new user namespace without network, and ``[fakeroot]`` tasks under
Debian's pseudo with OE-core's PSEUDO_INCLUDE_PATHS rule enforced by the bed, so a class that
only works as plain root, or relies on pseudo outside the paths OE-core's pseudo tracks, fails
here as it would in a real build. The miniature build tree (tests/bitbake/meta-test) has
``ostro-image`` and ``ostro-image-dev`` recipes whose do_rootfs/do_image make a GPT ``.dsk``
with sgdisk and ``mkfs.ext4 -d``.

Not exercised: the re-parse after a publish that BitBake's parse cache needs (the class marks
both latest markers with ``bb.parse.mark_dependency``, so a changed marker invalidates the
cached recipe). The bed has no parse cache: every build parses the recipe afresh, so the
next version is found whether or not the markers are dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO

# the bed's modules, and stand-ins for the hashserv/prserv packages PyPI's bb lacks
sys.path[0:0] = [str(REPO / "tests" / "bitbake"), str(REPO / "tests" / "bitbake" / "stubs")]
import bed  # noqa: E402

from helpers_trees import snapshot  # noqa: E402
from swupd_repo import treemeta  # noqa: E402
from swupd_repo.settings import load_settings  # noqa: E402
from swupd_repo.storage import Storage  # noqa: E402
from swupd_repo.swupd.streamstore import CACHE_DIR  # noqa: E402

MIB = 1 << 20
ROOTFS_OFFSET = 3 * MIB  # partition_03_rootfs of the bed's DSK_IMAGE_LAYOUT starts at 3 MiB


# ---------------------------------------------------------------- helpers


def parse(builddir: Path) -> dict:
    """The runner's parse report (warnings, signatures, settings) from a fresh process."""
    with open(os.devnull) as stdin:
        proc = subprocess.run([sys.executable, str(bed.RUNNER), "parse", "--builddir",
                               str(builddir), "ostro-image"], stdin=stdin, capture_output=True,
                              text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def storage_of(builddir: Path, image: str = "ostro-image") -> Storage:
    """The default storage of ``image``: one per image and MACHINE."""
    return Storage(builddir / "swupd-repo" / f"{image}-{bed.MACHINE}")


def task_log(builddir: Path, task: str, image: str = "ostro-image") -> str:
    log = builddir / "tmp/work" / bed.MACHINE / image / "1.0/temp" / f"log.{task}"
    return log.read_text()


def dsk_os_release(dsk: Path) -> str:
    """usr/lib/os-release inside the deployed image, read with debugfs (no mount)."""
    proc = subprocess.run(["debugfs", "-R", "cat /usr/lib/os-release",
                           f"{dsk}?offset={ROOTFS_OFFSET}"], capture_output=True, text=True,
                          check=True)
    return proc.stdout


#: What the bed's rootfs_install makes of /home/ostro and /dev/null.
RECORDED = [(1000, 1000, 0o700, stat.S_IFDIR, 0), (0, 0, 0o666, stat.S_IFCHR, os.makedev(1, 3))]


def record_says(root: Path) -> list[tuple[int, int, int, int, int]]:
    """``(uid, gid, permissions, type, rdev)`` of /home/ostro and /dev/null in the record."""
    record = treemeta.load(root)
    assert record is not None, f"{root} has no metadata record"
    return [(m.uid, m.gid, stat.S_IMODE(m.mode), stat.S_IFMT(m.mode), m.rdev)
            for m in map(record.get, ("/home/ostro", "/dev/null"))]


def version_id(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("VERSION_ID="):
            return line.split("=", 1)[1]
    return ""


# ---------------------------------------------------------------- parsing


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return bed.make_builddir(tmp_path_factory.mktemp("parse"))


def test_class_parses_without_warnings_with_layer_on_python_path(fresh):
    report = parse(fresh)
    assert report["problems"] == []
    # addpylib from layer.conf put the library beside the layer on BitBake's path
    assert str(bed.LAYER.parent / "lib") in report["sys_path"]
    assert report["config_parsed_handler"] == "1"  # the bed's own event handler ran
    assert report["order"] == ["do_rootfs", "do_image", "do_image_complete", "do_swupd_repo",
                               "do_build"]
    # the image tasks need pseudo, and only inside PSEUDO_INCLUDE_PATHS; publishing needs none
    assert set(report["fakeroot"]) == {"do_rootfs", "do_image"}
    assert report["pseudo_uncovered"] == {"do_rootfs": [], "do_image": []}
    assert report["lockfiles"] == str(storage_of(fresh).root) + ".bitbake.lock"
    assert report["os_version"] == "10"
    assert "swupd_repo_os_release" in report["rootfs_postprocess"].split()
    # the version written into the rootfs is part of do_rootfs's signature
    assert {"swupd_repo_os_release", "OS_VERSION"} <= set(report["taskdeps"]["do_rootfs"])


def test_task_signature_is_deterministic_and_follows_the_settings(fresh):
    first, second = parse(fresh), parse(fresh)
    assert first["basehashes"] == second["basehashes"]
    assert first["basehashes"] == first["basehashes_again"]  # two parses in one process
    deps = set(first["taskdeps"]["do_swupd_repo"])
    from swupd_repo.bitbake import FIELD_VARIABLES

    assert set(FIELD_VARIABLES.values()) - {"SWUPD_REPO_JOBS"} <= deps
    assert "SWUPD_REPO_JOBS" not in deps

    base = first["basehashes"]["do_swupd_repo"]
    assert first["network"] == []  # the native backend needs no network
    try:
        bed.set_local_conf(fresh, 'SWUPD_REPO_JOBS = "3"\n')
        assert parse(fresh)["basehashes"]["do_swupd_repo"] == base
        bed.set_local_conf(fresh, 'SWUPD_REPO_BACKEND = "docker"\n')
        docker = parse(fresh)
        assert docker["basehashes"]["do_swupd_repo"] != base
        # the engine may be at a tcp:// address: the task keeps the network then
        assert docker["network"] == ["do_swupd_repo"]
        assert docker["problems"] == []
    finally:
        bed.set_local_conf(fresh, "")


def test_class_defaults_are_the_yaml_defaults(fresh):
    settings = parse(fresh)["settings"]
    defaults = load_settings()
    bitbake_only = {"storage_dir", "disk_image", "os_version", "docker_host"}
    for field, value in settings.items():
        if field in bitbake_only:
            continue
        expected = getattr(defaults, field)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert value == expected, field
    assert settings["storage_dir"] == str(storage_of(fresh).root)
    # empty SWUPD_REPO_DOCKER_HOST: DOCKER_HOST of the environment bitbake started in
    assert settings["docker_host"] == (os.environ.get("DOCKER_HOST") or None)
    assert settings["disk_image"].endswith(f"/tmp/deploy/images/{bed.MACHINE}/"
                                           f"ostro-image-{bed.MACHINE}.dsk")


def test_layout_discovery_order_and_error(tmp_path):
    import bb.data

    from swupd_repo.bitbake import find_layout
    from swupd_repo.errors import LayoutError

    deploy, files = tmp_path / "deploy", tmp_path / "files"
    deploy.mkdir()
    files.mkdir()
    d = bb.data.init()
    d.setVar("DEPLOY_DIR_IMAGE", str(deploy))
    d.setVar("IMAGE_LINK_NAME", "ostro-image-m")
    d.setVar("IMAGE_NAME", "ostro-image-m-20260101120000")
    d.setVar("MACHINE", "m")
    d.setVar("FILESPATH", f"{tmp_path}/none:{files}")
    with pytest.raises(LayoutError) as err:
        find_layout(d)
    for looked in (deploy / "ostro-image-m-20260101120000-disk-layout.json",
                   deploy / "ostro-image-m-disk-layout.json", deploy / "disk-layout-m.json",
                   files / "disk-layout-m.json", "DSK_IMAGE_LAYOUT"):
        assert str(looked) in str(err.value)
    d.setVar("DSK_IMAGE_LAYOUT", '{"partition_01_rootfs": {}}')
    assert find_layout(d) == (None, '{"partition_01_rootfs": {}}')
    for path in (files / "disk-layout-m.json", deploy / "disk-layout-m.json",
                 deploy / "ostro-image-m-disk-layout.json",
                 deploy / "ostro-image-m-20260101120000-disk-layout.json"):
        path.write_text("{}")
        assert find_layout(d) == (path, None)
    explicit = tmp_path / "mine.json"
    d.setVar("SWUPD_REPO_DISK_LAYOUT", str(explicit))
    with pytest.raises(LayoutError, match="SWUPD_REPO_DISK_LAYOUT"):
        find_layout(d)
    explicit.write_text("{}")
    assert find_layout(d) == (explicit, None)


def test_oelint_adv_has_no_unexplained_findings():
    """Findings that do not apply are suppressed in meta-swupd-repo/.oelint.cfg, with reasons."""
    files = ["classes/swupd-repo.bbclass", "conf/layer.conf"]
    proc = subprocess.run(["oelint-adv", *files], cwd=bed.LAYER, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
    # the configuration is really used: without it, the suppressed findings come back
    bare = subprocess.run(["oelint-adv", "--quiet", *files], cwd=bed.LAYER,
                          env=dict(os.environ, OELINT_SKIP_CONFIG="1"),
                          capture_output=True, text=True, check=False)
    assert "oelint.bbclass.underscores" in bare.stdout + bare.stderr


# ---------------------------------------------------------------- builds


def test_generate_0_builds_the_image_and_publishes_nothing(tmp_path):
    builddir = bed.make_builddir(tmp_path, 'SWUPD_REPO_GENERATE = "0"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    assert "do_swupd_repo" not in result.output
    deploy = builddir / "tmp/deploy/images" / bed.MACHINE
    assert version_id_text(dsk_os_release(deploy / f"ostro-image-{bed.MACHINE}.dsk")) == "10"
    assert not storage_of(builddir).www_dir.exists()
    assert storage_of(builddir).latest() == 0


def test_release_0_stages_the_build_and_report_0_writes_none(tmp_path):
    builddir = bed.make_builddir(tmp_path, 'SWUPD_REPO_RELEASE = "0"\n'
                                           'SWUPD_REPO_REPORT = "0"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    storage = storage_of(builddir)
    assert storage.published_versions() == [10]
    assert storage.latest_image_marker.read_text() == "10\n"
    assert not storage.latest_www_marker.exists()  # devices see nothing until a release
    assert "staged (swupd-repo release to release it) version 10" in result.output
    assert not (storage.root / "report.html").exists()


def test_rebase_1_makes_that_build_a_rebase_version(tmp_path):
    """``SWUPD_REPO_REBASE = "1"`` for one build: every live entry of its manifests changes in
    it, and its pack from the previous version is its zero pack."""
    from swupd_repo.swupd.manifest import parse_manifest
    from swupd_repo.swupd.rebase import is_rebase

    builddir = bed.make_builddir(tmp_path, 'SWUPD_REPO_REPORT = "0"\n')
    first = bed.bitbake(builddir)
    assert first.ok, first.output
    bed.set_local_conf(builddir, 'SWUPD_REPO_REPORT = "0"\nSWUPD_REPO_REBASE = "1"\n'
                                 'IMAGE_MOTD = "rebase"\n')
    second = bed.bitbake(builddir)
    assert second.ok, second.output
    storage = storage_of(builddir)
    assert storage.published_versions() == [10, 20]
    full = parse_manifest((storage.www(20) / "Manifest.full").read_bytes())
    assert {e.last_change for e in full.entries if not e.deleted} == {20}
    assert is_rebase(storage.www_dir, 20)
    assert (storage.www(20) / "pack-os-core-from-10.tar").stat().st_ino == \
        (storage.www(20) / "pack-os-core-from-0.tar").stat().st_ino


def version_id_text(text: str) -> str:
    return next((line.split("=", 1)[1] for line in text.splitlines()
                 if line.startswith("VERSION_ID=")), "")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """Two builds of ostro-image in one build directory; what each left behind."""
    builddir = bed.make_builddir(tmp_path_factory.mktemp("builds"),
                                 'IMAGE_MOTD = "first build"\n')
    deploy = builddir / "tmp/deploy/images" / bed.MACHINE
    dsk = deploy / f"ostro-image-{bed.MACHINE}.dsk"
    first = bed.bitbake(builddir)
    facts: dict = {"builddir": builddir, "first": first}
    if first.ok:
        facts["first_dsk_os_release"] = dsk_os_release(dsk)
        shutil.copy(dsk, builddir / "build1.dsk")  # a stale image for a later test
    bed.set_local_conf(builddir, 'IMAGE_MOTD = "second build"\n')
    facts["second"] = bed.bitbake(builddir)
    if facts["second"].ok:
        facts["second_dsk_os_release"] = dsk_os_release(dsk)
    return facts


def test_two_builds_publish_10_then_20(published):
    builddir = published["builddir"]
    assert published["first"].ok, published["first"].output
    assert published["second"].ok, published["second"].output
    storage = storage_of(builddir)
    assert storage.published_versions() == [10, 20]
    assert storage.latest_image_marker.read_text() == "20\n"
    assert storage.latest_www_marker.read_text() == "20\n"
    for version in (10, 20):
        assert (storage.www(version) / "Manifest.MoM").is_file()
        assert (storage.www(version) / "Manifest.os-core").is_file()
        assert version_id(storage.os_core(version) / "usr/lib/os-release") == str(version)
        assert os.readlink(storage.os_core(version) / "etc/os-release") == \
            "../usr/lib/os-release"
    # what the image itself says is the version it was published as
    assert version_id_text(published["first_dsk_os_release"]) == "10"
    assert version_id_text(published["second_dsk_os_release"]) == "20"
    assert (storage.os_core(10) / "etc/motd").read_text() == "first build\n"
    assert (storage.os_core(20) / "etc/motd").read_text() == "second build\n"
    # the task said where the repository is and reported progress to BitBake's UI
    assert f"published version 20 in {storage.root}/www" in published["second"].output
    assert "PROGRESS: do_swupd_repo: 100%" in published["second"].output
    # SWUPD_REPO_REPORT (on by default): the report of both versions beside www/
    report = json.loads((storage.root / "report.json").read_text())
    assert [v["version"] for v in report["versions"]] == [10, 20]
    assert [u["from_version"] for u in report["updates"]] == [10]
    assert 'data-plot="download-to-latest"' in (storage.root / "report.html").read_text()


def test_stored_tree_keeps_owners_devices_and_xattrs_in_its_record(published):
    """No pseudo database holds them: the record does, and the files on disk are plain."""
    storage = storage_of(built(published))
    root = storage.os_core(20)
    record = treemeta.load(root)
    assert record is not None
    home, notes, null = (record.get(p) for p in ("/home/ostro", "/home/ostro/notes",
                                                 "/dev/null"))
    assert (home.uid, home.gid, stat.S_IMODE(home.mode), stat.S_ISDIR(home.mode)) == \
        (1000, 1000, 0o700, True)
    assert (notes.uid, notes.gid, stat.S_IMODE(notes.mode)) == (1000, 1000, 0o644)
    assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.mode) == 0o666
    assert record.get("/usr/bin/hello").xattrs == {b"security.SMACK64": b"System"}
    st = os.lstat(root / "dev/null")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0  # an empty placeholder
    assert os.listxattr(root / "usr/bin/hello") == []
    assert os.lstat(root / "home/ostro").st_uid == os.getuid()


def test_the_layout_the_image_deploys_under_its_name_is_used(published):
    """The bed's image class deploys only ${IMAGE_NAME}-disk-layout.json, as image-dsk does."""
    log = task_log(built(published), "do_swupd_repo")
    deploy = published["builddir"] / "tmp/deploy/images" / bed.MACHINE
    assert f"disk layout: {deploy}/ostro-image-{bed.MACHINE}-1.0-r0-disk-layout.json" in log


def manifest_lines(storage: Storage, version: int) -> dict[str, list[str]]:
    """path -> [flags, hash, version] of ``www/<version>/Manifest.os-core``."""
    lines = {}
    for line in (storage.www(version) / "Manifest.os-core").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[3].startswith("/"):
            lines[fields[3]] = fields[:3]
    return lines


def built(published: dict) -> Path:
    """The build directory after both builds; the failure tests start from version 20."""
    assert published["second"].ok, "the two publishing builds failed; see the test above"
    return published["builddir"]


def failing_build(builddir: Path, local_conf: str) -> tuple[bed.BuildResult, str]:
    before = snapshot(storage_of(builddir).root)
    bed.set_local_conf(builddir, local_conf)
    result = bed.bitbake(builddir)
    assert not result.ok, result.output
    assert "do_swupd_repo failed" in result.output
    assert snapshot(storage_of(builddir).root) == before
    return result, task_log(builddir, "do_swupd_repo")


def test_bad_layout_json_fails_with_the_file_named(published):
    builddir = built(published)
    bad = builddir / "bad-layout.json"
    bad.write_text('{"partition_01_rootfs": {"name": "rootfs",\n')
    _, log = failing_build(builddir, f'SWUPD_REPO_DISK_LAYOUT = "{bad}"\n')
    assert f"{bad} is not valid JSON" in log and "at line 2 column 1" in log


def test_dsk_without_the_partition_fails(published):
    builddir = built(published)
    dsk = builddir / "two-partitions.dsk"
    with open(dsk, "wb") as f:
        f.truncate(4 * MIB)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:4095", "-c", "1:efi", "-n", "2:4096:6143",
                    "-c", "2:swap", str(dsk)], check=True, capture_output=True)
    _, log = failing_build(builddir, f'SWUPD_REPO_DISK_IMAGE = "{dsk}"\n')
    assert f"{dsk} has no partition 3" in log


def test_os_version_not_above_latest_fails_naming_os_version(published):
    _, log = failing_build(built(published), 'OS_VERSION = "20"\n')
    assert "OS_VERSION" in log
    assert "not greater than the latest published version 20" in log


def test_stale_image_fails_naming_os_version(published):
    builddir = built(published)
    _, log = failing_build(builddir, f'SWUPD_REPO_DISK_IMAGE = "{builddir / "build1.dsk"}"\n')
    assert "VERSION_ID=10" in log
    assert 'OS_VERSION = "30"' in log


def test_a_fakeroot_publish_fails_as_with_oe_core_pseudo(tmp_path):
    """The bed reproduces issue 11's first failure: a [fakeroot] do_swupd_repo (the class
    before storage records) writes the storage, which OE-core's PSEUDO_INCLUDE_PATHS leaves
    out, so OE-core's pseudo cannot fake its owners. The very first build failed so."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copytree(bed.LAYER, checkout / "meta-swupd-repo")
    (checkout / "lib").symlink_to(REPO / "lib")
    (checkout / "conf").symlink_to(REPO / "conf")
    bbclass = checkout / "meta-swupd-repo/classes/swupd-repo.bbclass"
    bbclass.write_text(bbclass.read_text() + 'do_swupd_repo[fakeroot] = "1"\n')
    builddir = bed.make_builddir(tmp_path / "build")
    layers = builddir / "conf/bblayers.conf"
    layers.write_text(layers.read_text().replace(str(bed.LAYER), str(checkout / "meta-swupd-repo")))
    result = bed.bitbake(builddir)
    assert not result.ok
    assert f"do_swupd_repo is [fakeroot] but sets owners in {storage_of(builddir).root}, " \
        "outside PSEUDO_INCLUDE_PATHS" in result.output
    assert storage_of(builddir).latest() == 0


# ---------------------------------------------------------------- the docker backend


@pytest.mark.docker
def test_docker_backend_publishes_from_inside_bitbake(tmp_path, server_image):
    """SWUPD_REPO_BACKEND = "docker": do_swupd_repo runs our container through the engine.

    DOCKER_HOST comes from the environment bitbake was started in: the task's own environment
    is emptied like bitbake-worker does, so the class takes it from BB_ORIGENV.
    """
    assert os.environ.get("DOCKER_HOST"), "the engine fixture needs DOCKER_HOST"
    conf = f'SWUPD_REPO_BACKEND = "docker"\nSWUPD_REPO_DOCKER_IMAGE = "{server_image}"\n'
    builddir = bed.make_builddir(tmp_path, conf)
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    storage = storage_of(builddir)
    assert storage.published_versions() == [10]
    assert storage.latest_image_marker.read_text() == "10\n"
    assert storage.latest_www_marker.read_text() == "10\n"
    log = task_log(builddir, "do_swupd_repo")
    assert f"building version 10 in container {server_image}" in log
    assert "container: " in log
    assert version_id(storage.os_core(10) / "usr/lib/os-release") == "10"

    # a second build: the first one's copy for the container left the storage sound
    bed.set_local_conf(builddir, conf + 'IMAGE_MOTD = "second build"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    assert storage.published_versions() == [10, 20]
    assert storage.latest_www_marker.read_text() == "20\n"
    assert (storage.os_core(20) / "etc/motd").read_text() == "second build\n"
    manifest = (storage.www(20) / "Manifest.os-core").read_text()
    # (the stateless format leaves /etc out; os-release carries the new version)
    assert "\t20\t/usr/lib/os-release\n" in manifest and "\t10\t/usr/bin/hello\n" in manifest
    assert not [p for p in storage.root.iterdir() if p.name.startswith(".swupd-repo")]
    for version in (10, 20):
        assert record_says(storage.os_core(version)) == RECORDED


@pytest.mark.docker
def test_docker_backend_inside_bitbake_matches_native(tmp_path, server_image):
    """The container publishes the tree as its record describes it, not the bare files.

    The extraction's owners (1000), device nodes (an empty placeholder file on disk) and
    security.* xattrs exist only in the tree's metadata record. The docker backend copies the
    tree with them for the container; without that copy /home/ostro, /home/ostro/notes,
    /dev/null and /usr/bin/hello would differ from the native backend's manifest. The copy
    is gone afterwards and the stored tree and record untouched.
    """
    manifests = {}
    for backend in ("native", "docker"):
        builddir = bed.make_builddir(tmp_path / backend,
                                     f'SWUPD_REPO_BACKEND = "{backend}"\n'
                                     f'SWUPD_REPO_DOCKER_IMAGE = "{server_image}"\n')
        result = bed.bitbake(builddir)
        assert result.ok, result.output
        storage = storage_of(builddir)
        text = (storage.www(10) / "Manifest.os-core").read_text()
        manifests[backend] = [line for line in text.splitlines()
                              if not line.startswith("timestamp:")]
        # no leftovers of ours; the stream store (swupd/streamstore.py) is meant to stay
        assert not [p.name for p in storage.root.iterdir()
                    if p.name.startswith(".swupd-repo") and p.name != CACHE_DIR]
        assert record_says(storage.os_core(10)) == RECORDED
    hello = [line for line in manifests["native"] if line.endswith("\t/usr/bin/hello")]
    assert hello and "/dev/null" in "\n".join(manifests["native"])
    assert manifests["docker"] == manifests["native"]
    log = task_log(tmp_path / "docker", "do_swupd_repo")
    assert "with the owners, devices and xattrs of its metadata record" in log


# ---------------------------------------------------------------- several images, one storage


def test_two_images_in_one_build_publish_into_their_own_storages(tmp_path):
    """`bitbake ostro-image ostro-image-dev`: each image has its default storage, so both
    publish version 10, and the second build both publish 20."""
    builddir = bed.make_builddir(tmp_path, 'IMAGE_MOTD = "first"\n')
    result = bed.bitbake(builddir, ["ostro-image", "ostro-image-dev"])
    assert result.ok, result.output
    bed.set_local_conf(builddir, 'IMAGE_MOTD = "second"\n')
    result = bed.bitbake(builddir, ["ostro-image", "ostro-image-dev"])
    assert result.ok, result.output
    for image in ("ostro-image", "ostro-image-dev"):
        storage = storage_of(builddir, image)
        assert storage.published_versions() == [10, 20], image
        assert (storage.os_core(20) / "etc/motd").read_text() == "second\n"
        assert record_says(storage.os_core(20)) == RECORDED


def test_images_sharing_a_storage_on_purpose_take_turns(tmp_path):
    """One SWUPD_REPO_STORAGE_DIR for both images, each with its own OS_VERSION: the tasks
    run one after the other (the lock file beside the storage) and both versions publish."""
    shared = tmp_path / "shared-storage"
    builddir = bed.make_builddir(tmp_path / "build",
                                 f'SWUPD_REPO_STORAGE_DIR = "{shared}"\n'
                                 'OS_VERSION:pn-ostro-image = "10"\n'
                                 'OS_VERSION:pn-ostro-image-dev = "20"\n')
    result = bed.bitbake(builddir, ["ostro-image", "ostro-image-dev"])
    assert result.ok, result.output
    storage = Storage(shared)
    assert storage.published_versions() == [10, 20]
    assert storage.latest() == 20


def test_cli_publish_between_two_bitbake_builds(tmp_path, capsys):
    """BitBake publishes 10; `swupd-repo publish` (another process, no pseudo) publishes an
    image built as 20; BitBake publishes 30 from it: one history, metadata intact."""
    from swupd_repo.cli import main as cli_main

    builddir = bed.make_builddir(tmp_path, 'IMAGE_MOTD = "bitbake 10"\n')
    assert bed.bitbake(builddir).ok
    bed.set_local_conf(builddir, 'IMAGE_MOTD = "cli 20"\nSWUPD_REPO_GENERATE = "0"\n'
                                 'OS_VERSION = "20"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    storage = storage_of(builddir)
    deploy = builddir / "tmp/deploy/images" / bed.MACHINE
    assert cli_main(["publish", "--storage", str(storage.root),
                     "--dsk", str(deploy / f"ostro-image-{bed.MACHINE}.dsk"),
                     "--layout", str(deploy / f"ostro-image-{bed.MACHINE}-1.0-r0-disk-layout.json"),
                     "--version", "20"]) == 0
    # the report the task wrote after 10 now shows 20: the CLI publish wrote it again
    report = json.loads((storage.root / "report.json").read_text())
    assert [v["version"] for v in report["versions"]] == [10, 20]
    capsys.readouterr()
    bed.set_local_conf(builddir, 'IMAGE_MOTD = "bitbake 30"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    assert storage.published_versions() == [10, 20, 30]
    lines = {v: manifest_lines(storage, v) for v in (10, 20, 30)}
    for path in ("/usr/bin/hello", "/home/ostro/notes", "/dev/null"):
        assert lines[30][path] == lines[20][path] == lines[10][path], path
    assert lines[30]["/usr/share/ostro/release-notes"][2] == "30"
    assert (storage.www(30) / "delta" /
            f"20-30-{lines[30]['/usr/share/ostro/release-notes'][1]}").is_file()


# ---------------------------------------------------------------- storage problems at parse time


def test_an_unreadable_storage_skips_only_its_image(tmp_path):
    """A storage whose latest marker cannot be read: ostro-image is skipped with the reason,
    ostro-image-dev (its own storage) still builds. Before, parsing halted for every recipe."""
    builddir = bed.make_builddir(tmp_path)
    marker = storage_of(builddir).latest_image_marker
    marker.mkdir(parents=True)  # unreadable as a file, even for root
    result = bed.bitbake(builddir, "ostro-image-dev")
    assert result.ok, result.output
    assert storage_of(builddir, "ostro-image-dev").published_versions() == [10]
    result = bed.bitbake(builddir, "ostro-image")
    assert not result.ok
    assert f"Nothing PROVIDES 'ostro-image' (ostro-image was skipped: cannot read {marker}: " \
        "Is a directory)" in result.output
    assert "Parsing halted" not in result.output


def test_an_unusable_storage_location_names_the_variable(tmp_path):
    builddir = bed.make_builddir(tmp_path)
    bad = builddir / "conf" / "local.conf" / "storage"
    bed.set_local_conf(builddir, f'SWUPD_REPO_STORAGE_DIR = "{bad}"\n')
    result = bed.bitbake(builddir)
    assert not result.ok
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.output
    assert f"SWUPD_REPO_STORAGE_DIR {bad} cannot be used: {bad.parent} is not a directory" \
        in errors[0]
    assert "set SWUPD_REPO_STORAGE_DIR in local.conf" in errors[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- after the published builds


def test_clean_then_build_publishes_deltas_from_the_earlier_version(published):
    """rm_work/cleanall remove the recipe's WORKDIR, pseudo database included; the storage
    keeps every stored tree's owners and xattrs in its records, so the next build keeps the
    unchanged files' hashes and makes a delta, carrying owner and label, from version 20."""
    from swupd_repo.swupd.delta import apply_delta
    from swupd_repo.swupd.hashing import hash_bytes

    builddir = built(published)
    shutil.rmtree(builddir / "tmp/work" / bed.MACHINE / "ostro-image")
    shutil.rmtree(builddir / "tmp/stamps" / bed.MACHINE / "ostro-image")
    bed.set_local_conf(builddir, 'IMAGE_MOTD = "third build"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    storage = storage_of(builddir)
    assert storage.published_versions() == [10, 20, 30]
    old, new = manifest_lines(storage, 20), manifest_lines(storage, 30)
    for path in ("/usr/bin/hello", "/home/ostro", "/home/ostro/notes", "/dev/null"):
        assert new[path] == old[path], path  # same hash, same last change
    notes = "/usr/share/ostro/release-notes"
    assert new[notes][2] == "30" and old[notes][2] == "20"
    delta = storage.www(30) / "delta" / f"20-30-{new[notes][1]}"
    assert delta.is_file(), sorted(p.name for p in (storage.www(30) / "delta").iterdir())
    data, mode, uid, gid = apply_delta(delta.read_bytes(),
                                       (storage.os_core(20) / notes[1:]).read_bytes())
    assert (uid, gid, stat.S_IMODE(mode)) == (1000, 1000, 0o644)
    label = {b"security.SMACK64": b"User"}
    assert hash_bytes(mode, uid, gid, 0, len(data), label, data) == new[notes][1]
    assert b"third build" in data
    with tarfile.open(storage.www(30) / "pack-os-core-from-20.tar") as pack:
        assert f"delta/{delta.name}" in pack.getnames()


def test_the_release_gate_runs_inside_the_task_without_network(tmp_path):
    """SWUPD_REPO_CHECK = "1": do_swupd_repo has no [network] (the bed runs it in a new network
    namespace, as bitbake-worker does), yet the simulated install and update 10 -> 20 run."""
    builddir = bed.make_builddir(tmp_path, 'SWUPD_REPO_CHECK = "1"\nIMAGE_MOTD = "one"\n')
    assert parse(builddir)["network"] == []
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    bed.set_local_conf(builddir, 'SWUPD_REPO_CHECK = "1"\nIMAGE_MOTD = "two"\n')
    result = bed.bitbake(builddir)
    assert result.ok, result.output
    log = task_log(builddir, "do_swupd_repo")
    assert "update 10 -> 20: " in log and "; 0 problems" in log
    assert "running the update simulation under pseudo" in log
    assert "1 deltas (0 fell back)" in log  # the release notes, owner and label included
    assert "check passed: version 20" in log
    assert storage_of(builddir).published_versions() == [10, 20]
