"""What a crash left at the end of a SQLite ledger's write-ahead log.

A power cut during an append can leave frames of a transaction that never committed at the end
of the ``-wal`` file: its commit frame never written, or written torn. SQLite ignores them -- it
reads the log up to the last frame whose checksum chain and commit mark hold, so the ledger is
its last whole commit -- but says nothing. An operator after a crash should be told: the ledger
was cut back, and nothing a caller had been answered was in what was cut (an append returns only
after its commit frame is synced). ``discarded_tail`` tells, without repairing or inventing
anything.

It reads the formats SQLite documents (https://sqlite.org/walformat.html, fileformat2.html):
the WAL header's page size and salts, each frame header's salts, and ``mxFrame`` -- the last
valid frame SQLite found -- from the wal-index header at the start of the ``-shm`` file. It must
run while the caller holds the write lock after a read, so that SQLite has recovered the log
into the index and no other writer is appending frames of its own.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["DiscardedTail", "discarded_tail"]

_WAL_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, checkpoint seq, salt-1, -2
_FRAME_HEADER = 24
_MAGICS = (0x377F0682, 0x377F0683)
_INDEX_MX_FRAME = 16  # u32, native byte order, in the first copy of the wal-index header


@dataclass(frozen=True, slots=True)
class DiscardedTail:
    """Frames of a transaction that never committed, found past the ledger's last commit."""

    frames: int
    bytes: int

    def describe(self) -> str:
        return (
            f"the ledger's write-ahead log ended in {self.frames} frame(s) ({self.bytes} bytes) "
            "of a transaction that never committed: a crash cut an append short. SQLite kept "
            "the ledger to its last whole commit and dropped them; no call that had been "
            "answered was in them"
        )

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "bytes": self.bytes, "message": self.describe()}


def discarded_tail(database: str) -> DiscardedTail | None:
    """The uncommitted frames past the last valid one in ``database``'s WAL, or None when
    there are none (or no WAL, or nothing SQLite would call one)."""
    try:
        with open(f"{database}-wal", "rb") as wal:
            header = wal.read(32)
            if len(header) < 32:
                return None
            magic, _version, page_size, _seq, salt1, salt2 = _WAL_HEADER.unpack_from(header)
            if magic not in _MAGICS or page_size < 512 or page_size & (page_size - 1):
                return None
            valid = _mx_frame(f"{database}-shm")
            if valid is None:
                return None
            frame = _FRAME_HEADER + page_size
            size = os.fstat(wal.fileno()).st_size
            frames = extra = 0
            offset = 32 + valid * frame
            while offset < size:
                wal.seek(offset + 8)
                salts = wal.read(8)
                if len(salts) < 8 or struct.unpack(">II", salts) != (salt1, salt2):
                    break  # the rest is from an earlier generation of the log: not ours
                frames += 1
                extra += min(frame, size - offset)
                offset += frame
    except FileNotFoundError:
        return None
    return DiscardedTail(frames, extra) if frames else None


def _mx_frame(shm: str) -> int | None:
    try:
        with open(shm, "rb") as index:
            header = index.read(48)
    except FileNotFoundError:
        return None
    if len(header) < 48:
        return None
    (mx_frame,) = struct.unpack_from("=I", header, _INDEX_MX_FRAME)
    return int(mx_frame)
