"""``swupd-repo`` whose packs are written from hard links in ``packstage/``, as the
ostro-swupd-server container's ``swupd_make_pack`` writes them (a test double of that step).

Reproduces: each pack member is first staged by ``link()`` from ``www/<L>/files/<H>.tar``
(or ``www/<T>/delta/<name>``) into ``/var/lib/update/packstage/<bundle>/<from>/staged/<H>.tar``
(``.../delta/<name>``), and the pack is written from the staged links. A link that fails
(EXDEV when ``packstage`` and ``www`` are not one mount) is only logged and the member left
out, and the run still succeeds, exactly the failure the real image shows with the wrong
mounts. The staging directories are left behind, as the real scripts leave ``packstage/``.

Does not reproduce: the real pack layout (bsdtar of the staged tree); the members, their
order and their bytes are our generator's, so with all links made the packs equal the native
backend's.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from swupd_repo.cli import main
from swupd_repo.swupd import packs
from swupd_repo.swupd.packstream import PackMember

PACKSTAGE = Path("/var/lib/update/packstage")
_write_pack = packs.write_pack


def stage(member: PackMember, directory: Path) -> PackMember | None:
    """``member`` with its source hard-linked into ``directory``; None when the link fails."""
    top, _, name = member.name.partition("/")
    target = directory / top / (f"{name}.tar" if member.kind == "fullfile" else name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.path.lexists(target):
            target.unlink()
        os.link(member.source, target)
    except OSError as exc:
        print(f"swupd_make_pack: failed to link {member.source} to {target}: {exc.strerror}",
              file=sys.stderr)
        return None
    return dataclasses.replace(member, source=str(target))


def staged_write_pack(out: Path, spans: list[list[list[PackMember]]], **options: Any) -> Any:
    """:func:`~swupd_repo.swupd.packstream.write_pack` from staged links only (spans of
    pieces of members, as :func:`~swupd_repo.swupd.packstream.plan_spans` makes them)."""
    bundle, _, source = out.name.removeprefix("pack-").removesuffix(".tar").rpartition("-from-")
    directory = PACKSTAGE / bundle / source
    kept = []
    for span in spans:
        pieces = []
        for piece in span:
            members = [m if m.kind == "dir" else stage(m, directory) for m in piece]
            if present := [m for m in members if m is not None]:
                pieces.append(present)
        if pieces:
            kept.append(pieces)
    return _write_pack(out, kept, **options)

if __name__ == "__main__":
    packs.write_pack = staged_write_pack
    sys.exit(main(sys.argv[1:]))
