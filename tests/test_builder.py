"""Manifest building rules (format3 §2.6-§2.8) on real trees, and publishing (issue 2 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_signing import make_ca_chain
from helpers_trees import write_tree as make_tree
from swupd_repo.errors import BuildError, VersionError
from swupd_repo.pipeline import build_version
from swupd_repo.progress import RecordingReporter
from swupd_repo.settings import make_settings
from swupd_repo.storage import Storage
from swupd_repo.swupd import builder
from swupd_repo.swupd.manifest import manifest_hash, parse_manifest
from swupd_repo.swupd.scan import scan_tree


def manifests(tmp: Path, versions: list[dict[str, str | None]]) -> list[builder.Built]:
    """Build each tree in turn as versions 10, 20, ... (pure: previous state in memory)."""
    out: list[builder.Built] = []
    prev = builder.Previous()
    for i, files in enumerate(versions):
        v = 10 * (i + 1)
        recs = scan_tree(make_tree(tmp / str(v), files), RecordingReporter()).records
        built = builder.build_manifests(recs, v, prev, timestamp=1)
        out.append(built)
        core = built.bundles["os-core"]
        prev = builder.Previous(v, {"os-core": core}, built.full)
    return out


BASE = {"usr": None, "usr/lib": None, "usr/lib/os-release": "VERSION_ID=10\n",
        "usr/bin": None, "usr/bin/a": "a", "usr/bin/b": "b", "etc": None, "etc/x": "x",
        "boot": None, "boot/k": "k", "var": None, "var/s": "s"}


def _entries(built: builder.Built) -> dict[str, tuple[str, int]]:
    return {e.path: (e.flags, e.last_change) for e in built.bundles["os-core"].entries}


def test_carry_over_deleted_forever_and_pruning(tmp_path: Path) -> None:
    v2 = {**BASE, "usr/lib/os-release": "VERSION_ID=20\n", "usr/bin/c": "c"}
    del v2["usr/bin/b"], v2["boot/k"], v2["var/s"]
    v3 = {**v2, "usr/lib/os-release": "VERSION_ID=30\n"}
    b10, b20, b30 = manifests(tmp_path, [BASE, v2, v3])
    e10, e20, e30 = _entries(b10), _entries(b20), _entries(b30)
    assert "/etc/x" not in e10 and e10["/etc"] == ("D...", 10)
    assert e10["/boot/k"] == ("F.b.", 10) and e10["/var/s"] == ("F.s.", 10)
    assert e20["/usr/bin/a"] == ("F...", 10)  # unchanged keeps its version
    assert e20["/usr/bin/c"] == ("F...", 20)
    assert e20["/usr/bin/b"] == (".d..", 20)  # deleted at 20
    assert "/boot/k" not in e20  # deleted boot entries are dropped
    assert e30["/usr/bin/b"] == (".d..", 20)  # carried forever with its deletion version
    assert e20["/var/s"] == e30["/var/s"] == (".ds.", 20)  # the modifier stays (§11)
    for built in (b20, b30):
        deleted = [e for e in built.bundles["os-core"].entries if e.deleted]
        assert deleted and all(e.hash == "0" * 64 for e in deleted)
    assert b20.bundles["os-core"].previous == 10 and b20.mom.previous == 10
    assert b20.full.previous == 0
    # contentsize: changed live files by size, 1024 per changed D/L (§2.2)
    assert b10.bundles["os-core"].contentsize == (
        len("VERSION_ID=10\n") + 1 + 1 + 1 + 1 + 1024 * 6)  # os-release a b k s; 6 dirs
    assert b20.bundles["os-core"].contentsize == len("VERSION_ID=20\n") + 1
    assert b20.mom.contentsize == b20.bundles["os-core"].contentsize


def test_mom_line_is_the_hash_of_the_plain_manifest(tmp_path: Path) -> None:
    (b10,) = manifests(tmp_path, [BASE])
    (line,) = b10.mom.entries
    assert (line.flags, line.path, line.last_change) == ("M...", "os-core", 10)
    assert line.hash == manifest_hash(b10.bundle_bytes["os-core"])


def test_allowed_type_changes(tmp_path: Path) -> None:
    base = {**BASE, "usr/f2l": "x", "usr/f2d": "x", "usr/l2f": "-> a", "usr/l2d": "-> a"}
    v2 = {**BASE, "usr/lib/os-release": "2", "usr/f2l": "-> a", "usr/f2d": None,
          "usr/f2d/in": "y", "usr/l2f": "z", "usr/l2d": None}
    _, b20 = manifests(tmp_path, [base, v2])
    e = _entries(b20)
    assert e["/usr/f2l"] == ("L...", 20) and e["/usr/f2d"] == ("D...", 20)
    assert e["/usr/l2f"] == ("F...", 20) and e["/usr/l2d"] == ("D...", 20)


def test_refused_type_changes_list_every_path(tmp_path: Path) -> None:
    base = {**BASE, "usr/d1": None, "usr/d2": None}
    v2 = {**BASE, "usr/lib/os-release": "2", "usr/d1": "now a file", "usr/d2": "-> a"}
    with pytest.raises(BuildError) as info:
        manifests(tmp_path, [base, v2])
    msg = str(info.value)
    assert "/usr/d1 (directory in version 10 -> file)" in msg
    assert "/usr/d2 (directory in version 10 -> symlink)" in msg
    assert "keep a directory" in msg


def test_no_change_aborts(tmp_path: Path) -> None:
    """Deliberately stricter than 2.53, which publishes an unchanged build as a MoM that keeps
    the old os-core (§9.7): our versions always change os-release, so this is a stale tree."""
    with pytest.raises(BuildError, match="no change against version 10"):
        manifests(tmp_path, [BASE, BASE])


def test_only_etc_changed_aborts(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="/etc"):
        manifests(tmp_path, [BASE, {**BASE, "etc/x": "changed"}])


def test_full_last_change_is_raised_to_the_bundle_maximum(tmp_path: Path) -> None:
    """§2.7: Manifest.full's entry versions follow the bundle manifests in the new MoM."""
    b10 = manifests(tmp_path / "a", [BASE])[0]
    recs = scan_tree(make_tree(tmp_path / "t20", {**BASE, "usr/lib/os-release": "2"}),
                     RecordingReporter()).records
    # an old Manifest.full that claims /usr/bin/a changed at 5: the bundle says 10
    stale_full = b10.full
    stale_full.entries = [e.with_(last_change=5) if e.path == "/usr/bin/a" else e
                          for e in stale_full.entries]
    prev = builder.Previous(10, {"os-core": b10.bundles["os-core"]}, stale_full)
    b20 = builder.build_manifests(recs, 20, prev, timestamp=1)
    full = {e.path: e.last_change for e in b20.full.entries}
    assert full["/usr/bin/a"] == 10


