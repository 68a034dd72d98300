"""Path heuristics of swupd-server 2.53 (format3 §2.5, §9.5): flags, pruning, refused names.

Everything here depends on the manifest path alone, so it is pure and applies equally to the
new tree and to entries carried over from an old manifest.
"""

from __future__ import annotations

from collections.abc import Iterable

from .manifest import Entry

_STATE_PREFIXES = (
    "/dev/", "/home/", "/proc/", "/root/", "/run/", "/sys/", "/tmp/", "/var/", "/usr/src/",
    # prefix match without a slash, as the server's strncmp does
    "/acct", "/cache", "/data", "/lost+found", "/mnt/asec", "/mnt/obb",
    "/mnt/shell/emulated", "/mnt/swupd", "/oem", "/system/rt/audio", "/system/rt/gfx",
    "/system/rt/media", "/system/rt/wifi", "/system/etc/firmware/virtual",
)
#: The directories themselves must stay updatable, so they are exempt from ``s``.
_STATE_EXEMPT = frozenset(("/usr/src/debug", "/dev", "/home", "/proc", "/root", "/run", "/sys",
                           "/tmp", "/var"))
_BOOT_PREFIXES = ("/boot/", "/usr/lib/modules/", "/usr/lib/kernel/", "/usr/share/kernel/",
                  "/usr/lib/gummiboot", "/usr/bin/gummiboot")

#: Characters that make the server skip a name (and its subtree) with a warning (§9.5).
_REFUSED_CHARS = frozenset(";&|*`/<>\\\"'")


def is_config(path: str) -> bool:
    return path.startswith("/etc/")


def is_state(path: str) -> bool:
    if path in _STATE_EXEMPT:
        return False
    return path.startswith(_STATE_PREFIXES)


def is_boot(path: str) -> bool:
    return path.startswith(_BOOT_PREFIXES)


def modifier(path: str) -> str:
    """The third flag character: C, s or b, the later one in that order winning; else ``.``."""
    if is_boot(path):
        return "b"
    if is_state(path):
        return "s"
    if is_config(path):
        return "C"
    return "."


def refused_name(name: str) -> str | None:
    """Why the server skips a file name (with its whole subtree), or None if it is kept."""
    bad = sorted(set(name) & _REFUSED_CHARS)
    if bad:
        return f"contains {' '.join(bad)}"
    if name.startswith("+"):
        return "starts with +"
    if "+package+" in name:
        return "contains +package+"
    return None


def keep_in_manifest(entry: Entry) -> bool:
    """False for what the stateless server drops: live ``/etc/`` entries, deleted boot entries.

    Flags are recomputed from the path, so the rule holds for old entries too.
    """
    if entry.deleted:
        return not is_boot(entry.path)
    return not is_config(entry.path)


def prune(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if keep_in_manifest(e)]
