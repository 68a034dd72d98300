"""Path heuristics (format3 §2.5, §9.5, §9.6), checked against the flags the real server wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from swupd_repo.swupd.heuristics import keep_in_manifest, modifier, prune, refused_name
from swupd_repo.swupd.manifest import Entry, deleted_entry, parse_manifest


@pytest.mark.parametrize(("path", "flag"), [
    ("/etc/hosts", "C"), ("/etc", "."), ("/etcetera", "."),
    ("/var/lib/x", "s"), ("/var", "."), ("/dev", "."), ("/dev/null", "s"), ("/home/u", "s"),
    ("/usr/src/debug", "."), ("/usr/src/debug-thing", "s"), ("/usr/src", "."),
    ("/data", "s"), ("/database", "s"), ("/lost+found", "s"), ("/mnt/swupd/x", "s"),
    ("/boot/vmlinuz", "b"), ("/boot", "."), ("/usr/lib/kernel/vmlinuz-4.4.0", "b"),
    ("/usr/lib/modules/4.4/x.ko", "b"), ("/usr/lib/gummiboot.efi", "b"),
    ("/usr/bin/gummiboot", "b"), ("/usr/bin/hello", "."),
])
def test_modifier(path: str, flag: str) -> None:
    assert modifier(path) == flag


def test_flags_agree_with_every_reference_manifest(vectors: Path) -> None:
    """Every live entry the server wrote carries exactly the modifier we compute."""
    checked = 0
    for manifest in (vectors / "manifests").glob("*/Manifest.*"):
        if manifest.name == "Manifest.MoM":
            continue
        for e in parse_manifest(manifest.read_bytes()).entries:
            assert e.modifier == modifier(e.path), (manifest, e.path)
            checked += 1
    assert checked > 800


@pytest.mark.parametrize(("name", "refused"), [
    ("a;b", True), ("a&b", True), ("a|b", True), ("a*b", True), ("a`b", True), ("a<b", True),
    ("a>b", True), ("a\\b", True), ('a"b', True), ("a'b", True), ("+x", True),
    ("lib+package+x", True), ("a+b", False), ("file with space.txt", False),
    ("lost+found", False), ("ünï", False),
])
def test_refused_names(name: str, refused: bool) -> None:
    assert (refused_name(name) is not None) == refused


def test_prune_drops_live_config_and_deleted_boot_only() -> None:
    live_etc = Entry("F", "1" * 64, 10, "/etc/hosts", modifier="C")
    etc_dir = Entry("D", "2" * 64, 10, "/etc")
    deleted_etc = deleted_entry("/etc/old", 20, "C")
    deleted_boot = deleted_entry("/boot/old", 20, "b")
    live_boot = Entry("F", "3" * 64, 10, "/boot/vmlinuz", modifier="b")
    deleted_state = deleted_entry("/var/x", 20, "s")
    entries = [live_etc, etc_dir, deleted_etc, deleted_boot, live_boot, deleted_state]
    assert prune(entries) == [etc_dir, deleted_etc, live_boot, deleted_state]
    assert not keep_in_manifest(live_etc)
