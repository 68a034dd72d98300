"""Where a repository keeps things (format3 §1.3, §4, §5).

The generator writes these names and the client and the check look them up; one definition
keeps all three in agreement. Kept free of heavy imports: the client loads it.
"""

from __future__ import annotations

#: The bundle every device has; the others are optional beside it (format3 §7).
CORE = "os-core"
#: Where a device tracks its bundles, under its root: one empty file per bundle (format3 §7).
TRACKING_DIR = "usr/share/clear/bundles"


def tracking_path(bundle: str) -> str:
    """The manifest path of ``bundle``'s tracking file."""
    return f"/{TRACKING_DIR}/{bundle}"



def fullfile_relpath(last_change: int, digest: str) -> str:
    """``<L>/files/<H>.tar``, relative to ``www``."""
    return f"{last_change}/files/{digest}.tar"


def pack_name(bundle: str, source: int) -> str:
    """``pack-<bundle>-from-<source>.tar`` in ``www/<V>`` (source 0: the zero pack)."""
    return f"pack-{bundle}-from-{source}.tar"


def delta_name(old_change: int, new_change: int, digest: str) -> str:
    """``<F>-<T>-<H>``: the delta from the file as of F to the file H of T, in ``delta/``."""
    return f"{old_change}-{new_change}-{digest}"
