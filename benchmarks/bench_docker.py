#!/usr/bin/env python3
"""Container overhead of the docker backend over the native backend, on the same tree.

    DOCKER_HOST=unix://... python3 benchmarks/bench_docker.py [--files N] [--repeat R] [--build]

Publishes versions 10 and 20 (the reference rootfs trees of tests/data/vectors/basic plus N
synthetic files, a tenth of them changed in 20) into fresh storage directories, once with each
backend, and prints the times and the ratio docker / native. The docker backend runs our image
(conf/docker/Dockerfile, the same generator), so the difference is what the container costs:
engine round trips, container start, a second Python start-up, log streaming.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "data" / "vectors" / "basic"
IMAGE = "swupd-repo/server:latest"
sys.path.insert(0, str(REPO / "tests"))

from dsk import extract_rootfs_tar  # noqa: E402


def make_tree(dest: Path, version: int, files: int) -> None:
    """image/<V>/os-core: the reference rootfs plus ``files`` seeded synthetic files."""
    extract_rootfs_tar(VECTORS / f"rootfs-{version}.tar", dest)
    rng = random.Random(1)
    bulk = dest / "usr" / "share" / "bench"
    for i in range(files):
        size = rng.choice((100, 2_000, 30_000, 200_000))
        data = bytearray(rng.randbytes(size // 4) * 4)
        if version == 20 and i % 10 == 0:
            data[:16] = b"changed in v20.."
        path = bulk / f"d{i % 50:02d}" / f"f{i:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))


def run(backend: str, files: int, image: str, work: Path) -> float:
    """Seconds to publish 10 then 20 with ``backend`` into a fresh storage."""
    from swupd_repo.pipeline import build_version
    from swupd_repo.progress import NullReporter
    from swupd_repo.settings import make_settings
    from swupd_repo.storage import Storage

    storage = Storage(work / f"storage-{backend}")
    shutil.rmtree(storage.root, ignore_errors=True)
    settings = make_settings({"storage_dir": storage.root, "backend": backend,
                              "docker_image": image})
    elapsed = 0.0
    for version in (10, 20):
        make_tree(storage.os_core(version), version, files)
        started = time.perf_counter()
        build_version(settings, NullReporter(), version)
        elapsed += time.perf_counter() - started
    shutil.rmtree(storage.root)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=0, help="synthetic files added (0)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (3)")
    parser.add_argument("--image", default=IMAGE, help=f"docker image ({IMAGE})")
    parser.add_argument("--build", action="store_true",
                        help="build the image first (scripts/docker-image)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the generator keeps owners, like the container", file=sys.stderr)
        return 2
    if args.build:
        subprocess.run([str(REPO / "scripts" / "docker-image"), args.image], check=True)
    times: dict[str, list[float]] = {"native": [], "docker": []}
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        for _ in range(args.repeat):
            for backend in times:
                times[backend].append(run(backend, args.files, args.image, Path(tmp)))
    native = statistics.median(times["native"])
    docker = statistics.median(times["docker"])
    print(f"tree: reference rootfs + {args.files} files; versions 10 and 20; "
          f"median of {args.repeat}")
    print(f"native  {native:7.2f} s   ({', '.join(f'{t:.2f}' for t in times['native'])})")
    print(f"docker  {docker:7.2f} s   ({', '.join(f'{t:.2f}' for t in times['docker'])})")
    print(f"docker / native = {docker / native:.2f}  (overhead {docker - native:+.2f} s, "
          f"{(docker - native) / 2:+.2f} s per version)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
