"""Running a piece of a test as an ordinary user, for errors only a real EPERM/EACCES gives."""

from __future__ import annotations

import os
from collections.abc import Callable


def as_nobody(action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child as uid/gid 65534 (no capabilities); returns
    ``"ok"`` or ``"<exception type>: <message>"``.

    The interpreter may live where 65534 cannot read (pyenv under /root), so modules the
    action would import lazily are imported here first.
    """
    import encodings.idna  # noqa: F401  (urllib, for host names)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                action()
                outcome = "ok"
            except BaseException as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome
