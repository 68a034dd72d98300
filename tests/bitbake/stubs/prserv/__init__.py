"""Stand-in for BitBake's ``prserv`` package (imported by ``bb.cooker``; PRSERV_HOST is unset)."""
