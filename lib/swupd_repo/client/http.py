"""HTTP GETs against any plain web server, with the client's retry policy (format3 §7.4).

Only the standard library is used, so the client runs wherever the library does. A 404 is an
answer (the object is not published) and is never retried; connection errors, timeouts, 5xx
and broken answers (a truncated body, a garbage status line, a bogus Content-Length) are
retried a few times with a short back-off, as swupd does for downloads, then reported naming
the URL.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import ClientError


class FetchError(ClientError):
    """A download failed; ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, *, url: str, status: int | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status


@dataclass
class Fetcher:
    """Downloads paths relative to ``base_url``; counts requests and bytes for the stats."""

    base_url: str
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 0.2
    requests: int = 0
    bytes_received: int = 0

    def url(self, path: str) -> str:
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return base + urllib.parse.quote(path.lstrip("/"))

    def get(self, path: str) -> bytes:
        """The body of ``path``; raises :class:`FetchError` naming the URL."""
        url = self.url(path)
        last: Exception | None = None
        for attempt in range(max(1, self.retries)):
            if attempt:
                time.sleep(self.backoff * attempt)
            self.requests += 1
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                    data = resp.read()
                    expected = resp.headers.get("Content-Length")
                    if expected is not None and int(expected) != len(data):
                        raise OSError(f"short read: {len(data)} of {expected} bytes")
            except urllib.error.HTTPError as exc:
                if exc.code == 404 or 400 <= exc.code < 500:
                    raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}", url=url,
                                     status=exc.code) from None
                last = exc
                continue
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException,
                    ValueError) as exc:
                last = exc
                continue
            self.bytes_received += len(data)
            return data
        reason = getattr(last, "reason", None) or last
        if isinstance(last, http.client.HTTPException | ValueError):
            reason = f"broken answer: {type(last).__name__}: {str(last)[:200]}"
        raise FetchError(f"{url}: download failed after {self.retries} attempts: {reason}",
                         url=url, status=getattr(last, "code", None),
                         hint="check the URL and that the server is running")

    def get_optional(self, path: str) -> bytes | None:
        """Like :meth:`get`, but None when the server says 404 (an optional object)."""
        try:
            return self.get(path)
        except FetchError as exc:
            if exc.status == 404:
                return None
            raise
