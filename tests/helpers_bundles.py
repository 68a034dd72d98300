"""Multi-bundle storages for tests, built the way a user's image is published.

Each version is a real ``.dsk`` (tests/dsk.py: sgdisk + ``mkfs.ext4 -d``) extracted with
``swupd-repo extract``; the bundle split is then written directly as the stored Assignment
(``image/<V>/os-core.bundles``) and ``swupd-repo build`` publishes the version.

What this reproduces and what it does not: the extraction, the generator, the markers and the
command line are the real ones; the split is given by the test instead of being resolved from
bundle definitions (packages of the image's package database, globs), which is what a user's
publish does before the same build step. So these storages test everything downstream of the
split, not the resolution.

Also a script, for trying a client by hand::

    python3 tests/helpers_bundles.py STORAGE [WORKDIR]

makes a storage with versions 10 and 20 of :data:`TWO_BUNDLES` (editors changes at 20, debug
does not), served as ``STORAGE/www``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from helpers_trees import write_tree

#: Files (text), symlinks ("-> target") and directories (None), by path without the leading /.
Tree = Mapping[str, "str | None"]
#: Non-core bundle -> the paths it owns (manifest paths, "/usr/bin/vi").
Split = Mapping[str, "list[str] | set[str] | frozenset[str]"]

TRACKING = "usr/share/clear/bundles"


def base_tree(version: int, bundles: list[str]) -> dict[str, str | None]:
    """What every version holds: os-release saying ``version``, os-core's own files and
    the tracking files of os-core and of ``bundles`` (empty, as meta-swupd ships them)."""
    tree: dict[str, str | None] = {
        "usr": None, "usr/bin": None, "usr/lib": None, "usr/share": None,
        "usr/share/clear": None, TRACKING: None,
        "usr/lib/os-release": f"NAME=test\nVERSION_ID={version}\n",
        "usr/bin/core-tool": "core tool\n", "etc": None, "etc/hosts": "127.0.0.1 localhost\n",
        f"{TRACKING}/os-core": "",
    }
    for name in bundles:
        tree[f"{TRACKING}/{name}"] = ""
    return tree


def tracking(name: str) -> str:
    return f"/{TRACKING}/{name}"


#: Version -> (tree, split) of the two-bundle repository of the early signal: editors by
#: files, debug by a directory; editors changes at 20, debug does not.
TWO_BUNDLES: dict[int, tuple[dict[str, str | None], dict[str, list[str]]]] = {
    v: ({**base_tree(v, ["editors", "debug"]),
         "usr/bin/vi": f"vi of {v}\n", "usr/share/vim": None,
         "usr/share/vim/vimrc": "set nocompatible\n",
         "usr/bin/gdb": "gdb\n", "usr/share/gdb": None,
         "usr/share/gdb/gdbinit": "set pagination off\n"},
        {"editors": ["/usr/bin/vi", "/usr/share/vim", "/usr/share/vim/vimrc",
                     tracking("editors")],
         "debug": ["/usr/bin/gdb", "/usr/share/gdb", "/usr/share/gdb/gdbinit",
                   tracking("debug")]})
    for v in (10, 20)
}



def swupd_repo(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """The CLI as a separate process (honours PYTHONPATH, so the worktree's code runs)."""
    return subprocess.run([sys.executable, "-m", "swupd_repo.cli", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False, timeout=600)


def make_image(files: Tree, workdir: Path, name: str) -> tuple[Path, Path]:
    """(dsk, layout JSON) of a tree: ``workdir/<name>.dsk``."""
    from dsk import make_dsk

    src = write_tree(workdir / f"{name}-src", files)
    return make_dsk(src, workdir, name, rootfs_mb=8)


def publish_split(storage: Path, image: tuple[Path, Path], version: int, split: Split,
                  *build_args: str) -> subprocess.CompletedProcess:
    """Extract ``image`` as ``version``, store ``split`` as its Assignment, build it.

    Returns the build's process (the extraction must succeed); ``build_args`` go to
    ``swupd-repo build`` (e.g. ``--check``).
    """
    from swupd_repo.bundles.assignment import Assignment, write_assignment
    from swupd_repo.storage import Storage

    dsk, layout = image
    done = swupd_repo("extract", "--dsk", dsk, "--layout", layout, "--storage", storage,
                      "--version", str(version))
    assert done.returncode == 0, done.stderr
    write_assignment(Storage(storage).os_core(version),
                     Assignment({n: frozenset(p) for n, p in split.items()}))
    return swupd_repo("build", "--storage", storage, "--version", str(version), "--jobs", "1",
                      *build_args)


def publish_versions(storage: Path, workdir: Path,
                     versions: Mapping[int, tuple[Tree, Split]]) -> Path:
    """Publish each (tree, split) in version order; every build must succeed."""
    for version, (files, split) in sorted(versions.items()):
        image = make_image(files, workdir, f"image-{version}")
        done = publish_split(storage, image, version, split)
        assert done.returncode == 0, done.stderr
    return storage


def two_bundle_storage(storage: Path, workdir: Path) -> Path:
    """Versions 10 and 20 of :data:`TWO_BUNDLES` published in ``storage``."""
    return publish_versions(storage, workdir, TWO_BUNDLES)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    target = Path(sys.argv[1])
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp())
    two_bundle_storage(target, work)
    print(f"published 10 and 20 with bundles editors and debug in {target}")