# --- publishing through the pipeline ---------------------------------------------------------

def _storage_with(tmp_path: Path, v: int, files: dict[str, str | None]) -> Path:
    storage = tmp_path / "storage"
    make_tree(storage / "image" / str(v) / "os-core", files)
    return storage


def _settings(storage: Path, **kw: object):  # type: ignore[no-untyped-def]
    return make_settings({"storage_dir": storage, "jobs": 1, **kw})


def test_existing_version_refused_unless_forced(tmp_path: Path) -> None:
    storage = _storage_with(tmp_path, 10, BASE)
    build_version(_settings(storage), RecordingReporter(), 10)
    before = (storage / "www/10/Manifest.os-core").read_bytes()
    with pytest.raises(VersionError, match="not greater"):
        build_version(_settings(storage), RecordingReporter(), 10)
    build_version(_settings(storage, force=True), RecordingReporter(), 10)
    assert parse_manifest((storage / "www/10/Manifest.os-core").read_bytes()).entries == \
        parse_manifest(before).entries
    assert Storage(storage).latest() == 10
    # a www/<V> above latest (published by hand, or by a run whose markers were restored)
    make_tree(storage / "image/30/os-core", {**BASE, "usr/lib/os-release": "VERSION_ID=30\n"})
    (storage / "www/30").mkdir()
    (storage / "www/30/mine").write_text("keep")
    with pytest.raises(VersionError, match="www/30 already exists"):
        build_version(_settings(storage), RecordingReporter(), 30)
    assert (storage / "www/30/mine").read_text() == "keep"
    assert Storage(storage).latest() == 10
    build_version(_settings(storage, force=True), RecordingReporter(), 30)
    assert Storage(storage).latest() == 30 and not (storage / "www/30/mine").exists()


def test_failed_build_leaves_earlier_versions_untouched(tmp_path: Path) -> None:
    storage = _storage_with(tmp_path, 10, {**BASE, "usr/d": None})
    build_version(_settings(storage), RecordingReporter(), 10)
    snapshot = {p: p.read_bytes() for p in (storage / "www").rglob("*") if p.is_file()}
    make_tree(storage / "image/20/os-core", {**BASE, "usr/lib/os-release": "2", "usr/d": "f"})
    with pytest.raises(BuildError):
        build_version(_settings(storage), RecordingReporter(), 20)
    assert not (storage / "www/20").exists()
    after = {p: p.read_bytes() for p in (storage / "www").rglob("*") if p.is_file()}
    assert after == snapshot and Storage(storage).latest() == 10
    assert not [p for p in (storage / "www").iterdir() if p.name.startswith(".swupd-repo")]


