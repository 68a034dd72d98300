"""meta-swupd-repo: publish swupd format-3 update repositories from Yocto image builds.

The library is importable without BitBake; only :mod:`swupd_repo.bitbake` touches ``bb``.
"""

__version__ = "0.1.0"
