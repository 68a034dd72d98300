"""swupd format 3 (swupd-server 2.53 + Ostro patches), one module per concept of the format.

See ``../shared/swupd-format3.md``; section numbers in docstrings refer to it.
"""
