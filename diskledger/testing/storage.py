"""Reaching a backend's storage beside the engine, for tests that check what it holds.

The contract suite and the harness never trust a backend's own ``probe`` to judge its data: they
read and write guest bytes through a ``StorageAccess``, which goes to the storage directly (the
image file through ``qemu-io`` with the recorded format, an RBD image through librbd), and list
what exists there to find leaks. A third party's backend supplies one of these beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["FileStorage", "StorageAccess"]


@runtime_checkable
class StorageAccess(Protocol):
    """Direct access to the storage a backend keeps disks in.

    ``location`` is what the backend returned from ``disk_location`` (or an export's target, or
    any other artifact location it names); ``fmt`` is the format the ledger recorded for it.
    """

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        """``length`` guest bytes of the image at ``location`` from ``offset``."""
        ...

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        """Write ``data`` as a guest would, at ``offset`` of the image at ``location``."""
        ...

    def existing(self) -> set[str]:
        """Every artifact location that exists in this storage now (files under the root, or
        images and ``image@snapshot``s in the pools)."""
        ...


_DUMP_LINE = re.compile(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ?)+)")


class FileStorage:
    """Image files under ``root`` (and anywhere else a test names), read and written through
    ``qemu-io`` pinned to the recorded format, as a guest's qemu would."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        if fmt == "raw":
            with open(location, "rb") as handle:
                handle.seek(offset)
                return handle.read(length).ljust(length, b"\0")
        out = _qemu_io(location, fmt, f"read -v {offset} {length}")
        data = bytearray()
        for line in out.splitlines():
            match = _DUMP_LINE.match(line)
            if match:
                data.extend(bytes.fromhex(match.group(1).replace(" ", "")))
        if len(data) != length:
            raise AssertionError(f"qemu-io read {len(data)} of {length} bytes of {location}")
        return bytes(data)

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        if fmt == "raw":
            fd = os.open(location, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        with tempfile.NamedTemporaryFile(prefix="diskledger-write-") as source:
            source.write(data)
            source.flush()
            _qemu_io(location, fmt, f"write -s {source.name} {offset} {len(data)}")

    def existing(self) -> set[str]:
        return {str(p) for p in self.root.rglob("*") if p.is_file()}


def _qemu_io(location: str, fmt: str, command: str) -> str:
    done = subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, location],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or "error" in done.stderr.lower():
        raise AssertionError(f"qemu-io {command!r} on {location}: {done.stderr.strip()}")
    return done.stdout
