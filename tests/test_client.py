"""The verifying client against the real swupd-server 2.53 output, served over real HTTP.

Install 10 must give exactly rootfs-10 and update must give exactly rootfs-20 (except /etc),
with packs (deltas applied) and without (fullfiles only); verify must then find nothing.
Tampered repositories must fail with a message naming the file, leaving the target alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import lzma
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_signing import make_signer, manifest_tar, sign_www, tamper_fullfile, tar_of
from helpers_users import as_nobody
from swupd_repo.client import compare_trees, install, update, verify
from swupd_repo.client.consolidate import consolidate, update_list
from swupd_repo.client.http import DownloadLimits, Fetcher, FetchError
from swupd_repo.client.state import resolve_in_root
from swupd_repo.client.targetpath import target_path, validate
from swupd_repo.errors import ClientError
from swupd_repo.osrelease import read_version_id
from swupd_repo.progress import RecordingReporter
from swupd_repo.serve import serve_in_thread
from swupd_repo.swupd.hashing import hash_bytes, hash_path
from swupd_repo.swupd.manifest import Entry, Manifest, deleted_entry, manifest_hash, parse_manifest


def not_etc(path: str) -> bool:
    return path.startswith("/etc/")


@pytest.fixture(scope="module")
def url(vectors: Path):
    with serve_in_thread(vectors / "www") as base:
        yield base


@pytest.fixture(scope="module")
def nopack_url(vectors: Path, tmp_path_factory: pytest.TempPathFactory):
    www = tmp_path_factory.mktemp("nopack") / "www"
    shutil.copytree(vectors / "www", www, ignore=shutil.ignore_patterns("pack-*.tar"))
    with serve_in_thread(www) as base:
        yield base


@pytest.fixture
def installed10(url: str, tmp_path: Path) -> tuple[Path, Path]:
    root, state = tmp_path / "root", tmp_path / "state"
    install(url, root, 10, state_dir=state)
    return root, state


def test_install_10_gives_rootfs_10(url: str, rootfs_trees: dict[int, Path],
                                    tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    stats = install(url, root, 10, state_dir=state)
    assert compare_trees(root, rootfs_trees[10], not_etc) == []
    assert stats.packs == ["10/pack-os-core-from-0.tar"]
    assert stats.from_pack > 400 and stats.from_fullfile == 0
    assert (state / "version").read_text() == "10\n"
    report = verify(url, root)
    assert report.version == 10 and report.checked > 400 and report.mismatches == []


def test_install_without_packs_uses_fullfiles(url: str, rootfs_trees: dict[int, Path],
                                              tmp_path: Path) -> None:
    root = tmp_path / "root"
    stats = install(url, root, 10, state_dir=tmp_path / "state", packs=False)
    assert stats.packs == [] and stats.from_fullfile > 400
    assert compare_trees(root, rootfs_trees[10], not_etc) == []
    assert verify(url, root).mismatches == []


def test_update_with_packs_applies_deltas(url: str, rootfs_trees: dict[int, Path],
                                          installed10: tuple[Path, Path]) -> None:
    root, state = installed10
    reporter = RecordingReporter()
    stats = update(url, root, state_dir=state, reporter=reporter)
    assert (stats.from_version, stats.to_version) == (10, 20)
    assert stats.packs == ["20/pack-os-core-from-10.tar"]
    assert stats.deltas_applied > 0 and stats.deltas_failed == 0, reporter.warnings
    assert stats.deleted > 0
    assert compare_trees(root, rootfs_trees[20], not_etc) == []
    assert read_version_id(root)[0] == 20
    assert verify(url, root).mismatches == []
    # a second update has nothing to do
    again = update(url, root, state_dir=state)
    assert (again.installed, again.requests) == (0, 1)


def test_update_without_packs_uses_fullfiles(nopack_url: str, rootfs_trees: dict[int, Path],
                                             installed10: tuple[Path, Path]) -> None:
    root, state = installed10
    stats = update(nopack_url, root, state_dir=state)
    assert stats.packs == [] and stats.deltas_applied == 0
    assert stats.from_fullfile > 0
    assert compare_trees(root, rootfs_trees[20], not_etc) == []
    assert verify(nopack_url, root).mismatches == []


def test_update_to_explicit_version(url: str, installed10: tuple[Path, Path]) -> None:
    root, state = installed10
    stats = update(url, root, to=10, state_dir=state)
    assert stats.installed == 0 and read_version_id(root)[0] == 10


def test_verify_reports_local_changes_and_cli_exits_1(
        url: str, installed10: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = installed10
    (root / "usr/bin/cap-ping").write_bytes(b"changed\n")
    (root / "usr/share/empty-file").unlink()
    # §9.6: boot and state files are not verified
    (root / "usr/lib/modules/4.4.0/mod.ko").write_bytes(b"rebuilt\n")
    (root / "var/lib/state-file").write_bytes(b"runtime state\n")
    # §9.1: an xattr the device added is a mismatch
    os.setxattr(root / "usr/bin/prog03", "user.added", b"1")
    report = verify(url, root)
    assert [m.path for m in report.mismatches] == ["/usr/bin/cap-ping", "/usr/bin/prog03",
                                                   "/usr/share/empty-file"]
    assert report.mismatches[2].actual is None
    rc = _run_cli(["client", "verify", "--path", str(root), "--url", url])
    out = capsys.readouterr().out
    assert rc == 1 and "/usr/bin/cap-ping" in out and "3 mismatches" in out


def test_cli_install_update_verify(url: str, rootfs_trees: dict[int, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    assert _run_cli(["client", "install", "--version", "10", "--path", str(root),
                     "--url", url]) == 0
    # default state dir lives inside the target, under a state path
    assert (root / "var/lib/swupd/version").read_text() == "10\n"
    assert _run_cli(["client", "update", "--path", str(root), "--url", url]) == 0
    assert _run_cli(["client", "verify", "--path", str(root), "--url", url]) == 0
    assert "0 mismatches" in capsys.readouterr().out
    outside_state = lambda p: not_etc(p) or p.startswith("/var/lib/")  # noqa: E731
    assert compare_trees(root, rootfs_trees[20], outside_state) == []


def test_cli_update_reports_one_complete_summary(url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The counters are final before anything prints them: stderr once said "0 requests,
    0 bytes" while stdout said "6 requests, 2991 bytes" for the same update."""
    root = tmp_path / "root"
    install(url, root, 10)
    capsys.readouterr()
    assert _run_cli(["client", "update", "--path", str(root), "--url", url]) == 0
    captured = capsys.readouterr()
    figures = re.findall(r"([0-9]+) requests, ([0-9]+) bytes", captured.out + captured.err)
    assert len(set(figures)) == 1 and figures[0][0] != "0", captured
    assert "10 -> 20: " in captured.out


