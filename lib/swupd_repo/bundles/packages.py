"""The package database inside an extracted rootfs: which paths each installed package owns.

Bundles defined by packages (``SWUPD_REPO_BUNDLE_PACKAGES``) are resolved against the image
itself, never against the build host or the build's package feeds: the database the package
manager left in the rootfs says exactly what was installed. Three kinds, as Yocto's
``PACKAGE_CLASSES`` makes them:

* dpkg: ``var/lib/dpkg/status`` (installed state) and ``var/lib/dpkg/info/<pkg>.list`` or
  ``<pkg>:<arch>.list`` (multiarch);
* opkg (Yocto's default): ``var/lib/opkg/status`` and ``var/lib/opkg/info/<pkg>.list``
  (``usr/lib/opkg`` in older images); a list line may carry a tab and a mode after the path;
* rpm: its database in ``var/lib/rpm`` (or ``usr/lib/sysimage/rpm``), read with the host's
  ``rpm --root TREE --dbpath /var/lib/rpm -ql`` (the database is binary; only rpm reads it).

Yocto removes the database unless ``package-management`` is in ``IMAGE_FEATURES``: the
errors say so. The paths returned are as the package lists them; :mod:`.resolve` maps them
through the tree's symlinks (merged ``/usr``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError

NO_DATABASE_HINT = ("keep the package database in the image (add \"package-management\" to "
                    "IMAGE_FEATURES), or define the bundle by path globs "
                    "(SWUPD_REPO_BUNDLE_GLOBS)")


def parse_status(text: str) -> dict[str, bool]:
    """A dpkg/opkg ``status`` file: package name (and ``name:arch``) -> installed.

    Stanzas are separated by blank lines; ``Status:`` is ``want flag state`` and only the
    state ``installed`` counts (``config-files``, ``half-installed`` ... do not).
    """
    found: dict[str, bool] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation of a multi-line field
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        name = fields.get("package")
        if not name:
            continue
        installed = fields.get("status", "").split()[-1:] == ["installed"]
        for key in (name, f"{name}:{fields.get('architecture', '')}"):
            found[key] = found.get(key, False) or installed
    return found


@dataclass
class ListDatabase:
    """dpkg or opkg: a ``status`` file and one ``info/<package>.list`` per package."""

    kind: str  # "dpkg" or "opkg"
    root: Path  # the tree
    directory: str  # e.g. "var/lib/dpkg", relative to the tree
    _status: dict[str, bool] | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.kind} database /{self.directory}"

    def status(self) -> dict[str, bool] | None:
        """Installed state from the status file; None when the image has none."""
        if self._status is None:
            path = self.root / self.directory / "status"
            if not path.is_file() or path.is_symlink():
                return None
            self._status = parse_status(path.read_text(errors="replace"))
        return self._status

    def files(self, package: str) -> list[str] | None:
        """Paths ``package`` installed, or None when it is not installed."""
        status = self.status()
        if status is not None and not status.get(package, False):
            return None
        info = self.root / self.directory / "info"
        name = package.split(":", 1)[0]
        candidates = [info / f"{package}.list"]
        if ":" in package:
            candidates.append(info / f"{name}.list")  # dpkg's native architecture
        else:
            candidates.extend(sorted(info.glob(f"{_escape(name)}:*.list")))
        lists = [c for c in candidates if c.is_file() and not c.is_symlink()]
        if not lists:
            return None if status is None else []  # installed, but ships no file
        paths: list[str] = []
        for path in lists[:1] if ":" in package else lists:
            for line in path.read_text(errors="surrogateescape").splitlines():
                entry = line.split("\t", 1)[0]  # opkg: "path\tmode[\ttarget]"
                if entry.startswith("/"):
                    paths.append(entry)
        return paths


def _escape(name: str) -> str:
    """``name`` for Path.glob: package names may hold ``+``, never glob characters but ``[``."""
    return name.replace("[", "[[]")


@dataclass
class RpmDatabase:
    """rpm: queried with the host's ``rpm`` tool inside the tree."""

    root: Path
    directory: str  # "var/lib/rpm" or "usr/lib/sysimage/rpm"
    kind: str = "rpm"

    @property
    def where(self) -> str:
        return f"rpm database /{self.directory}"

    def files(self, package: str) -> list[str] | None:
        rpm = shutil.which("rpm")
        if rpm is None:
            raise BundleError(f"the image's package database is rpm (/{self.directory}), and "
                              "reading it needs the rpm tool, which is not installed",
                              hint="install it (Debian: apt-get install rpm) or define the "
                                   "bundles by path globs (SWUPD_REPO_BUNDLE_GLOBS)")
        done = subprocess.run([rpm, "--root", str(self.root), "--dbpath", f"/{self.directory}",
                               "-q", "--qf", "[%{FILENAMES}\\n]", "--", package],
                              capture_output=True, text=True, errors="surrogateescape",
                              check=False)
        if done.returncode != 0:
            if "is not installed" in done.stdout + done.stderr:
                return None
            why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["failed"]
            raise BundleError(f"rpm cannot read the {self.where} of {self.root}: {why[0]}",
                              hint=NO_DATABASE_HINT)
        return [line for line in done.stdout.splitlines() if line.startswith("/")]


PackageDatabase = ListDatabase | RpmDatabase

_LIST_DATABASES = (("dpkg", "var/lib/dpkg"), ("opkg", "var/lib/opkg"), ("opkg", "usr/lib/opkg"))
_RPM_DATABASES = ("var/lib/rpm", "usr/lib/sysimage/rpm")


def find_databases(tree: Path) -> list[PackageDatabase]:
    """Every package database the rootfs holds (normally one), dpkg, opkg, then rpm."""
    found: list[PackageDatabase] = []
    for kind, directory in _LIST_DATABASES:
        base = tree / directory
        if not base.is_symlink() and ((base / "status").is_file() or (base / "info").is_dir()):
            found.append(ListDatabase(kind, tree, directory))
    for directory in _RPM_DATABASES:
        base = tree / directory
        if base.is_dir() and not base.is_symlink() and any(base.iterdir()):
            found.append(RpmDatabase(tree, directory))
    return found


def package_files(tree: Path, databases: list[PackageDatabase], bundle: str, package: str
                  ) -> list[str]:
    """The paths ``package`` installed, from the first database that has it installed."""
    if not databases:
        raise BundleError(f"bundle {bundle} names the package {package}, but the image has no "
                          "package database (looked for /var/lib/dpkg, /var/lib/opkg, "
                          "/usr/lib/opkg, /var/lib/rpm, /usr/lib/sysimage/rpm)",
                          hint=NO_DATABASE_HINT)
    for database in databases:
        files = database.files(package)
        if files is not None:
            return files
    where = ", ".join(d.where for d in databases)
    raise BundleError(f"bundle {bundle} names the package {package}, which is not installed "
                      f"in the image ({where})",
                      hint=f"install it in the image (IMAGE_INSTALL) or remove it from the "
                           f"packages of bundle {bundle}")
