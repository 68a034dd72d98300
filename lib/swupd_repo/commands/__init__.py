"""One module per ``swupd-repo`` command; each exposes ``register(subparsers)``."""
