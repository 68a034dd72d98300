"""Bundles: optional content published beside os-core (issue 15).

* :mod:`.definitions` — what a user writes (BitBake variables, YAML, CLI flags), validated.
* :mod:`.packages` — the package database inside an extracted rootfs (dpkg, opkg, rpm).
* :mod:`.resolve` — the rules that turn definitions and a tree into an Assignment.
* :mod:`.tracking` — the tracking files ``/usr/share/clear/bundles/<name>`` added to a stored
  tree and its record, and storing the split of a freshly extracted tree.
* :mod:`.assignment` — which paths of a stored tree belong to which non-core bundle, stored
  beside the tree as ``image/<V>/os-core.bundles`` so that a forced rebuild, ``check`` and the
  Docker backend see the same split the publish used.
"""