def _run_cli(argv: list[str]) -> int:
    from swupd_repo.cli import main

    return main(argv)


# -- tampering ----------------------------------------------------------------------------

@pytest.fixture
def www_copy(vectors: Path, tmp_path: Path) -> Path:
    www = tmp_path / "www"
    shutil.copytree(vectors / "www", www)
    return www


def rewrite_manifest(www: Path, version: int, name: str, edit) -> bytes:
    """Edit ``www/<v>/Manifest.<name>`` (plain and tar); returns the new plain bytes."""
    plain = edit((www / str(version) / f"Manifest.{name}").read_bytes())
    (www / str(version) / f"Manifest.{name}").write_bytes(plain)
    (www / str(version) / f"Manifest.{name}.tar").write_bytes(manifest_tar(plain, name))
    return plain


def fix_mom(www: Path, version: int, bundle_plain: bytes) -> None:
    """Make the MoM at ``version`` vouch for an edited os-core manifest (a consistent forgery)."""
    def edit(data: bytes) -> bytes:
        mom = parse_manifest(data)
        mom.entries = [e.with_(hash=manifest_hash(bundle_plain)) if e.path == "os-core" else e
                       for e in mom.entries]
        return mom.to_bytes()
    rewrite_manifest(www, version, "MoM", edit)


def entry_of(www: Path, version: int, path: str) -> Entry:
    manifest = parse_manifest((www / str(version) / "Manifest.os-core").read_bytes())
    return manifest.by_path()[path]


def test_tampered_fullfile_fails_update_and_leaves_target(www_copy: Path,
                                                          installed10: tuple[Path, Path]) -> None:
    root, state = installed10
    for pack in www_copy.glob("*/pack-*.tar"):
        pack.unlink()
    entry = entry_of(www_copy, 20, "/usr/share/will-become-file")
    tamper_fullfile(www_copy / "20/files" / f"{entry.hash}.tar")
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        update(base, root, state_dir=state)
    assert f"20/files/{entry.hash}.tar" in str(err.value)
    assert "hashes to" in str(err.value)
    assert read_version_id(root)[0] == 10  # nothing was installed
    assert not (root / "usr/share/newprog").exists()


