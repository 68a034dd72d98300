"""Bundle definitions: what a user writes to say which content goes into which bundle.

A definition names a bundle and gives its content as packages of the image (resolved through
the package database inside the extracted rootfs, :mod:`.packages`) and/or path globs in
manifest form (``/usr/share/doc/**``), resolved by :mod:`.resolve`. The same definition comes
from three places, each validated here with errors that name the place:

* BitBake: ``SWUPD_REPO_BUNDLES = "debug docs"``, ``SWUPD_REPO_BUNDLE_PACKAGES[debug] =
  "gdb strace"``, ``SWUPD_REPO_BUNDLE_GLOBS[docs] = "/usr/share/doc/**"``;
* YAML: ``bundles: {debug: {packages: [gdb, strace]}, docs: {globs: ["/usr/share/doc/**"]}}``;
* CLI: ``--bundle-packages debug=gdb,strace --bundle-globs 'docs=/usr/share/doc/**'``.

Names become file names of the repository (``Manifest.<name>``, ``pack-<name>-from-<N>.tar``,
``/usr/share/clear/bundles/<name>`` on devices), so they are restricted to letters, digits,
``-`` and ``_`` (no ``.``: ``Manifest.<a>.tar`` is bundle ``a``'s tarball) and may not be one
of the names the format itself uses (``os-core``, ``full``, ``MoM``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SettingsError

#: Names the format uses for itself: os-core is the base every other bundle includes,
#: ``Manifest.full`` and ``Manifest.MoM`` are not bundles.
RESERVED = ("os-core", "full", "MoM")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
#: Debian, opkg and rpm package names, with an optional ``:arch`` (dpkg multiarch).
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._~-]*(:[A-Za-z0-9_-]+)?\Z")


@dataclass(frozen=True)
class BundleDef:
    """One bundle: its name, the packages and the globs whose paths it claims."""

    name: str
    packages: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Where:
    """How errors name the place each part of a definition came from."""

    names: str  # e.g. "SWUPD_REPO_BUNDLES", "bundles in FILE"
    packages: str  # "{name}" is replaced by the bundle's name
    globs: str

    def of(self, template: str, name: str) -> str:
        return template.format(name=name)


BITBAKE = Where("SWUPD_REPO_BUNDLES", "SWUPD_REPO_BUNDLE_PACKAGES[{name}]",
                "SWUPD_REPO_BUNDLE_GLOBS[{name}]")
CLI = Where("--bundle-packages/--bundle-globs", "--bundle-packages {name}=...",
            "--bundle-globs {name}=...")


def yaml_where(source: str) -> Where:
    return Where(f"bundles in {source}", f"bundles.{{name}}.packages in {source}",
                 f"bundles.{{name}}.globs in {source}")


def check_name(name: str, where: str) -> None:
    if name in RESERVED or name.lower() in {r.lower() for r in RESERVED}:
        raise SettingsError(f"{where} names the bundle {name!r}, which is reserved "
                            f"({', '.join(RESERVED)} are not bundles one defines)",
                            hint="choose another name; os-core is what no bundle claims")
    if not _NAME.match(name):
        raise SettingsError(f"{where} names the bundle {name!r}, which is not a valid "
                            "bundle name",
                            hint="use 1-64 letters, digits, '-' and '_', starting with a "
                                 "letter or digit")
    if "-from-" in name:
        # pack-<bundle>-from-<N>.tar: pack-a-from-1-from-0.tar would be read as bundle a's.
        raise SettingsError(f"{where} names the bundle {name!r}, whose '-from-' would make "
                            "its packs' names (pack-<bundle>-from-<N>.tar) ambiguous",
                            hint="choose a name without '-from-'")


def check_bundle(bundle: BundleDef, where: Where) -> BundleDef:
    """Validate one definition; errors name the variable, key or flag it came from."""
    check_name(bundle.name, where.names)
    for package in bundle.packages:
        if not _PACKAGE.match(package):
            raise SettingsError(f"{where.of(where.packages, bundle.name)} holds {package!r}, "
                                "which is not a package name",
                                hint="list package names (as dpkg, opkg or rpm know them), "
                                     "separated by spaces")
    for glob in bundle.globs:
        parts = glob.split("/")
        if not glob.startswith("/") or ".." in parts or "." in parts[1:] or "\0" in glob:
            raise SettingsError(f"{where.of(where.globs, bundle.name)} holds {glob!r}, "
                                "which is not an absolute path pattern",
                                hint="write patterns as manifests name paths, e.g. "
                                     "/usr/share/doc/** (no '.' or '..' components)")
    if not bundle.packages and not bundle.globs:
        raise SettingsError(f"bundle {bundle.name!r} of {where.names} has no content",
                            hint=f"set {where.of(where.packages, bundle.name)} or "
                                 f"{where.of(where.globs, bundle.name)}")
    return bundle


def check_bundles(bundles: Iterable[BundleDef], where: Where) -> tuple[BundleDef, ...]:
    """Validate every definition and refuse a name given twice; sorted by name."""
    seen: dict[str, BundleDef] = {}
    for bundle in bundles:
        check_bundle(bundle, where)
        if bundle.name in seen:
            raise SettingsError(f"{where.names} defines the bundle {bundle.name!r} twice",
                                hint="give each bundle once")
        seen[bundle.name] = bundle
    return tuple(seen[name] for name in sorted(seen))


def _words(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings, or one string of space-separated words (BitBake style)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SettingsError(f"{where} must be a list of strings, got {value!r}")


def from_mapping(value: Any, source: str) -> tuple[BundleDef, ...]:
    """The YAML form (``{name: {packages: [...], globs: [...]}}``), or what
    ``dataclasses.asdict`` made of a Settings (a list of ``{name, packages, globs}``)."""
    where = yaml_where(source)
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, BundleDef):
                items.append(item)
            elif isinstance(item, Mapping) and "name" in item:
                items.append(BundleDef(str(item["name"]), _words(item.get("packages"), "packages"),
                                       _words(item.get("globs"), "globs")))
            else:
                raise SettingsError(f"{where.names} must map bundle names to their content, "
                                    f"got {item!r}")
        return check_bundles(items, where)
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where.names} must map bundle names to their content "
                            "(packages:, globs:), got " + type(value).__name__)
    bundles = []
    for name, spec in value.items():
        name = str(name)
        check_name(name, where.names)
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise SettingsError(f"bundles.{name} in {source} must be a mapping with "
                                "packages: and/or globs:")
        unknown = sorted(set(map(str, spec)) - {"packages", "globs"})
        if unknown:
            raise SettingsError(f"bundles.{name} in {source} has unknown key(s) "
                                f"{', '.join(unknown)}", hint="use packages: and globs:")
        bundles.append(BundleDef(name, _words(spec.get("packages"), where.of(where.packages, name)),
                                 _words(spec.get("globs"), where.of(where.globs, name))))
    return check_bundles(bundles, where)


def from_cli(packages: Iterable[str] | None, globs: Iterable[str] | None
             ) -> tuple[BundleDef, ...] | None:
    """``--bundle-packages NAME=P[,P...]`` and ``--bundle-globs NAME=G[ G...]`` (each
    repeatable, items separated by commas or spaces); None when neither flag was given."""
    if not packages and not globs:
        return None
    found: dict[str, dict[str, list[str]]] = {}
    for flag, key, values in (("--bundle-packages", "packages", packages or ()),
                              ("--bundle-globs", "globs", globs or ())):
        for value in values:
            name, sep, items = value.partition("=")
            if not sep or not name:
                raise SettingsError(f"{flag} {value!r} is not NAME=ITEMS",
                                    hint=f"write e.g. {flag} debug="
                                         + ("gdb,strace" if key == "packages"
                                            else "'/usr/share/doc/**'"))
            check_name(name, flag)
            entry = found.setdefault(name, {"packages": [], "globs": []})
            entry[key].extend(items.replace(",", " ").split())
    return check_bundles((BundleDef(n, tuple(e["packages"]), tuple(e["globs"]))
                          for n, e in found.items()), CLI)


def from_bitbake(names: str | None, packages: Mapping[str, str], globs: Mapping[str, str]
                 ) -> tuple[BundleDef, ...]:
    """``SWUPD_REPO_BUNDLES`` and its two varflag tables; a flag for an unlisted bundle is an
    error (a typo there would silently publish the content in os-core)."""
    listed = (names or "").split()
    for table, flags in (("SWUPD_REPO_BUNDLE_PACKAGES", packages),
                         ("SWUPD_REPO_BUNDLE_GLOBS", globs)):
        for name in sorted(set(flags) - set(listed)):
            raise SettingsError(f"{table}[{name}] is set, but {name} is not in "
                                "SWUPD_REPO_BUNDLES",
                                hint=f'add it: SWUPD_REPO_BUNDLES += "{name}"')
    return check_bundles((BundleDef(n, tuple((packages.get(n) or "").split()),
                                    tuple((globs.get(n) or "").split())) for n in listed),
                         BITBAKE)
