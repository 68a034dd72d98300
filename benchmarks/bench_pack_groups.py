#!/usr/bin/env python3
"""Pack bytes and re-compressed bytes of span/piece policies, on a published zero pack's members.

Why: the pack-size target (<= 1.05x one solid ``xz -6`` stream) and the cost of random
changes (a group's stream is reused only while none of its members changed) pull against each
other; this measures both for several ``TARGET_GROUP``/``PIECE`` pairs without full builds.

For each policy ``T/P`` (KiB): the zero pack of the version as :mod:`swupd_repo.swupd.packstream`
would group it (x86 BCJ rule included), then two rounds of 5 % of the members changed at random
(a changed member moves to the end as new content, same bytes, as the generator benchmark's
edits nearly are), each written with :func:`~swupd_repo.swupd.packstream._choose` against the
streams known so far. Printed per round: pack bytes / one solid stream of a sample of the
members (``--fraction`` of the weight, in 4 MiB windows spread over the tree: every group is
really compressed), and the share of all members' fullfile bytes re-compressed besides the
changed members (on all members, no compression).

Usage: ``PYTHONPATH=$PWD/lib python3 benchmarks/bench_pack_groups.py --storage S --version 40
[--fraction 0.34] [256/64 320/320 ...]`` (a storage the generator benchmark kept, ``--keep``).
"""

from __future__ import annotations

import argparse
import dataclasses
import lzma
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from swupd_repo.swupd import packs
from swupd_repo.swupd import packstream as ps
from swupd_repo.swupd.fullfiles import padding
from swupd_repo.swupd.manifest import parse_manifest

_DATA: dict[str, bytes] = {}  # member name -> its tar bytes (forked into the workers)
_ELF: dict[str, tuple[int, bool]] = {}


def _base(name: str) -> str:
    return name.split("@")[0]


def _compress(names: tuple[str, ...]) -> int:
    data = b"".join(_DATA[_base(n)] for n in names)
    total = sum(_ELF[_base(n)][0] for n in names)
    elf = sum(_ELF[_base(n)][0] for n in names if _ELF[_base(n)][1])
    bcj = total > 0 and elf >= ps.BCJ_SHARE * total
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                             filters=ps._xz_filters(len(data), bcj)))


def _solid(names: list[str]) -> int:
    return len(lzma.compress(b"".join(_DATA[n] for n in names), format=lzma.FORMAT_XZ,
                             preset=ps.PRESET))


def _load(members: list[ps.PackMember]) -> None:
    for m in members:
        src = ps._Source(m)
        try:
            rest = src.data.read() if src.data is not None else b""
            _DATA[m.name] = src.headers + src.head + rest + padding(src.size)
            _ELF[m.name] = (src.size, ps.is_x86_elf(src.head))
        finally:
            src.close()


def _rounds(members: list[ps.PackMember], target: int, piece: int, seed: int
            ) -> list[tuple[list[list[ps.PackMember]], float]]:
    """(groups written, share of weight re-compressed besides changed members) per round."""
    ps.TARGET_GROUP, ps.PIECE = target << 10, piece << 10
    rng = random.Random(seed)
    known: set[str] = set()
    total = sum(m.weight for m in members)
    out = []
    current = list(members)
    for era in (None, 60, 70):
        if era is not None:
            changed = {id(m) for m in rng.sample(current, len(current) // 20)}
            fresh = [dataclasses.replace(m, name=f"{_base(m.name)}@{era}", era=era,
                                         cut=f"{rng.getrandbits(32):08x}")
                     for m in current if id(m) in changed]
            current = sorted([m for m in current if id(m) not in changed] + fresh,
                             key=lambda m: m.era)
        groups = ps._choose(ps.plan_spans(current), known.__contains__, era)
        made = [g for g in groups if ps.group_key(g) not in known]
        again = sum(m.weight for g in made for m in g if era is not None and m.era < era)
        known.update(ps.group_key(g) for g in groups)
        out.append((groups, again / total))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", type=Path, required=True)
    ap.add_argument("--version", type=int, required=True)
    ap.add_argument("--fraction", type=float, default=0.34)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("policies", nargs="*", default=["256/64", "256/256", "320/320", "512/256"])
    args = ap.parse_args()
    www = args.storage / "www"
    manifest = parse_manifest((www / f"{args.version}/Manifest.os-core").read_bytes())
    members = [dataclasses.replace(m, era=args.version)
               for m in packs._staged(www, packs._live(manifest))]
    window, period = 4 << 20, int((4 << 20) / args.fraction)
    sample, weight = [], 0
    for m in members:
        if weight % period < window:
            sample.append(m)
        weight += m.weight
    _load(sample)
    names = {m.name for m in sample}
    tar = sum(map(len, _DATA.values()))
    print(f"{len(members)} members, sample {len(sample)} ({tar / 2**20:.0f} MiB of tar)",
          flush=True)
    sizes: dict[tuple[str, ...], int] = {}
    with ProcessPoolExecutor() as pool:
        solid = pool.submit(_solid, [m.name for m in sample])
        print("policy KiB | pack / one solid stream, re-compressed share: v40 | 5 % | 5 % more")
        for policy in args.policies:
            target, piece = map(int, policy.split("/"))
            cells = []
            for groups, again in _rounds(members, target, piece, args.seed):
                keys = [tuple(m.name for m in g if _base(m.name) in names) for g in groups]
                keys = [k for k in keys if k]
                todo = [k for k in dict.fromkeys(keys) if k not in sizes]
                sizes.update(zip(todo, pool.map(_compress, todo, chunksize=4), strict=True))
                cells.append((sum(sizes[k] for k in keys), again))
            base = solid.result()
            print(f"{policy:>10} | " + " | ".join(f"{b / base:.3f}x {a:4.0%}" for b, a in cells),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