def test_fullfile_with_wrong_member_name_fails(www_copy: Path, tmp_path: Path) -> None:
    entry = entry_of(www_copy, 10, "/usr/bin/cap-ping")
    path = www_copy / "10/files" / f"{entry.hash}.tar"
    with tarfile.open(path, "r:*") as tar:
        member = tar.getmembers()[0]
        data = tar.extractfile(member).read()
    member.name = "./" + entry.hash + "-other"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        out.addfile(member, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state", packs=False)
    assert f"10/files/{entry.hash}.tar" in str(err.value) and "exactly one member" in str(err.value)


def test_manifest_entry_with_wrong_hash_fails(www_copy: Path, tmp_path: Path) -> None:
    wrong = "ab" * 32

    def edit(data: bytes) -> bytes:
        m = parse_manifest(data)
        m.entries = [e.with_(hash=wrong) if e.path == "/usr/share/xattr-dir/f7" else e
                     for e in m.entries]
        return m.to_bytes()
    fix_mom(www_copy, 10, rewrite_manifest(www_copy, 10, "os-core", edit))
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state")
    assert f"10/files/{wrong}.tar" in str(err.value)
    assert not (tmp_path / "root/usr").exists()  # failed before touching the target


def test_mom_line_with_wrong_hash_fails(www_copy: Path, tmp_path: Path) -> None:
    fix_mom(www_copy, 10, b"not the manifest")
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state")
    assert "10/Manifest.os-core.tar" in str(err.value) and "MoM says" in str(err.value)


def test_missing_zero_pack_fails_install(www_copy: Path, tmp_path: Path) -> None:
    (www_copy / "10/pack-os-core-from-0.tar").unlink()
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state")
    assert "10/pack-os-core-from-0.tar" in str(err.value) and "404" in str(err.value)


def test_tampered_pack_member_fails(www_copy: Path, tmp_path: Path) -> None:
    pack = www_copy / "10/pack-os-core-from-0.tar"
    with tarfile.open(pack, "r:*") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            if data is not None and m.size > 10 and not getattr(out, "_done", False):
                data = b"X" + data[1:]
                out._done = True  # type: ignore[attr-defined]
                victim = m.name
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    pack.write_bytes(buf.getvalue())
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state")
    assert "10/pack-os-core-from-0.tar" in str(err.value) and victim in str(err.value)


def test_a_fullfile_larger_than_its_manifest_allows_is_refused(www_copy: Path,
                                                               tmp_path: Path) -> None:
    """A file changed in version 10 counts towards Manifest.os-core's contentsize there, so
    its fullfile cannot be larger than that plus tar overhead: a bigger one is refused from
    its Content-Length, before a byte of it is stored."""
    def small(data: bytes) -> bytes:
        manifest = parse_manifest(data)
        manifest.contentsize = 100
        return manifest.to_bytes()
    fix_mom(www_copy, 10, rewrite_manifest(www_copy, 10, "os-core", small))
    entry = entry_of(www_copy, 10, "/usr/bin/cap-ping")
    (www_copy / "10/files" / f"{entry.hash}.tar").write_bytes(b"\0" * (2 << 20))
    with serve_in_thread(www_copy) as base, pytest.raises(FetchError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state", packs=False)
    assert f"10/files/{entry.hash}.tar" in str(err.value)
    assert f"announces {2 << 20} bytes, more than the 1 MiB" in str(err.value)


def test_manifest_version_mismatch_fails(www_copy: Path, tmp_path: Path) -> None:
    shutil.copy(www_copy / "20/Manifest.MoM.tar", www_copy / "10/Manifest.MoM.tar")
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "state")
    assert "10/Manifest.MoM.tar" in str(err.value) and "version 20" in str(err.value)


# -- the client's own state directory -------------------------------------------------------

def link_fullfile(www: Path, version: int, target: str) -> str:
    """Publish a fullfile for a symlink to ``target`` (root-owned, no xattrs); its hash."""
    data = target.encode()
    digest = hash_bytes(stat.S_IFLNK, 0, 0, 0, len(data), {}, data)
    info = tarfile.TarInfo(digest)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info)
    (www / str(version) / "files" / f"{digest}.tar").write_bytes(buf.getvalue())
    return digest


def edit_os_core(www: Path, version: int, edit) -> None:
    """Change ``version``'s os-core entries with ``edit`` and make its MoM vouch for them, as
    a repository would publish them (unsigned: anyone on the plain-HTTP path can do this)."""
    def rewrite(data: bytes) -> bytes:
        manifest = parse_manifest(data)
        manifest.entries = edit(manifest.entries)
        return manifest.to_bytes()
    fix_mom(www, version, rewrite_manifest(www, version, "os-core", rewrite))


