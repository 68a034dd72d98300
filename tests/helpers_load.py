"""Server processes and the load generator shared by tests/test_serve.py and
benchmarks/bench_serve.py (importable as ``helpers_load``; tests/ is on ``sys.path``).

Servers are started on port 0 and report the port they bound, so no test races another
process for a "free" port.
"""

from __future__ import annotations

import asyncio
import random
import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import requests

_URL = re.compile(rb"(http://[0-9.]+:[0-9]+/)")


def wait_for(url: str, timeout: float = 20.0) -> None:
    """Until ``url`` answers (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _first_url(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first ``http://host:port/`` the process prints on stdout."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen += chunk
            if match := _URL.search(seen):
                return match.group(1).decode()
    raise RuntimeError(f"{proc.args!r} printed no URL within {timeout} s: {seen[-300:]!r}")


def start_server(argv: list[str], timeout: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process told to bind port 0; returns it and the base URL it printed,
    once that URL answers."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        url = _first_url(proc, timeout)
        wait_for(url, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def swupd_repo_serve(storage: Path) -> list[str]:
    """``swupd-repo serve`` on an ephemeral port (it prints ``serving ... on URL``)."""
    return [sys.executable, "-m", "swupd_repo.cli", "serve", "--storage", str(storage),
            "--port", "0", "--quiet"]


def http_server(www: Path) -> list[str]:
    """``python -m http.server`` on an ephemeral port, unbuffered so its URL line arrives."""
    return [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
            str(www), "0"]


@dataclass
class LoadResult:
    clients: int
    requests: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    finished: bool = True

    def line(self) -> str:
        rate = self.ok / self.seconds if self.seconds else 0
        lat = sorted(self.latencies) or [0.0]
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"{self.clients} clients: {self.ok}/{self.requests} correct, "
                f"{len(self.errors)} failed, {self.seconds:.2f} s, {rate:.0f} req/s, "
                f"latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms "
                f"max {lat[-1] * 1000:.0f} ms")


def load_plan(www: Path, fullfiles: int, seed: int = 3) -> tuple[list[str], dict[str, bytes]]:
    """Paths one client fetches (latest, a MoM, ``fullfiles`` fullfiles) and expected bodies."""
    files = sorted((www / "10/files").iterdir())
    rng = random.Random(seed)
    picks = rng.sample(files, min(fullfiles, len(files)))
    paths = ["version/format3/latest", "20/Manifest.MoM.tar",
             *(f"10/files/{p.name}" for p in picks)]
    return paths, {p: (www / p).read_bytes() for p in paths}


def run_load(base_url: str, www: Path, clients: int = 200, fullfiles: int = 50,
             timeout: float = 120.0) -> LoadResult:
    """``clients`` concurrent devices, each with its own connection, fetching latest, a MoM and
    ``fullfiles`` fullfiles in turn; every body is compared with the file on disk. Stops after
    ``timeout`` seconds (``finished`` is then False)."""
    result = LoadResult(clients, requests=clients * (fullfiles + 2))

    async def device(n: int) -> None:
        paths, expected = load_plan(www, fullfiles, seed=n)
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for path in paths:
                began = time.monotonic()
                try:
                    async with session.get(base_url + path) as resp:
                        body = await resp.read()
                        if resp.status != 200 or body != expected[path]:
                            result.errors.append(f"{path}: HTTP {resp.status}, {len(body)} B")
                            continue
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    result.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                result.ok += 1
                result.latencies.append(time.monotonic() - began)

    async def all_devices() -> None:
        tasks = [asyncio.ensure_future(device(n)) for n in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            result.finished = False
            result.errors.append(f"timeout: {len(pending)} clients unfinished after {timeout} s")

    start = time.monotonic()
    asyncio.run(all_devices())
    result.seconds = time.monotonic() - start
    return result
