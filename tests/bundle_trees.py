"""Rootfs source trees with a package database, for bundle definitions (issue 15).

Each tree is what a package manager leaves in an image's rootfs, made by hand (no package
manager runs): the files of a few packages and the database that lists them.

* :func:`make_dpkg_tree` — a merged-``/usr`` Debian-style rootfs: ``/bin``, ``/lib``, ``/sbin``
  are symlinks into ``usr/``, and the lists in ``var/lib/dpkg/info`` name files the way
  packages built before the merge do (``/lib/libgdbx.so.1``, ``/bin/strace``), directories
  included (``/.``, ``/lib``, ``/usr/bin`` ...), one package as multiarch
  (``strace:amd64.list``), one removed package whose list is gone but whose stanza says
  ``deinstall ok config-files``; ``var/lib/dpkg/status`` in dpkg's stanza format.
* :func:`make_opkg_tree` — a Yocto-style rootfs with ``var/lib/opkg/status`` (``install user
  installed``) and ``info/<pkg>.list`` files naming files only (no directories), one line with
  opkg's tab-separated extra field.

Reproduced: the on-disk layout and the file formats our reader parses. Not reproduced: the
other files these databases hold (md5sums, control scripts, conffiles), nor the real
packages' contents; rpm's binary database is made by the real ``rpm`` tool in its own test.
"""

from __future__ import annotations

import os
from pathlib import Path


def _write(root: Path, rel: str, data: str = "", mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.chmod(path, mode)


def _common(root: Path, version: int) -> None:
    _write(root, "usr/lib/os-release", f"NAME=Ostro\nVERSION_ID={version}\n")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    _write(root, "usr/bin/sh", "#!shell\n", 0o755)
    _write(root, "usr/share/doc/base-files/copyright", "base-files copyright\n")
    _write(root, "usr/share/man/man1/sh.1", "sh manual\n")


#: dpkg lists as packages built before the /usr merge write them (/lib, /bin).
DPKG_LISTS = {
    "base-files": ["/.", "/usr", "/usr/bin", "/usr/bin/sh", "/usr/share", "/usr/share/doc",
                   "/usr/share/doc/base-files", "/usr/share/doc/base-files/copyright"],
    "gdb": ["/.", "/lib", "/lib/libgdbx.so.1", "/usr", "/usr/bin", "/usr/bin/gdb",
            "/usr/share", "/usr/share/gdb", "/usr/share/gdb/python",
            "/usr/share/gdb/python/gdb.py", "/usr/share/gdb/removed-by-postprocess"],
    "strace:amd64": ["/.", "/bin", "/bin/strace"],
}

DPKG_STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.

Package: gdb
Status: install ok installed
Architecture: amd64
Version: 13.1-3
Description: GNU Debugger

Package: strace
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 6.1-0.1

Package: oldtool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""


def _debug_tools(root: Path) -> None:
    """The files the gdb and strace packages list (the same in every database's tree)."""
    _write(root, "usr/lib/libgdbx.so.1", "gdb library\n")
    _write(root, "usr/bin/gdb", "gdb binary\n", 0o755)
    _write(root, "usr/bin/strace", "strace binary\n", 0o755)
    _write(root, "usr/share/gdb/python/gdb.py", "import gdb\n")


def _write_database(root: Path, where: str, status: str, lists: dict[str, list[str]]) -> None:
    """A dpkg or opkg database: ``status`` and one ``info/<package>.list`` per package."""
    _write(root, f"{where}/status", status)
    for package, paths in lists.items():
        _write(root, f"{where}/info/{package}.list", "".join(f"{p}\n" for p in paths))


def make_dpkg_tree(root: Path, version: int) -> Path:
    """A merged-/usr rootfs with gdb, strace and base-files in its dpkg database."""
    root.mkdir(parents=True)
    _common(root, version)
    for link in ("bin", "lib", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    _debug_tools(root)
    _write_database(root, "var/lib/dpkg", DPKG_STATUS, DPKG_LISTS)
    return root


#: opkg lists: files only; a line may carry tab-separated fields after the path.
OPKG_LISTS = {
    "busybox": ["/usr/bin/sh"],
    "gdb": ["/usr/bin/gdb\t755", "/usr/lib/libgdbx.so.1", "/usr/share/gdb/python/gdb.py"],
    "strace": ["/usr/bin/strace"],
}

OPKG_STATUS = """\
Package: busybox
Version: 1.36.1-r0
Status: install user installed
Architecture: core2-64
Installed-Time: 1700000000

Package: gdb
Version: 13.2-r0
Status: install user installed
Architecture: core2-64

Package: strace
Version: 6.3-r0
Status: install user installed
Architecture: core2-64

Package: valgrind
Version: 3.21.0-r0
Status: install user not-installed
Architecture: core2-64
"""


def make_opkg_tree(root: Path, version: int) -> Path:
    """A Yocto rootfs (package-management in IMAGE_FEATURES) with an opkg database."""
    root.mkdir(parents=True)
    _common(root, version)
    _debug_tools(root)
    _write_database(root, "var/lib/opkg", OPKG_STATUS, OPKG_LISTS)
    _write(root, "var/lib/opkg/info/valgrind.list", "/usr/bin/valgrind\n")
    return root
