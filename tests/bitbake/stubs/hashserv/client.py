"""Stand-in for ``hashserv.client`` (imported by ``bb.siggen``, never used without BB_HASHSERVE)."""
