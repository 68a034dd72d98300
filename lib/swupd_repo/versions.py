"""Version arithmetic: swupd versions are positive 32-bit integers that strictly increase.

Clear reserves the last digit (…8 devel, …9 reserved: the client refuses to update *from* them),
which is why builds step by 10.
"""

from __future__ import annotations

from .errors import VersionError

MAX_VERSION = 2**31 - 1


def next_version(latest: int, step: int) -> int:
    """The version of the next build: latest + step, the first build being ``step``."""
    if step <= 0:
        raise VersionError(f"version step must be positive, got {step}",
                           hint="set SWUPD_REPO_VERSION_STEP / version_step to e.g. 10")
    return latest + step


def validate_new_version(version: int, latest: int, *, force: bool = False) -> None:
    """Refuse a version a device could not update to: not positive, too big, or not above latest.

    ``force`` allows rebuilding the latest version itself, never going below it.
    """
    if not 0 < version <= MAX_VERSION:
        raise VersionError(f"version {version} is outside 1..{MAX_VERSION}",
                           hint="set OS_VERSION / --version to a positive 32-bit integer")
    if version < latest or (version == latest and not force):
        raise VersionError(
            f"version {version} is not greater than the latest published version {latest}",
            hint=f"set OS_VERSION / --version above {latest}, or leave it unset to get "
                 "latest + SWUPD_REPO_VERSION_STEP",
        )


def is_update_source(version: int) -> bool:
    """Whether a device on ``version`` may update from it (the client refuses …8 and …9)."""
    return version > 0 and version % 10 not in (8, 9)
