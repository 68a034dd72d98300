"""The loopback interface of this process's network namespace, brought up when it is down.

bitbake-worker runs a task without ``[network]`` in a new user and network namespace
(``bb.utils.disable_network``): no interface leads anywhere, and even ``lo`` is down, so the
update simulation's server on 127.0.0.1 is unreachable ("Network is unreachable"). The task
owns that namespace, so it may bring ``lo`` up: a loopback private to the task, still with no
way out. Outside such a namespace ``lo`` is already up and nothing is changed.
"""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")  # struct ifreq: name, then ifr_flags in the union


def bring_up_loopback() -> bool:
    """Set ``lo`` up if it is down; True when it was changed. Raises OSError when the
    process may not (no CAP_NET_ADMIN over its network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        flags = _IFREQ.unpack(answer)[1]
        if flags & _IFF_UP:
            return False
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
        return True
