"""The Docker engine and images the docker tests share (tests/conftest.py imports these).

Session fixtures, so the images are built once per run even when tests/test_docker_backend.py
and the BitBake bed's docker build (tests/test_layer.py) both use them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from swupd_repo.backends.docker import connect
from swupd_repo.errors import BackendError

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "debian:bookworm"
SERVER_IMAGE = "swupd-repo/server:test"


@pytest.fixture(scope="session")
def engine():
    """A client of the engine DOCKER_HOST names; skip (outside CI only) when there is none."""
    try:
        client = connect(None)
    except BackendError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a Docker engine (scripts/test starts one): {exc}")
        pytest.skip(f"no Docker engine reachable: {exc.message}; run scripts/test, which "
                    "starts a private one")
    yield client
    client.close()


def _script(*args: str) -> None:
    proc = subprocess.run([str(REPO / "scripts" / args[0]), *args[1:]], capture_output=True,
                          text=True, env=os.environ.copy())
    assert proc.returncode == 0, f"scripts/{args[0]} failed:\n{proc.stderr}"


def _prebuilt() -> bool:
    """Wait for the images scripts/test builds in the background while other tests run.

    scripts/test starts ``scripts/docker-image swupd-repo/server:test`` before pytest (the
    debootstrap base takes most of a minute on a fresh engine) and names its log in
    SWUPD_REPO_TEST_IMAGES; the exit status lands in ``<log>.rc``. True when that build
    succeeded, so the source has not changed since and the images need no rebuild.
    """
    log = os.environ.get("SWUPD_REPO_TEST_IMAGES")
    if not log:
        return False
    status = Path(log + ".rc")
    deadline = time.monotonic() + 900
    while not status.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"scripts/test's image build did not finish in 15 min; see {log}")
        time.sleep(0.5)
    code = status.read_text().strip()
    if code != "0":
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"scripts/docker-image {SERVER_IMAGE} failed (status {code}):\n{tail}")
    return True


@pytest.fixture(scope="session")
def base_image(engine) -> str:
    """debian:bookworm made offline with debootstrap (once per engine)."""
    if not _prebuilt():
        _script("docker-base-image", BASE_IMAGE)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def server_image(engine, base_image) -> str:
    """Our conf/docker/Dockerfile image, built from the current source."""
    if not _prebuilt():
        _script("docker-image", SERVER_IMAGE)
    return SERVER_IMAGE


