"""Bundles: optional content published beside os-core (issue 15).

* :mod:`.assignment` — which paths of a stored tree belong to which non-core bundle, stored
  beside the tree as ``image/<V>/os-core.bundles`` so that a forced rebuild, ``check`` and the
  Docker backend see the same split the publish used.
"""
