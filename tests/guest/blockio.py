"""Block-device reads and writes for the in-guest test modules (copied beside them into the
guest): past the page cache, so a read sees what the device holds, not what a write left in
memory."""

from __future__ import annotations

import mmap
import os

__all__ = ["read_direct", "write_synced"]


def read_direct(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes of a block device from ``offset`` (both multiples of its sector size),
    read with ``O_DIRECT`` into an aligned buffer."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, length)
        os.preadv(fd, [buffer], offset)
        return bytes(buffer)
    finally:
        os.close(fd)


def write_synced(path: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and fsync it."""
    with open(path, "r+b", buffering=0) as device:
        device.seek(offset)
        device.write(data)
        os.fsync(device.fileno())
