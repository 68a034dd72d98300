"""The client's own state directory: staged objects, deltas, downloads and the version it set.

The 2016 client always used the host's ``/var/lib/swupd`` (format3 §7.2), so testing against a
prefix touched the host. Here the state directory belongs to one target: by default
``<root>/var/lib/swupd`` (a state path, never in a manifest comparison), or any directory the
caller names (scratch roots, read-only media).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RELATIVE = Path("var/lib/swupd")


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def for_root(cls, root: Path, state_dir: Path | None = None) -> StateDir:
        return cls(Path(state_dir) if state_dir is not None else root / DEFAULT_RELATIVE)

    @property
    def staged(self) -> Path:
        return self.path / "staged"

    @property
    def delta(self) -> Path:
        return self.path / "delta"

    @property
    def version_file(self) -> Path:
        return self.path / "version"

    def ensure(self) -> None:
        for directory in (self.path, self.staged, self.delta):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)

    def write_version(self, version: int) -> None:
        self.version_file.write_text(f"{version}\n")
