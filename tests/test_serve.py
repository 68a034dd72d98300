"""``swupd-repo serve``: HTTP semantics, cache policy, traversal refusal, nginx equivalent, load.

Everything goes over real sockets on 127.0.0.1; traversal attempts are sent as raw request
lines so no client library can normalise them away.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import requests

from swupd_repo.serve import IMMUTABLE, NO_CACHE, nginx_config, serve_in_thread


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    root = base / "www"
    (root / "version/format3").mkdir(parents=True)
    (root / "version/format3/latest").write_text("20\n")
    (root / "20/files").mkdir(parents=True)
    (root / "20/Manifest.MoM").write_bytes(bytes(range(256)) * 40)
    (root / "20/files/abc.tar").write_bytes(b"fullfile-data")
    (base / "secret").write_text("outside www\n")
    (root / "20/leak").symlink_to(base / "secret")
    (root / "20/alias").symlink_to("Manifest.MoM")
    os.utime(root / "20/Manifest.MoM", (1456790400, 1456790400))
    return root


@pytest.fixture(scope="module")
def base(www: Path) -> Iterator[str]:
    with serve_in_thread(www) as url:
        yield url


def raw_get(base_url: str, target: str, method: str = "GET") -> http.client.HTTPResponse:
    """Send ``target`` exactly as given on the request line."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest(method, target, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def test_get_head_headers_and_cache_policy(base: str, www: Path) -> None:
    data = (www / "20/Manifest.MoM").read_bytes()
    r = requests.get(base + "20/Manifest.MoM", timeout=10)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Cache-Control"] == IMMUTABLE
    assert r.headers["ETag"]
    mtime = email.utils.parsedate_to_datetime(r.headers["Last-Modified"]).timestamp()
    assert mtime == 1456790400
    h = requests.head(base + "20/Manifest.MoM", timeout=10)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == str(len(data))
    latest = requests.get(base + "version/format3/latest", timeout=10)
    assert latest.text == "20\n" and latest.headers["Cache-Control"] == NO_CACHE


