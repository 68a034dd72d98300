"""Stand-in for BitBake's ``hashserv`` package, which the PyPI ``bb`` does not ship.

``bb.siggen`` imports it at module level but only calls into it when ``BB_HASHSERVE`` is set,
which the test bed never does; any call is a bug in the bed and fails loudly.
"""


def is_valid_unihash(unihash: str) -> bool:
    """Same rule as the real module: a hex digest of a known length."""
    return len(unihash) in (40, 64) and all(c in "0123456789abcdef" for c in unihash)


def create_client(*args: object, **kwargs: object) -> None:
    raise RuntimeError("hash equivalence server used in the test bed (BB_HASHSERVE is set?)")


def create_server(*args: object, **kwargs: object) -> None:
    raise RuntimeError("hash equivalence server used in the test bed (BB_HASHSERVE is set?)")
