"""A read-only ext2/ext3/ext4 reader written for faithful rootfs extraction.

Stdlib plus google-crc32c. One module per on-disk concept: :mod:`.superblock` (geometry,
features, group descriptors), :mod:`.inode`, :mod:`.blockmap` (extents and classic block maps),
:mod:`.directory` (linear, htree and inline directories), :mod:`.xattr` (in-inode, external
block, ACLs), :mod:`.checksum` (``metadata_csum``), and the facade :class:`Ext4Reader` that
ties them to an image file's byte range and verifies every checksummed structure it reads.
"""

from .inode import Inode
from .reader import Ext4Reader
from .superblock import Superblock

__all__ = ["Ext4Reader", "Inode", "Superblock"]
