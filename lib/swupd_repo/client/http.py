"""HTTP GETs against any plain web server, with the client's retry policy (format3 §7.4).

Only the standard library is used, so the client runs wherever the library does. A 404 is an
answer (the object is not published) and is never retried; connection errors, timeouts, 5xx
and broken answers (a truncated body, a garbage status line, a bogus Content-Length) are
retried a few times with a short back-off, as swupd does for downloads, then reported naming
the URL.

Every body is streamed, a chunk at a time, to a file (packs, fullfiles, manifest tars) or, for
the few bytes of ``latest`` and a detached signature, to a buffer with a low limit.
Nothing is sized from the server's word: a ``Content-Length`` above the limit is refused before
a byte is read, a body that runs past it is cut off, and a download that takes longer than its
deadline is abandoned however steadily the bytes drip in (the per-read timeout alone lets a
server sending a byte every few seconds hold the client forever): a watchdog shuts the
connection down at the deadline, in the headers as in the body. These three are answers about
the server, not passing faults, so they are reported at once, not retried.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ClientError

CHUNK = 1 << 16


class FetchError(ClientError):
    """A download failed; ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, *, url: str, status: int | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds on one download. ``max_bytes`` covers what the manifests give no size for
    (packs, fullfiles of other versions); a caller passes a tighter ``limit`` where it knows
    one. ``read_timeout`` is the longest silence (then the attempt is retried); ``deadline``
    the longest whole download attempt, from connecting to the last byte (not retried)."""

    max_bytes: int = 4 << 30
    max_in_memory: int = 1 << 20
    read_timeout: float = 30.0
    deadline: float = 1800.0


class _Watchdog:
    """Shuts down the connections of one download attempt when its deadline passes, so a
    blocked read (of the status line, a header or the body) returns at once."""

    def __init__(self, seconds: float) -> None:
        self.fired = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired.is_set():
                self._shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired.set()
            for sock in self._socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class _Watched:
    """A connection whose socket the watchdog may close at the download's deadline."""

    sock: Any

    def __init__(self, *args: Any, watchdog: _Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watchdog.watch(self.sock)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, watchdog=self.watchdog), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, watchdog=self.watchdog), req,
                            context=self._context)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} bytes"


class _Buffer(io.BytesIO):
    """A memory sink that keeps its bytes once the download closes it."""

    value = b""

    def close(self) -> None:
        if not self.closed:
            self.value = self.getvalue()
        super().close()


@dataclass
class Fetcher:
    """Downloads paths relative to ``base_url``; counts requests and bytes for the stats."""

    base_url: str
    retries: int = 3
    backoff: float = 0.2
    limits: DownloadLimits = field(default_factory=DownloadLimits)
    requests: int = 0
    bytes_received: int = 0

    def url(self, path: str) -> str:
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return base + urllib.parse.quote(path.lstrip("/"))

    def get(self, path: str, *, limit: int | None = None) -> bytes:
        """The body of ``path`` in memory (at most ``limit`` or ``max_in_memory`` bytes);
        raises :class:`FetchError` naming the URL."""
        buffers: list[_Buffer] = []

        def sink() -> IO[bytes]:
            buffers.append(_Buffer())
            return buffers[-1]

        self._download(path, sink, limit if limit is not None else self.limits.max_in_memory)
        return buffers[-1].value

    def get_optional(self, path: str, *, limit: int | None = None) -> bytes | None:
        """Like :meth:`get`, but None when the server says 404 (an optional object)."""
        try:
            return self.get(path, limit=limit)
        except FetchError as exc:
            if exc.status == 404:
                return None
            raise

    def fetch(self, path: str, dest: Path, *, limit: int | None = None,
              optional: bool = False) -> bool:
        """Stream ``path`` into the file ``dest`` (created or truncated, never followed if it
        is a symlink); False when ``optional`` and the server says 404."""
        def sink() -> IO[bytes]:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            return os.fdopen(fd, "wb")

        try:
            self._download(path, sink, min(limit, self.limits.max_bytes)
                           if limit is not None else self.limits.max_bytes)
        except FetchError as exc:
            if optional and exc.status == 404:
                return False
            raise
        return True

    @contextlib.contextmanager
    def fetch_temporary(self, path: str, *, limit: int | None = None) -> Iterator[IO[bytes]]:
        """Stream ``path`` into a private temporary file (under TMPDIR); yields it open for
        reading, and removes it afterwards."""
        with tempfile.TemporaryDirectory(prefix="swupd-repo-client-") as directory:
            body = Path(directory) / "body"
            self.fetch(path, body, limit=limit)
            with open(body, "rb") as f:
                yield f

    def _download(self, path: str, sink: Callable[[], IO[bytes]], limit: int) -> None:
        url = self.url(path)
        last: Exception | None = None
        for attempt in range(max(1, self.retries)):
            if attempt:
                time.sleep(self.backoff * attempt)
            self.requests += 1
            with _Watchdog(self.limits.deadline) as watchdog:
                opener = urllib.request.build_opener(_HTTPHandler(watchdog),
                                                     _HTTPSHandler(watchdog))
                try:
                    with opener.open(url, timeout=self.limits.read_timeout) as resp, \
                            sink() as out:
                        got = self._copy(resp, out, url, limit)
                    if not watchdog.fired.is_set():
                        self.bytes_received += got
                        return
                except urllib.error.HTTPError as exc:
                    if 400 <= exc.code < 500:
                        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}", url=url,
                                         status=exc.code) from None
                    last = exc
                except FetchError:
                    raise
                except (urllib.error.URLError, OSError, TimeoutError,
                        http.client.HTTPException, ValueError) as exc:
                    last = exc
                if watchdog.fired.is_set():
                    raise FetchError(f"{url}: not complete after {self.limits.deadline:g} s; "
                                     "abandoned", url=url, status=None,
                                     hint="a stalled or hostile server; or raise the "
                                     "client's download deadline")
        reason = getattr(last, "reason", None) or last
        if isinstance(last, http.client.HTTPException | ValueError):
            reason = f"broken answer: {type(last).__name__}: {str(last)[:200]}"
        raise FetchError(f"{url}: download failed after {self.retries} attempts: {reason}",
                         url=url, status=getattr(last, "code", None),
                         hint="check the URL and that the server is running")

    def _copy(self, resp: http.client.HTTPResponse, out: IO[bytes], url: str,
              limit: int) -> int:
        """Copy the body to ``out`` within the limits; the number of bytes copied."""
        announced = resp.headers.get("Content-Length")
        expected = int(announced) if announced is not None else None  # bogus: ValueError
        if expected is not None and expected > limit:
            raise FetchError(f"{url}: the server announces {expected} bytes, more than the "
                             f"{_size(limit)} this download may take", url=url,
                             status=resp.status, hint="a broken or hostile server; or raise "
                             "the client's download size limit")
        started = time.monotonic()
        got = 0
        while chunk := resp.read1(CHUNK):
            got += len(chunk)
            if got > limit:
                raise FetchError(f"{url}: the body runs past {_size(limit)}, the most this "
                                 "download may take; abandoned", url=url, status=resp.status,
                                 hint="a broken or hostile server; or raise the client's "
                                 "download size limit")
            out.write(chunk)
            if time.monotonic() - started > self.limits.deadline:
                raise FetchError(f"{url}: not complete after {self.limits.deadline:g} s "
                                 f"({got} bytes so far); abandoned", url=url,
                                 status=resp.status, hint="a stalled or hostile server; or "
                                 "raise the client's download deadline")
        if expected is not None and got != expected:
            raise OSError(f"short read: {got} of {expected} bytes")
        return got