def test_a_symlinked_version_file_is_not_written_through(www_copy: Path, tmp_path: Path,
                                                         url: str) -> None:
    """A repository listing /var/lib/swupd/version as a link to an outside file must not get
    that file overwritten, neither at install (the entry is left alone) nor when such a link
    is already there from an older client (it is replaced, not followed)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    digest = link_fullfile(www_copy, 10, str(victim))
    edit_os_core(www_copy, 10, lambda entries: [
        *entries, Entry("L", digest, 10, "/var/lib/swupd/version")])
    root = tmp_path / "root"
    reporter = RecordingReporter()
    with serve_in_thread(www_copy) as base:
        install(base, root, 10, reporter=reporter)
    assert victim.read_text() == "precious\n"
    version_file = root / "var/lib/swupd/version"
    assert not version_file.is_symlink() and version_file.read_text() == "10\n"
    assert any("/var/lib/swupd/version" in w and "state directory" in w
               for w in reporter.warnings), reporter.warnings
    version_file.unlink()
    version_file.symlink_to(victim)  # left by a client without this protection
    update(url, root)
    assert victim.read_text() == "precious\n"
    assert not version_file.is_symlink() and version_file.read_text() == "20\n"


def test_a_symlinked_delta_dir_is_not_written_through(www_copy: Path, tmp_path: Path,
                                                      url: str,
                                                      rootfs_trees: dict[int, Path]) -> None:
    """/var/lib/swupd/delta listed as a link to an outside directory: that directory is neither
    chmodded nor given deltas, and the update still applies its deltas inside the root."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    digest = link_fullfile(www_copy, 10, str(outside))
    edit_os_core(www_copy, 10, lambda entries: [
        *entries, Entry("L", digest, 10, "/var/lib/swupd/delta")])
    root = tmp_path / "root"
    with serve_in_thread(www_copy) as base:
        install(base, root, 10)
    stats = update(url, root)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755 and list(outside.iterdir()) == []
    assert stats.deltas_applied > 0 and not (root / "var/lib/swupd/delta").is_symlink()
    skip = lambda p: not_etc(p) or p.startswith("/var/lib/swupd")  # noqa: E731
    assert compare_trees(root, rootfs_trees[20], skip) == []