def test_ranges_and_conditional_requests(base: str, www: Path) -> None:
    data = (www / "20/Manifest.MoM").read_bytes()
    r = requests.get(base + "20/Manifest.MoM", headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert r.headers["Content-Length"] == "100"
    tail = requests.get(base + "20/Manifest.MoM", headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-10:]
    bad = requests.get(base + "20/Manifest.MoM", headers={"Range": f"bytes={len(data)}-"},
                       timeout=10)
    assert bad.status_code == 416
    first = requests.get(base + "20/files/abc.tar", timeout=10)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert requests.get(base + "20/files/abc.tar", headers={"If-None-Match": etag},
                        timeout=10).status_code == 304
    assert requests.get(base + "20/files/abc.tar", headers={"If-Modified-Since": modified},
                        timeout=10).status_code == 304


@pytest.mark.parametrize("target", [
    "/../secret", "/20/../../secret", "/%2e%2e/secret", "/20/%2e%2e/%2e%2e/secret",
    "/20/..%2f..%2fsecret", "/20/leak", "/20/missing", "/nothing/", "/20", "/20/", "/",
    "/version/format3/",
])
def test_missing_outside_and_directories_are_404(base: str, target: str) -> None:
    resp = raw_get(base, target)
    assert resp.status == 404, target
    assert b"outside www" not in resp.body  # type: ignore[attr-defined]


def test_symlink_inside_www_is_served(base: str, www: Path) -> None:
    assert raw_get(base, "/20/alias").body == (www / "20/Manifest.MoM").read_bytes()  # type: ignore[attr-defined]


def test_directory_listing_only_when_asked(www: Path) -> None:
    with serve_in_thread(www, list_directories=True) as url:
        r = requests.get(url + "20/", timeout=10)
        assert r.status_code == 200 and "Manifest.MoM" in r.text and "files" in r.text
        assert raw_get(url, "/../").status == 404


# -- nginx ---------------------------------------------------------------------------------

def test_nginx_config_is_valid_and_equivalent(www: Path, tmp_path: Path) -> None:
    """nginx accepts the block (nginx -t) and, running, applies the same policy."""
    port = free_port()
    server_block = nginx_config(www, "127.0.0.1", port)
    assert "autoindex off;" in server_block and f"root {www.resolve()};" in server_block
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{server_block}
}}
""")
    test = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)],
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path), "-g",
                             "daemon off;"], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url + "version/format3/latest")
        r = requests.get(url + "20/Manifest.MoM", headers={"Range": "bytes=0-9"}, timeout=10)
        assert r.status_code == 206 and r.headers["Cache-Control"] == IMMUTABLE
        latest = requests.get(url + "version/format3/latest", timeout=10)
        assert latest.text == "20\n" and latest.headers["Cache-Control"] == NO_CACHE
        for target in ("/20/", "/20/leak", "/../secret", "/%2e%2e/secret"):
            assert raw_get(url, target).status in (400, 403, 404), target
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=20)


# -- the command, as a real process, under load --------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_server(argv: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process on a free port; returns it and its base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def swupd_repo_serve(storage: Path) -> list[str]:
    return [sys.executable, "-m", "swupd_repo.cli", "serve", "--storage", str(storage),
            "--port", "{port}", "--quiet"]


def http_server(www: Path) -> list[str]:
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
            str(www), "{port}"]


@dataclass
class LoadResult:
    clients: int
    requests: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

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
    ``fullfiles`` fullfiles in turn; every body is compared with the file on disk."""
    result = LoadResult(clients)

    async def device(n: int) -> None:
        paths, expected = load_plan(www, fullfiles, seed=n)
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for path in paths:
                result.requests += 1
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
            result.errors.append(f"timeout: {len(pending)} clients unfinished after {timeout} s")

    start = time.monotonic()
    asyncio.run(all_devices())
    result.seconds = time.monotonic() - start
    return result


def test_cli_serves_and_survives_200_concurrent_clients(vectors: Path) -> None:
    """The real command, 200 devices x (latest + MoM + 50 fullfiles): nothing dropped."""
    proc, url = start_server(swupd_repo_serve(vectors))
    try:
        result = run_load(url, vectors / "www", clients=200, fullfiles=50, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(result.line())
    assert result.errors == []
    assert result.ok == result.requests == 200 * 52
    assert result.seconds < 60


def test_cli_print_nginx_config(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    assert main(["serve", "--storage", str(vectors), "--port", "8089",
                 "--print-nginx-config"]) == 0
    out = capsys.readouterr().out
    assert f"root {(vectors / 'www').resolve()};" in out and "listen 127.0.0.1:8089;" in out


def test_cli_refuses_missing_www(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from swupd_repo.cli import main

    assert main(["serve", "--storage", str(tmp_path)]) == 2
    assert "www does not exist" in capsys.readouterr().err


def test_copy_of_www_served_by_process_serves_bytes(vectors: Path, tmp_path: Path) -> None:
    """Big files go through sendfile: a 1 MiB file arrives intact, also in ranges."""
    storage = tmp_path / "s"
    shutil.copytree(vectors / "www", storage / "www")
    big = os.urandom(1 << 20)
    (storage / "www/20/big.bin").write_bytes(big)
    proc, url = start_server(swupd_repo_serve(storage))
    try:
        assert requests.get(url + "20/big.bin", timeout=10).content == big
        r = requests.get(url + "20/big.bin", headers={"Range": "bytes=1000-"}, timeout=10)
        assert r.status_code == 206 and r.content == big[1000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_busy_port_is_a_user_error(www: Path, base: str) -> None:
    from swupd_repo.errors import SettingsError

    port = urllib.parse.urlsplit(base).port
    with pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{port}"), \
            serve_in_thread(www, port=port):
        pass
