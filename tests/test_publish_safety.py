"""Publishing loses nothing: a failed forced rebuild restores what was published (the release
gate's refusals are in test_builder and test_check)."""

from __future__ import annotations

from helpers_cli import publish
from helpers_trees import snapshot
from swupd_repo.storage import TEMP_PREFIX, Storage
from swupd_repo.treemeta import load, record_path


def test_failed_forced_rebuild_keeps_the_published_tree(tmp_path, vector_images) -> None:
    storage = tmp_path / "storage"
    assert publish(storage, vector_images[10]).returncode == 0
    st = Storage(storage)
    before_tree = snapshot(st.os_core(10), times=True)
    before_www = snapshot(st.www(10), times=True)
    before_record = record_path(st.os_core(10)).read_bytes()
    # Rebuilding 10 from an image that says VERSION_ID=20 fails after extraction.
    done = publish(storage, vector_images[20], "--version", "10", "--force")
    assert done.returncode == 2 and "VERSION_ID=20" in done.stderr
    assert snapshot(st.os_core(10), times=True) == before_tree
    assert snapshot(st.www(10), times=True) == before_www
    # the tree's metadata record came back with it (the failed run had written 20's)
    assert record_path(st.os_core(10)).read_bytes() == before_record
    assert load(st.os_core(10)) is not None
    assert st.latest() == 10
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
    # A forced rebuild that succeeds replaces it and leaves nothing aside.
    again = publish(storage, vector_images[10], "--version", "10", "--force")
    assert again.returncode == 0, again.stderr
    assert st.latest() == 10 and (st.www(10) / "Manifest.MoM").is_file()
    assert not list(storage.rglob(f"{TEMP_PREFIX}*"))
