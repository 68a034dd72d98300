"""Backends turn ``image/<V>/os-core`` into a complete ``www/<V>``.

Contract shared by every backend (so a storage directory can switch between them):

* input: ``storage.os_core(version)`` exists and is complete; earlier ``www/<v>`` and
  ``image/<v>`` trees are the history;
* output: ``storage.www(version)`` complete (Manifest.MoM present only when everything else is);
* the backend never leaves the ``latest`` markers changed: the pipeline moves them after the
  optional check. A backend whose tool writes them itself (the container) restores them.
* on failure: raise :class:`~swupd_repo.errors.SwupdRepoError` (usually ``BackendError``) and
  leave no ``www/<V>`` behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import SettingsError

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..settings import Settings
    from ..storage import Storage


class Backend(Protocol):
    """One way of producing ``www/<version>``."""

    name: str

    def build(self, storage: Storage, version: int, settings: Settings,
              reporter: Reporter) -> None:
        """Write ``www/<version>`` from ``image/<version>/os-core``; see the module contract."""


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (``native`` or ``docker``)."""
    if name == "native":
        from .native import NativeBackend

        return NativeBackend()
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend()
    raise SettingsError(f"unknown backend {name!r}",
                        hint="set SWUPD_REPO_BACKEND to native or docker")
