"""User-facing errors.

Everything a user can cause (bad input, bad settings, a refused version) is a
:class:`SwupdRepoError`. It prints as one sentence saying what was wrong, where, and what to
do; the CLI exits with status 2 and the bbclass turns it into ``bb.fatal``. Any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations


class SwupdRepoError(Exception):
    """An error the user can fix. ``str()`` gives the full message including the hint."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class SettingsError(SwupdRepoError):
    """A setting (BitBake variable, YAML key or CLI flag) has an invalid value."""


class LayoutError(SwupdRepoError):
    """The disk-layout JSON is missing, malformed or does not name one rootfs partition."""


class DiskImageError(SwupdRepoError):
    """The .dsk image (MBR/GPT) is unreadable, damaged or lacks the partition."""


class Ext4Error(SwupdRepoError):
    """The ext4 filesystem in the partition is damaged or uses an unsupported feature."""


class ExtractError(SwupdRepoError):
    """The rootfs could not be written to the storage directory."""


class StorageError(SwupdRepoError):
    """The storage directory is unusable (locked, unwritable, inconsistent markers)."""


class StorageBusyError(StorageError):
    """Another run holds the storage lock (a caller may choose to wait)."""


class VersionError(SwupdRepoError):
    """The version to publish is invalid or not greater than the latest one."""


class ManifestError(SwupdRepoError):
    """A manifest could not be parsed or violates the format."""


class BuildError(SwupdRepoError):
    """The generator refused the image tree (e.g. a type change swupd cannot express)."""


class SigningError(SwupdRepoError):
    """Signing material is unreadable or a signature does not verify."""


class BackendError(SwupdRepoError):
    """A backend (native or docker) failed to produce the repository."""


class CheckError(SwupdRepoError):
    """The repository consistency check or update simulation found a problem."""


class ClientError(SwupdRepoError):
    """The client could not install, update or verify a target root."""


class BundleError(SwupdRepoError):
    """Bundle definitions do not fit the image (unknown package, a path claimed twice)."""
