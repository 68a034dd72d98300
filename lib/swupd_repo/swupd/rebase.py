"""Rebase versions (Clear's minimum version): what makes one, and how to recognise one.

A rebase version R is built with ``minversion = R`` (format3 §2.7, §8): every entry that is
present in R counts as changed in R, so every live entry of every bundle manifest (and of
``Manifest.full``) has last_change R and its fullfile in ``www/R/files``. Nothing a device
fetches to reach R or a later version then lives in a ``www/<X>`` below R, except the small
manifest files of the version the device runs; that is what lets ``prune --www-before``
retire older versions (:mod:`swupd_repo.retire`).

Deleted entries keep what the server gives them (the old last_change of an entry deleted
before R): they carry no content, so they tie nothing to an older ``www/<X>``, and a device
on a version before the deletion still sees it (its last_change is after that version).

A rebase is recognised from the published manifests, not from a side marker: version R is a
rebase when every line of ``Manifest.MoM@R`` names R and every live entry of each of those
bundle manifests has last_change R. This also holds for a version where every file happened
to change (or the first version), which is right for what it is used for: a delta pack from
before such a version would stage every file again (:func:`.packs.walk_change_points` stops
there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import BuildError


def is_rebase(www: Path, version: int) -> bool:
    """Whether ``www/<version>`` is published and is a rebase (see the module docstring)."""
    mom = _lines(www / str(version) / "Manifest.MoM")
    mom = list(mom) if mom is not None else []
    if not mom:
        return False
    names = []
    for fields in mom:
        if len(fields) != 4 or fields[2] != str(version):
            return False
        names.append(fields[3])
    return all(_all_live_at(www / str(version) / f"Manifest.{name}", version)
               for name in names)


def newest_rebase(www: Path, versions: list[int], upto: int) -> int:
    """The newest rebase among ``versions`` not after ``upto`` (0: none)."""
    for version in sorted((v for v in versions if v <= upto), reverse=True):
        if is_rebase(www, version):
            return version
    return 0


def content_retired(www: Path, version: int) -> bool:
    """Whether content that ``version``'s manifests name was retired (``prune --www-before``,
    or a killed one that started): a build on ``version`` would carry entries whose fullfiles
    are gone. That is so when it, or a version back to the newest rebase at or before it
    (whose entries it may still name), lost a zero pack its MoM names (:func:`zero_packs_gone`).
    ``--www-before V`` with the rebase after V keeps the versions between them, whose
    unchanged entries still name the retired ones' fullfiles."""
    published = sorted((int(e.name) for e in _versions(www)), reverse=True)
    if not published or not zero_packs_gone(www, published[-1]):
        return False  # a retirement starts with the oldest version: none happened
    for older in (v for v in published if v <= version):
        if zero_packs_gone(www, older):
            return True
        if is_rebase(www, older):
            return False
    return False


def refuse_a_retired_base(www: Path, version: int, previous: int) -> None:
    """Stop a build of ``version`` on ``previous`` (the version it carries entries from) when
    that names retired content; called before any backend runs, so the container gets the
    same one line as the native generator."""
    if previous and content_retired(www, previous):
        raise BuildError(f"version {version} would be built on version {previous}, whose "
                         "content was retired (prune --www-before): its unchanged files would "
                         "name fullfiles that are gone",
                         hint="build it as a rebase (--rebase, SWUPD_REPO_REBASE = \"1\")")


def zero_packs_gone(www: Path, version: int) -> bool:
    """Whether a device on ``version`` can no longer be installed from ``www``: a zero pack
    its MoM names is gone (a retirement moves packs first). Its manifests are kept."""
    mom = _lines(www / str(version) / "Manifest.MoM")
    return mom is not None and any(
        len(f) == 4 and not (www / f[2] / f"pack-{f[3]}-from-0.tar").is_file() for f in mom)


def _versions(www: Path) -> Iterator[Path]:
    """The published ``www/<V>`` (a MoM in it)."""
    try:
        entries = list(www.iterdir())
    except FileNotFoundError:
        return iter(())
    return (e for e in entries if e.name.isdigit() and (e / "Manifest.MoM").is_file())


def _all_live_at(path: Path, version: int) -> bool:
    """Every non-deleted entry of the manifest at ``path`` changed in ``version``.

    Entries are sorted by last_change ascending, so a version that is not a rebase fails on
    one of its first live entries without the rest being read."""
    lines = _lines(path)
    if lines is None:
        return False
    wanted = str(version)
    return all(f[2] == wanted for f in lines if len(f) == 4 and f[0][1:2] != "d")


def _lines(path: Path) -> Iterator[list[str]] | None:
    """The entry lines of a manifest, each split into its four fields, read only as far as
    the caller iterates (None: no such file)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _entries(f)


def _entries(f: BinaryIO) -> Iterator[list[str]]:
    with f:
        for line in f:  # the header, up to the empty line
            if line == b"\n":
                break
        for line in f:
            if line.strip():
                yield line.rstrip(b"\n").decode("utf-8", "surrogateescape").split("\t", 3)