def test_killed_run_leftovers_are_cleaned(tmp_path: Path) -> None:
    storage = _storage_with(tmp_path, 10, BASE)
    st = Storage(storage)
    leftover = st.temp_path(st.www_dir, "build-10")
    leftover.mkdir(parents=True)
    (leftover / "Manifest.MoM").write_text("half")
    reporter = RecordingReporter()
    build_version(_settings(storage), reporter, 10)
    assert not leftover.exists() and (storage / "www/10/Manifest.MoM").is_file()


def test_build_writes_a_hash_cache_without_racy_entries(tmp_path: Path) -> None:
    """The cache is written per version; files younger than RACY_NS are not trusted
    (reuse itself is proven in test_hashing with the racy window closed)."""
    storage = _storage_with(tmp_path, 10, BASE)
    reporter = RecordingReporter()
    build_version(_settings(storage), reporter, 10)
    assert (storage / "image/10/.hashcache.json").is_file()
    assert any("6 files hashed, 0 from the hash cache" in m for m in reporter.infos)


# --- signing ------------------------------------------------------------------------------

def test_signed_build_writes_verifiable_signatures(tmp_path: Path) -> None:
    import tarfile

    from swupd_repo.swupd.signing import verify

    key, cert, chain, passphrase = make_ca_chain(tmp_path)
    storage = _storage_with(tmp_path, 10, BASE)
    build_version(_settings(storage, signing_key=key, signing_cert=cert, signing_chain=chain,
                            signing_passphrase_file=passphrase), RecordingReporter(), 10)
    www = storage / "www/10"
    signed = ["Manifest.MoM", "Manifest.os-core", "Manifest.full", "Manifest.MoM.tar",
              "Manifest.os-core.tar", "Manifest.full.tar", "pack-os-core-from-0.tar"]
    for name in signed:
        sig = (www / f"{name}.signed").read_bytes()
        assert sig.startswith(b"-----BEGIN PKCS7-----")
        verify((www / name).read_bytes(), sig, [chain])
    verify((www / "Manifest.MoM").read_bytes(), (www / "Manifest.MoM.sig").read_bytes(),
           [chain])
    with tarfile.open(www / "Manifest.os-core.tar") as tar:
        assert tar.getnames() == ["Manifest.os-core", "Manifest.os-core.signed"]
    assert not list((www / "files").glob("*.signed"))  # fullfiles are never signed


def test_gate_refuses_signatures_that_no_longer_verify(tmp_path: Path) -> None:
    """With a check, the release gate verifies every signature against the signing cert."""
    from swupd_repo.errors import CheckError

    key, cert, chain, passphrase = make_ca_chain(tmp_path)
    signed = dict(signing_key=key, signing_cert=cert, signing_chain=chain,
                  signing_passphrase_file=passphrase, check=True)
    storage = _storage_with(tmp_path, 10, BASE)
    build_version(_settings(storage, **signed), RecordingReporter(), 10)
    bad = storage / "www/10/Manifest.os-core.signed"
    bad.write_bytes((storage / "www/10/Manifest.MoM.signed").read_bytes())
    make_tree(storage / "image/20/os-core", {**BASE, "usr/lib/os-release": "VERSION_ID=20\n"})
    with pytest.raises(CheckError) as err:
        build_version(_settings(storage, **signed), RecordingReporter(), 20)
    assert f"{bad}: bad signature" in str(err.value)
    assert Storage(storage).latest() == 10 and not (storage / "www/20").exists()


def test_wrong_passphrase_fails_before_any_output(tmp_path: Path) -> None:
    from swupd_repo.errors import SigningError

    key, cert, _chain, passphrase = make_ca_chain(tmp_path)
    passphrase.write_text("wrong\n")
    storage = _storage_with(tmp_path, 10, BASE)
    with pytest.raises(SigningError, match="passphrase"):
        build_version(_settings(storage, signing_key=key, signing_cert=cert,
                                signing_passphrase_file=passphrase), RecordingReporter(), 10)
    assert not (storage / "www").exists() or not list((storage / "www").iterdir())
    assert Storage(storage).latest() == 0


def test_build_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    storage = _storage_with(tmp_path, 10, BASE)
    assert main(["build", "--storage", str(storage), "--jobs", "1"]) == 0
    assert "published version 10" in capsys.readouterr().out
    assert Storage(storage).latest() == 10 and (storage / "www/10/Manifest.MoM").is_file()
    assert main(["build", "--storage", str(storage), "--version", "10"]) == 2  # refused
