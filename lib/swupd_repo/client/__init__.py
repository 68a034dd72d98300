"""A verifying Python client for swupd format 3: install, update and verify a target root,
and add, remove and list its bundles.

It follows the 2016 client's data path (format3 §7) but checks every hash it installs and every
signature it has a certificate for. ``check`` uses it to prove each update path before a
version is published.
"""

from .bundles import bundle_add, bundle_list, bundle_remove
from .compare import compare_trees
from .operations import current_version, install, update, verify
from .report import ClientStats, Mismatch, VerifyReport

__all__ = ["ClientStats", "Mismatch", "VerifyReport", "bundle_add", "bundle_list",
           "bundle_remove", "compare_trees", "current_version", "install", "update", "verify"]
