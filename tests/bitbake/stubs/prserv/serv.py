"""Stand-in for ``prserv.serv``: the test bed never starts a PR server."""


class PRServiceConfigError(Exception):
    """Raised by the real module for a bad PRSERV_HOST."""


def auto_start(d: object) -> None:
    raise PRServiceConfigError("PR server used in the test bed (PRSERV_HOST is set?)")