def test_an_image_with_var_lib_symlinked_keeps_its_state_inside_the_root(
        www_copy: Path, tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    """A legitimate image whose /var/lib is an absolute link (here to /usr/share/xattr-dir, a
    directory of the image that no host has): the state directory is where the device itself
    would find it, ROOT/usr/share/xattr-dir/swupd, for install and update, never the host's."""
    host = Path("/usr/share/xattr-dir")
    assert not host.exists()
    digest = link_fullfile(www_copy, 10, str(host))

    def var_lib_linked(entries: list[Entry]) -> list[Entry]:
        kept = [e for e in entries if e.path != "/var/lib" and not e.path.startswith("/var/lib/")]
        return [*kept, Entry("L", digest, 10, "/var/lib")]

    for version in (10, 20):
        edit_os_core(www_copy, version, var_lib_linked)
    root = tmp_path / "root"
    state = root / "usr/share/xattr-dir/swupd"
    try:
        with serve_in_thread(www_copy) as base:
            install(base, root, 10)
            assert (root / "var/lib").readlink() == host
            assert (state / "version").read_text() == "10\n"
            stats = update(base, root)
            assert stats.to_version == 20 and stats.deltas_applied > 0
            assert (state / "version").read_text() == "20\n"
            assert verify(base, root).mismatches == []
        skip = lambda p: (not_etc(p) or p == "/var/lib" or p.startswith(("/var/lib/",  # noqa: E731
                          "/usr/share/xattr-dir/swupd")))
        assert compare_trees(root, rootfs_trees[20], skip) == []
        assert not host.exists()
    finally:
        if host.exists():
            shutil.rmtree(host)


def test_state_directory_resolves_like_a_chroot(tmp_path: Path) -> None:
    """Links on the way to the state directory are read as the target would read them:
    absolute ones from ROOT, ``..`` never above it; a loop is one line, not a hang; a file in
    the way is a ClientError naming it."""
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    (root / "var/lib").symlink_to("../../../../../../../data/lib")
    assert resolve_in_root(root, "var/lib/swupd", create=True) == root / "data/lib/swupd"
    assert (root / "data/lib/swupd").is_dir() and not (tmp_path / "data").exists()
    (root / "var/lib").unlink()
    (root / "var/lib").symlink_to("/srv/state")
    assert resolve_in_root(root, "var/lib/swupd", create=False) == root / "srv/state/swupd"
    (root / "var/lib").unlink()
    (root / "var/lib").symlink_to("lib")
    with pytest.raises(ClientError, match="more than 40 symlinks"):
        resolve_in_root(root, "var/lib/swupd", create=True)
    (root / "var/lib").unlink()
    (root / "var/lib").write_text("a file")
    with pytest.raises(ClientError, match=r"var/lib is not a directory"):
        resolve_in_root(root, "var/lib/swupd", create=True)


def test_install_refuses_a_non_empty_root(url: str, tmp_path: Path) -> None:
    """The help promises an empty root: laying a version over another tree gives a root that
    matches no version. Only a failed install's own state directory may be there already."""
    root = tmp_path / "root"
    (root / "home").mkdir(parents=True)
    with pytest.raises(ClientError, match=r"not empty \(home\).*--force"):
        install(url, root, 10)
    assert sorted(os.listdir(root)) == ["home"]
    install(url, root, 10, force=True)
    assert (root / "home").is_dir() and (root / "var/lib/swupd/version").read_text() == "10\n"
    again = tmp_path / "again"
    (again / "var/lib/swupd/staged").mkdir(parents=True)  # an interrupted install's leftovers
    install(url, again, 10)
    assert read_version_id(again)[0] == 10


# -- pure parts ----------------------------------------------------------------------------

def test_unsafe_paths_are_refused(tmp_path: Path) -> None:
    for bad in ("/usr/../etc", "relative", "/usr//bin", "/./x", "/"):
        with pytest.raises(ClientError):
            validate(bad)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("/tmp")
    assert target_path(tmp_path, "/real/x") == tmp_path / "real/x"
    with pytest.raises(ClientError, match="symlink"):
        target_path(tmp_path, "/link/x")


def test_consolidation_rules() -> None:
    h1, h2 = "1" * 64, "2" * 64
    a = Manifest(20, entries=[Entry("F", h1, 20, "/same"), Entry("F", h1, 20, "/conflict"),
                              deleted_entry("/revived", 20), Entry("F", h1, 10, "/old")])
    b = Manifest(20, entries=[Entry("F", h1, 10, "/same"), Entry("F", h2, 20, "/conflict"),
                              Entry("F", h2, 20, "/revived"),
                              Entry("F", h1, 20, "/etc/conf", modifier="C"),
                              Entry("F", h1, 20, "/var/x", modifier="s"),
                              deleted_entry("/boot/old", 20, "b")])
    merged = consolidate([a, b])
    assert merged.conflicts == ["/conflict"]
    assert merged.entries["/revived"].hash == h2
    assert merged.entries["/same"].last_change == 20
    assert [e.path for e in update_list(merged.entries, 10)] == ["/revived", "/same"]


def test_staged_objects_hash_like_the_rootfs(url: str, rootfs_trees: dict[int, Path],
                                             installed10: tuple[Path, Path]) -> None:
    """Cross-check: objects the client laid down hash exactly like the reference rootfs."""
    root, _ = installed10
    for path in ("/usr/bin/cap-ping", "/usr/bin/suid-helper", "/usr/share/xattr-dir",
                 "/usr/share/link-to-dir", "/usr/bin/smack-labeled"):
        assert hash_path(root / path[1:], path) == hash_path(rootfs_trees[10] / path[1:], path)


# -- signatures ----------------------------------------------------------------------------

def test_signatures_checked_when_a_cert_is_given(www_copy: Path, tmp_path: Path) -> None:
    good, good_pem = make_signer(tmp_path, "release")
    _, other_pem = make_signer(tmp_path, "attacker")
    with serve_in_thread(www_copy) as base, pytest.raises(ClientError) as err:
        install(base, tmp_path / "unsigned", 10, state_dir=tmp_path / "s0",
                trusted_certs=[good_pem])
    assert "10/Manifest.MoM" in str(err.value) and "not signed" in str(err.value)
    sign_www(www_copy, good)
    with serve_in_thread(www_copy) as base:
        install(base, tmp_path / "root", 10, state_dir=tmp_path / "s1", trusted_certs=[good_pem])
        assert verify(base, tmp_path / "root", trusted_certs=[good_pem]).mismatches == []
        with pytest.raises(ClientError) as err:
            install(base, tmp_path / "r2", 10, state_dir=tmp_path / "s2",
                    trusted_certs=[other_pem])
        assert "10/Manifest.MoM" in str(err.value) and "bad signature" in str(err.value)
        # a signature over other data: swap in the signature of the 20 MoM
        sig20 = www_copy / "20/Manifest.MoM.signed"
        mom10 = (www_copy / "10/Manifest.MoM").read_bytes()
        (www_copy / "10/Manifest.MoM.tar").write_bytes(
            tar_of([("Manifest.MoM", mom10), ("Manifest.MoM.signed", sig20.read_bytes())]))
        with pytest.raises(ClientError) as err:
            install(base, tmp_path / "r3", 10, state_dir=tmp_path / "s3",
                    trusted_certs=[good_pem])
        assert "10/Manifest.MoM" in str(err.value) and "bad signature" in str(err.value)


def test_delta_on_a_locally_changed_file_falls_back(url: str, rootfs_trees: dict[int, Path],
                                                    installed10: tuple[Path, Path]) -> None:
    """The delta result is hash-checked: a changed old file gives a wrong result, so the
    client takes the fullfile instead, and the tree still ends up exact."""
    root, state = installed10
    big = root / "usr/share/big.txt"
    big.write_bytes(big.read_bytes().replace(b"a", b"b", 1))
    reporter = RecordingReporter()
    stats = update(url, root, state_dir=state, reporter=reporter)
    assert stats.deltas_failed == 1 and stats.deltas_applied == 12
    assert stats.from_fullfile == 1
    assert any("/usr/share/big.txt" in w for w in reporter.warnings)
    assert compare_trees(root, rootfs_trees[20], not_etc) == []


# -- broken servers ------------------------------------------------------------------------

@contextlib.contextmanager
def raw_server(answers: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server on 127.0.0.1 answering the n-th request with ``answers[n]`` (the last one
    from then on) and closing: for answers no HTTP library would send."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    requests: list[bytes] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                requests.append(head)
                conn.sendall(answers[min(len(requests), len(answers)) - 1])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/", requests
    finally:
        stop.set()
        thread.join(timeout=10)
        sock.close()


BROKEN_ANSWERS = {
    "truncated body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50,
    "garbage status line": b"SWUPD IS GREAT\r\n\r\n",
    "bogus Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nbody",
    "no answer": b"",
}


@pytest.mark.parametrize("kind", BROKEN_ANSWERS)
def test_broken_answers_are_retried_then_reported(kind: str) -> None:
    with raw_server([BROKEN_ANSWERS[kind]]) as (base, requests):
        fetcher = Fetcher(base, retries=3, backoff=0)
        with pytest.raises(FetchError) as err:
            fetcher.get("10/Manifest.MoM.tar")
    assert f"{base}10/Manifest.MoM.tar: download failed after 3 attempts" in str(err.value)
    assert len(requests) == fetcher.requests == 3


def test_a_broken_answer_then_a_good_one_succeeds() -> None:
    good = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
    with raw_server([BROKEN_ANSWERS["truncated body"], good]) as (base, requests):
        assert Fetcher(base, backoff=0).get("x") == b"body"
    assert len(requests) == 2


@contextlib.contextmanager
def asyncio_server(answer) -> Iterator[str]:
    """An asyncio HTTP server on 127.0.0.1 in its own thread whose every answer is written by
    the coroutine ``answer(writer)`` after the request head is read: for servers that stall,
    drip or never stop, which a real server does only when broken, overloaded or hostile.
    Yields the base URL; the connection closes when ``answer`` returns or the client leaves."""
    ready = threading.Event()
    box: list = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up: that is what the tests want
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        box.extend([server, asyncio.get_running_loop(), asyncio.Event()])
        ready.set()
        await box[2].wait()
        server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{box[0].sockets[0].getsockname()[1]}/"
    finally:
        box[1].call_soon_threadsafe(box[2].set)
        thread.join(timeout=10)


async def drip(writer: asyncio.StreamWriter) -> None:
    """A byte every 50 ms of a 200-byte body: each read returns well within any per-read
    timeout, so only an overall deadline ends it (the issue's server sent one every 10 s)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
    for _ in range(200):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)


async def drip_headers(writer: asyncio.StreamWriter) -> None:
    """The same drip before the body: a header line a byte every 50 ms, so the client is still
    reading headers (inside urllib) when the deadline passes."""
    writer.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
    for _ in range(200):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(b"\r\nContent-Length: 2\r\n\r\nok")


async def endless(writer: asyncio.StreamWriter) -> None:
    """A body with no length that goes on (here up to 64 MiB, as good as endless for a
    client limited to 1 MiB; the issue's reached 1.9 GB of client memory)."""
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    block = b"y" * (1 << 16)
    for _ in range(1024):
        writer.write(block)
        await writer.drain()


HUGE_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n" + b"z" * 1000


@pytest.mark.parametrize("answer", [drip, drip_headers], ids=["body", "headers"])
def test_a_slow_drip_is_cut_off_by_the_deadline(answer) -> None:
    limits = DownloadLimits(read_timeout=2, deadline=0.5)
    with asyncio_server(answer) as base:
        fetcher = Fetcher(base, backoff=0, limits=limits)
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"not complete after 0.5 s.*abandoned"):
            fetcher.get("10/Manifest.MoM.tar")
        assert time.monotonic() - started < 5
    assert fetcher.requests == 1  # a deadline is not a passing fault: no retry


@pytest.mark.parametrize("to_file", [False, True], ids=["memory", "file"])
def test_an_endless_body_is_cut_off_at_the_limit(to_file: bool, tmp_path: Path) -> None:
    limits = DownloadLimits(max_bytes=1 << 20, max_in_memory=1 << 20)
    with asyncio_server(endless) as base:
        fetcher = Fetcher(base, backoff=0, limits=limits)
        with pytest.raises(FetchError, match=r"runs past 1 MiB"):
            if to_file:
                fetcher.fetch("10/pack-os-core-from-0.tar", tmp_path / "pack")
            else:
                fetcher.get("10/Manifest.MoM.tar")
    assert fetcher.requests == 1
    if to_file:
        assert (tmp_path / "pack").stat().st_size <= 1 << 20


def test_a_huge_content_length_is_one_line_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``Content-Length: 1000000000000000`` once made the client allocate it (MemoryError)."""
    with raw_server([HUGE_LENGTH]) as (base, _):
        with pytest.raises(FetchError, match="announces 1000000000000000 bytes"):
            Fetcher(base, backoff=0).fetch("10/pack-os-core-from-0.tar", tmp_path / "pack")
        rc = _run_cli(["client", "install", "--version", "10", "--path",
                       str(tmp_path / "root"), "--url", base])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("swupd-repo: error: ") and "announces 1000000000000000" in err[0]


def test_cli_limits_reach_the_downloads(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--download-deadline is the deadline the downloads use (a slow drip, through the CLI)."""
    with asyncio_server(drip) as base:
        rc = _run_cli(["client", "update", "--path", str(tmp_path), "--url", base,
                       "--download-deadline", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not complete after 0.3 s" in err[0], err


def test_cli_help_states_the_library_s_limits(capsys: pytest.CaptureFixture[str]) -> None:
    """The command does not import the client to register its flags: its help repeats the
    defaults, which must be the ones DownloadLimits applies."""
    with pytest.raises(SystemExit):
        _run_cli(["client", "update", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    limits = DownloadLimits()
    assert f"older fullfiles; {limits.max_bytes >> 20})" in text
    assert f"arrive ({limits.deadline:g})" in text
    assert f"retried ({limits.read_timeout:g})" in text


# -- memory ---------------------------------------------------------------------------------

def big_repository(base: Path, files: int, size: int) -> Path:
    """``www/`` of a version 10 whose zero pack holds ``files`` incompressible files of
    ``size`` bytes (a multiple of 512), laid out as the generator publishes it: manifests
    written by :mod:`swupd_repo.swupd.manifest`; the pack a tar of ``staged/<hash>`` members
    in concatenated xz streams (as the generator writes packs) with its largest dictionary,
    8 MiB, which the client's decoder must hold. The files share their random bytes and differ
    in mode, so they are distinct objects (the hash covers the mode) and the bytes are
    compressed once: xz needs seconds per 8 MiB of random data. Not made: fullfiles,
    signatures and deltas, which an install with packs does not fetch."""
    tree, www = base / "tree", base / "www"
    (tree / "usr/share/big").mkdir(parents=True)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text("NAME=big\nVERSION_ID=10\n")
    blob = os.urandom(size)
    for i in range(files):
        (tree / f"usr/share/big/blob{i}").write_bytes(blob)
        (tree / f"usr/share/big/blob{i}").chmod(0o400 + i)
    entries = []
    for path in sorted(tree.rglob("*")):
        name = "/" + str(path.relative_to(tree))
        entries.append(Entry("D" if path.is_dir() else "F", hash_path(path, name), 10, name))
    plain = Manifest(10, entries=entries).to_bytes()
    (www / "10").mkdir(parents=True)
    (www / "10/Manifest.os-core.tar").write_bytes(manifest_tar(plain, "os-core"))
    mom = Manifest(10, entries=[Entry("M", manifest_hash(plain), 10, "os-core")]).to_bytes()
    (www / "10/Manifest.MoM.tar").write_bytes(manifest_tar(mom, "MoM"))
    (www / "version/format3").mkdir(parents=True)
    (www / "version/format3/latest").write_text("10\n")

    def xz(data: bytes) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_XZ, filters=[
            {"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": 8 << 20}])

    packed_blob = xz(blob)
    with open(www / "10/pack-os-core-from-0.tar", "wb") as out, \
            tarfile.open(fileobj=io.BytesIO(), mode="w") as headers:
        for entry in entries:
            path = tree / entry.path[1:]
            info = headers.gettarinfo(path, f"staged/{entry.hash}")
            out.write(xz(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")))
            if path.is_file():
                data = path.read_bytes()
                out.write(packed_blob if data == blob else
                          xz(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)))
        out.write(xz(b"\0" * 2 * tarfile.BLOCKSIZE))
    return www


#: The issue's bound on the client's peak memory installing from a 58 MB pack.
PEAK_RSS_BOUND = 40 * 10**6


#: Runs ``sys.argv[2:]`` as a child of this small process and writes its exit code and
#: ru_maxrss (KiB) to ``sys.argv[1]``. Not from pytest directly: a child's ru_maxrss includes
#: what it shared with its parent before exec, and pytest itself is over 100 MB.
RSS_LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.executable, [sys.executable, *sys.argv[2:]], os.environ)
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def test_installing_a_58_mb_pack_stays_under_40_mb(tmp_path: Path) -> None:
    """Peak RSS (ru_maxrss of a ``swupd-repo client install`` process) with the pack served by
    ``swupd-repo serve``'s server on 127.0.0.1. Downloads stream to disk and members are
    copied in small chunks; it was 106 MB when the pack was held in memory."""
    www = big_repository(tmp_path, files=7, size=8 << 20)
    assert (www / "10/pack-os-core-from-0.tar").stat().st_size > 58 * 10**6
    root, result = tmp_path / "root", tmp_path / "result"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with serve_in_thread(www) as base:
        run = subprocess.run([sys.executable, "-c", RSS_LAUNCHER, str(result), "-m",
                              "swupd_repo.cli", "client", "install", "--version", "10",
                              "--path", str(root), "--url", base],
                             env=env, capture_output=True, text=True, timeout=600)
    code, maxrss_kib = map(int, result.read_text().split())
    assert code == 0, run.stderr
    assert "12 from packs" in run.stdout
    assert (root / "usr/share/big/blob6").stat().st_size == 8 << 20
    peak = maxrss_kib * 1024
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 10**6:.1f} MB"


# -- comparing -----------------------------------------------------------------------------

def test_compare_reads_content_every_time(tmp_path: Path) -> None:
    """A file rewritten with the same size and mtime must still compare as changed (filecmp's
    cache would say it is equal)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for tree in (a, b):
        tree.mkdir()
        (tree / "f").write_bytes(b"same bytes")
    assert compare_trees(a, b) == []
    before = os.stat(b / "f")
    (b / "f").write_bytes(b"other byte")
    os.utime(b / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert compare_trees(a, b) == ["/f: content differs (10 bytes, expected 10)"]


# -- without root --------------------------------------------------------------------------

@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may write (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="swupd-repo-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_install_without_root_says_it_needs_root(url: str, open_dir: Path) -> None:
    """chown to root fails as another user: that is not a damaged pack."""
    outcome = as_nobody(lambda: install(url, open_dir / "root", 10,
                                        state_dir=open_dir / "state"))
    assert outcome.startswith("ClientError: cannot unpack "), outcome
    assert "10/pack-os-core-from-0.tar" in outcome and "needs root" in outcome
    assert "damaged" not in outcome


def test_placing_into_an_unwritable_target_is_a_client_error(open_dir: Path) -> None:
    from swupd_repo.client.apply import place

    root = open_dir / "root"
    root.mkdir(mode=0o755)  # owned by root: others may not create names in it

    def attempt() -> None:
        staged = open_dir / "staged"
        staged.write_bytes(b"data")
        place(root, Entry("F", "0" * 64, 10, "/file"), staged)

    outcome = as_nobody(attempt)
    assert outcome.startswith(f"ClientError: cannot install /file into {root}: Permission "
                              "denied"), outcome
    assert "needs root" in outcome
