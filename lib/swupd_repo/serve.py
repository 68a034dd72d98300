"""A concurrent static server for ``www/``, fit for a fleet (and for ``check``'s real HTTP).

``python -m http.server`` handles one request at a time and drops connections when busy. This
is aiohttp: asyncio, sendfile, and :class:`aiohttp.web.FileResponse` for byte ranges,
Content-Length, ETag and Last-Modified with conditional requests. We add what swupd needs:

* ``Cache-Control: no-cache`` on ``version/<format>/latest``: it moves on every publish, so
  caches must revalidate it;
* ``public, max-age=31536000, immutable`` under ``/<digits>/``: a published version directory
  never changes, so proxies and CDNs may keep it for a year;
* 404 for anything missing, outside ``www`` (``..``, encoded or not, or a symlink leading out),
  a directory (unless listings were asked for), or a dot name: ``.pack-*.index.json`` and any
  other dotfile in ``www`` is the generator's bookkeeping, not for devices.

Two corrections to :class:`aiohttp.web.FileResponse` (see :class:`RepoFileResponse`):
``If-Range`` with an outdated entity-tag gets the whole file, as RFC 9110 says, and the access
log counts the bytes sendfile sent.

:func:`nginx_config` prints the same policy as an nginx server block for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from .errors import SettingsError

NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
_VERSION_DIR = re.compile(r"/[0-9]+/")
BACKLOG = 1024


def cache_control(url_path: str) -> str:
    """The Cache-Control value for a request path (decoded, starting with ``/``): version
    directories never change once published; everything else (``version/format3/latest``
    above all) must be revalidated."""
    return IMMUTABLE if _VERSION_DIR.match(url_path) else NO_CACHE


def resolve(www: Path, url_path: str) -> Path | None:
    """The file or directory under ``www`` that ``url_path`` names, or None.

    ``url_path`` is already percent-decoded, so ``%2e%2e`` arrives here as ``..`` and is
    refused like the plain form. Symlinks are followed only when they stay inside ``www``.
    """
    parts = [p for p in url_path.split("/") if p]
    if any(p.startswith(".") or "\0" in p or "\\" in p for p in parts):
        return None  # "." and ".." too
    root = www.resolve()
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real != root and root not in real.parents:
        return None
    if any(p.startswith(".") for p in real.relative_to(root).parts):
        return None  # a symlink to a dotfile
    return real


class RepoFileResponse(web.FileResponse):
    """:class:`aiohttp.web.FileResponse` with two corrections.

    * ``If-Range`` with an entity-tag: aiohttp understands only the date form, so a client
      resuming a download of a file that has since changed got a 206 slice of the new file to
      splice onto the old one. RFC 9110 §13.1.5: unless the tag strongly matches the current
      ETag, the Range is ignored and the whole file is sent with 200.
    * ``body_length`` (the access log's ``%b``, header and body bytes) also counts what
      sendfile sent: aiohttp counts only what passes its writer, which sendfile bypasses, so a
      408 KB answer was logged as its ~300 header bytes.
    """

    _sendfile_bytes = 0
    _fell_back = False

    async def prepare(self, request: web.BaseRequest) -> Any:
        if_range = request.headers.get(hdrs.IF_RANGE, "").strip()
        if hdrs.RANGE in request.headers and if_range.startswith(('"', "W/")):
            st = await asyncio.get_running_loop().run_in_executor(None, self._path.stat)
            if if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':  # aiohttp's ETag
                headers = request.headers.copy()
                del headers[hdrs.RANGE]
                del headers[hdrs.IF_RANGE]
                request = request.clone(headers=headers)
        return await super().prepare(request)

    async def _sendfile_fallback(self, writer: Any, fobj: Any, offset: int,
                                 count: int) -> Any:
        self._fell_back = True  # the writer counts these bytes itself
        return await super()._sendfile_fallback(writer, fobj, offset, count)

    async def _sendfile(self, request: web.BaseRequest, fobj: Any, offset: int,
                        count: int) -> Any:
        writer = await super()._sendfile(request, fobj, offset, count)
        if not self._fell_back:
            self._sendfile_bytes = count
        return writer

    @property
    def body_length(self) -> int:
        return super().body_length + self._sendfile_bytes


def make_app(www: Path, *, list_directories: bool = False,
             overrides: Mapping[str, bytes] | None = None) -> web.Application:
    """The aiohttp application serving ``www`` (GET and HEAD on every path).

    ``overrides`` maps URL paths (``/version/format3/latest``) to bodies served instead of the
    file: ``check`` uses it to show clients the version being checked as latest before the
    real marker moves.
    """
    www = Path(www)
    fixed = dict(overrides or {})

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in fixed:
            return web.Response(body=fixed[request.path],
                                content_type="application/octet-stream",
                                headers={"Cache-Control": cache_control(request.path)})
        path = resolve(www, request.path)
        if path is None:
            raise web.HTTPNotFound()
        if path.is_dir():
            if not list_directories:
                raise web.HTTPNotFound()
            return _listing(request.path, path)
        if not path.is_file():
            raise web.HTTPNotFound()
        return RepoFileResponse(path, headers={"Cache-Control": cache_control(request.path)})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle, allow_head=True)
    return app


def _listing(url_path: str, directory: Path) -> web.Response:
    base = url_path if url_path.endswith("/") else url_path + "/"
    items = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    rows = "".join(f'<li><a href="{html.escape(base + urllib.parse.quote(n))}">'
                   f'{html.escape(n)}</a></li>\n' for n in items)
    body = f"<!DOCTYPE html>\n<title>{html.escape(base)}</title>\n<ul>\n{rows}</ul>\n"
    return web.Response(text=body, content_type="text/html",
                        headers={"Cache-Control": NO_CACHE})


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket with a backlog large enough for a burst of devices."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}",
                            hint="pick another --port / --bind") from exc
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(www: Path, host: str = "127.0.0.1", port: int = 8000, *,
        list_directories: bool = False, access_log: bool = True) -> None:
    """Serve until interrupted (the ``swupd-repo serve`` command)."""
    sock = listening_socket(host, port)
    print(f"serving {www} on {base_url(sock)} (Ctrl-C to stop)", flush=True)
    extra = {} if access_log else {"access_log": None}
    web.run_app(make_app(www, list_directories=list_directories), sock=sock, print=None,
                backlog=BACKLOG, **extra)


@contextlib.contextmanager
def serve_in_thread(www: Path, host: str = "127.0.0.1", port: int = 0, *,
                    list_directories: bool = False,
                    overrides: Mapping[str, bytes] | None = None) -> Iterator[str]:
    """Serve ``www`` from a background thread; yields the base URL (``http://host:port/``)."""
    sock = listening_socket(host, port)
    loop = asyncio.new_event_loop()
    app = make_app(www, list_directories=list_directories, overrides=overrides)
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock, backlog=BACKLOG).start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=main, name=f"swupd-repo-serve-{www}", daemon=True)
    thread.start()
    started.wait()
    if failure:
        sock.close()
        raise failure[0]
    try:
        yield base_url(sock)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        sock.close()


def nginx_config(www: Path, host: str = "127.0.0.1", port: int = 8000, *,
                 list_directories: bool = False) -> str:
    """An nginx ``server`` block with the same policy as :func:`make_app`."""
    root = Path(www).resolve()
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"""\
# swupd format-3 repository: generated by swupd-repo serve --print-nginx-config
server {{
    listen {listen};
    server_name _;
    root {root};
    autoindex {"on" if list_directories else "off"};
    # dotfiles (the generator's .pack-*.index.json) are not for devices
    location ~ /\\. {{
        return 404;
    }}
    # devices must never get a stale pointer to the latest version
    location ~ ^/version/[^/]+/latest$ {{
        add_header Cache-Control "{NO_CACHE}" always;
        disable_symlinks on from=$document_root;
        try_files $uri =404;
    }}
    # a published version directory never changes
    location ~ ^/[0-9]+/ {{
        add_header Cache-Control "{IMMUTABLE}" always;
        disable_symlinks on from=$document_root;
        try_files $uri =404;
    }}
    location / {{
        add_header Cache-Control "{NO_CACHE}" always;
        disable_symlinks on from=$document_root;
        try_files $uri {"$uri/ " if list_directories else ""}=404;
    }}
}}
"""
