"""The embedded default backend: the Python format-3 generator in :mod:`swupd_repo.swupd`.

Needs no container and no root beyond reading ``image/<V>/os-core`` (owners and xattrs are
read with lstat/llistxattr). Writes ``www/<V>`` atomically and ``image/<V>/full`` as a link to
``os-core`` (see :mod:`swupd_repo.swupd.publish`); never the ``latest`` markers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..swupd.publish import build_version

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..settings import Settings
    from ..storage import Storage


class NativeBackend:
    """``www/<V>`` from ``image/<V>/os-core`` with the native generator."""

    name = "native"

    def build(self, storage: Storage, version: int, settings: Settings,
              reporter: Reporter) -> None:
        build_version(storage, version, settings, reporter)
